// The Ollama double's template engine: Go's own text/template, used the way an Ollama server uses it
// (template/template.go in Ollama): parsed with missingkey=zero and a `json` function, a
// {{ .Response }} appended to templates that read neither .Messages nor .Response, messages
// collated (system texts joined by a blank line, consecutive turns of one role merged), and
// templates without .Messages run once per turn with the last run cut after its .Response.
//
// Protocol: one JSON request per line on stdin, one JSON reply per line on stdout.
//   {"op": "parse", "template": T}               -> {"vars": [...]} or {"error": "..."}
//   {"op": "render", "template": T, "messages": M} -> {"prompt": "..."} or {"error": "..."}
package main

import (
	"bufio"
	"encoding/json"
	"os"
	"sort"
	"strings"
	"text/template"
	"text/template/parse"
)

type Message struct {
	Role      string   `json:"role"`
	Content   string   `json:"content"`
	Thinking  string   `json:"thinking,omitempty"`
	Images    []string `json:"images,omitempty"`
	ToolCalls []any    `json:"tool_calls,omitempty"`
	ToolName  string   `json:"tool_name,omitempty"`
}

type request struct {
	Op       string    `json:"op"`
	Template string    `json:"template"`
	Messages []Message `json:"messages"`
}

type reply struct {
	Vars   []string `json:"vars,omitempty"`
	Prompt *string  `json:"prompt,omitempty"`
	Error  string   `json:"error,omitempty"`
}

var funcs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
}

// names lists every field and variable identifier under a node, as Ollama's Vars() sees them.
func names(n parse.Node, out map[string]bool) {
	switch x := n.(type) {
	case *parse.ListNode:
		if x == nil {
			return
		}
		for _, c := range x.Nodes {
			names(c, out)
		}
	case *parse.ActionNode:
		names(x.Pipe, out)
	case *parse.TemplateNode:
		if x.Pipe != nil {
			names(x.Pipe, out)
		}
	case *parse.IfNode:
		branch(&x.BranchNode, out)
	case *parse.RangeNode:
		branch(&x.BranchNode, out)
	case *parse.WithNode:
		branch(&x.BranchNode, out)
	case *parse.PipeNode:
		if x == nil {
			return
		}
		for _, c := range x.Cmds {
			for _, a := range c.Args {
				names(a, out)
			}
		}
	case *parse.FieldNode:
		for _, id := range x.Ident {
			out[strings.ToLower(id)] = true
		}
	case *parse.VariableNode:
		for _, id := range x.Ident {
			out[strings.ToLower(id)] = true
		}
	}
}

func branch(b *parse.BranchNode, out map[string]bool) {
	names(b.Pipe, out)
	names(b.List, out)
	if b.ElseList != nil {
		names(b.ElseList, out)
	}
}

func compile(text string) (*template.Template, map[string]bool, error) {
	t, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(text)
	if err != nil {
		return nil, nil, err
	}
	vars := map[string]bool{}
	for _, tt := range t.Templates() {
		if tt.Tree != nil {
			for _, n := range tt.Tree.Root.Nodes {
				names(n, vars)
			}
		}
	}
	if !vars["messages"] && !vars["response"] {
		response := &parse.ActionNode{NodeType: parse.NodeAction, Pipe: &parse.PipeNode{
			NodeType: parse.NodePipe, Cmds: []*parse.CommandNode{{NodeType: parse.NodeCommand,
				Args: []parse.Node{&parse.FieldNode{NodeType: parse.NodeField, Ident: []string{"Response"}}}}}}}
		t.Tree.Root.Nodes = append(t.Tree.Root.Nodes, response)
	}
	return t, vars, nil
}

func collate(msgs []Message) (string, []*Message) {
	var system []string
	var out []*Message
	for i := range msgs {
		if msgs[i].Role == "system" {
			system = append(system, msgs[i].Content)
		}
		if n := len(out); n > 0 && out[n-1].Role == msgs[i].Role && msgs[i].Role != "tool" {
			out[n-1].Content += "\n\n" + msgs[i].Content
		} else {
			out = append(out, &msgs[i])
		}
	}
	return strings.Join(system, "\n\n"), out
}

// untilResponse drops every node after the first .Response field (the field itself stays), the
// way a server ends the last turn of a per-turn template where the model's answer begins.
type untilResponse struct{ cut bool }

func (u *untilResponse) walk(n parse.Node) parse.Node {
	if f, ok := n.(*parse.FieldNode); ok {
		for _, id := range f.Ident {
			if id == "Response" {
				u.cut = true
				return n
			}
		}
	}
	if u.cut {
		return nil
	}
	switch x := n.(type) {
	case *parse.ListNode:
		kept := x.Nodes[:0]
		for _, c := range x.Nodes {
			if k := u.walk(c); k != nil {
				kept = append(kept, k)
			}
		}
		x.Nodes = kept
	case *parse.IfNode:
		u.lists(&x.BranchNode)
	case *parse.RangeNode:
		u.lists(&x.BranchNode)
	case *parse.WithNode:
		u.lists(&x.BranchNode)
	case *parse.ActionNode:
		p := u.walk(x.Pipe)
		if p == nil {
			return nil
		}
		x.Pipe = p.(*parse.PipeNode)
	case *parse.PipeNode:
		var cmds []*parse.CommandNode
		for _, c := range x.Cmds {
			var args []parse.Node
			for _, a := range c.Args {
				if k := u.walk(a); k != nil {
					args = append(args, k)
				}
			}
			if len(args) == 0 {
				return nil
			}
			c.Args = args
			cmds = append(cmds, c)
		}
		if len(cmds) == 0 {
			return nil
		}
		x.Cmds = cmds
	}
	return n
}

// lists walks a branch's bodies; its condition is never cut.
func (u *untilResponse) lists(b *parse.BranchNode) {
	b.List = u.walk(b.List).(*parse.ListNode)
	if b.ElseList != nil {
		if l := u.walk(b.ElseList); l != nil {
			b.ElseList = l.(*parse.ListNode)
		} else {
			b.ElseList = nil
		}
	}
}

func render(text string, msgs []Message) (string, error) {
	t, vars, err := compile(text)
	if err != nil {
		return "", err
	}
	system, collated := collate(msgs)
	var b strings.Builder
	if vars["messages"] || vars["document"] {
		err = t.Execute(&b, map[string]any{"System": system, "Messages": collated, "Tools": []any(nil),
			"Response": "", "Think": false, "IsThinkSet": false, "Query": "", "Document": "", "Instruction": ""})
		return b.String(), err
	}
	turn := map[string]any{"System": "", "Prompt": "", "Response": "", "Think": false, "IsThinkSet": false}
	flush := func() error {
		err := t.Execute(&b, turn)
		turn["System"], turn["Prompt"], turn["Response"] = "", "", ""
		return err
	}
	for _, m := range collated {
		switch m.Role {
		case "system":
			if turn["Prompt"] != "" || turn["Response"] != "" {
				if err := flush(); err != nil {
					return "", err
				}
			}
			turn["System"] = m.Content
		case "user":
			if turn["Response"] != "" {
				if err := flush(); err != nil {
					return "", err
				}
			}
			turn["Prompt"] = m.Content
		case "assistant":
			turn["Response"] = m.Content
		}
	}
	root := (&untilResponse{}).walk(t.Tree.Root.Copy()).(*parse.ListNode)
	// As the server does it: a bare template around the cut tree (no options, no functions).
	last, err := template.New("").AddParseTree("", &parse.Tree{Root: root})
	if err == nil {
		err = last.Execute(&b, turn)
	}
	return b.String(), err
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 64<<20)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var req request
		var rep reply
		if err := json.Unmarshal(in.Bytes(), &req); err != nil {
			rep.Error = "bad request: " + err.Error()
		} else if req.Op == "parse" {
			if _, vars, err := compile(req.Template); err != nil {
				rep.Error = err.Error()
			} else {
				for v := range vars {
					rep.Vars = append(rep.Vars, v)
				}
				sort.Strings(rep.Vars)
			}
		} else if prompt, err := render(req.Template, req.Messages); err != nil {
			rep.Error = err.Error()
		} else {
			rep.Prompt = &prompt
		}
		if err := out.Encode(rep); err != nil {
			os.Exit(1)
		}
	}
}
