"""Two `make bench-forgetting` runs, cell by cell, on the same seeds and questions.

    python -m benchmarks.forgetting_compare REFERENCE.json CANDIDATE.json [--cells v1,distill+l2]

For each cell both runs measured on every shared seed: old- and new-fact accuracy of each
run, and candidate minus reference with the gate's paired interval (forgetting_stats: per
question the mean over seeds, Student's t with samples = seeds). Used to check that a
change of how training runs (its precision, say) still learns and keeps the facts; a run
must differ only in that change for the comparison to mean anything.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.forgetting_stats import _change, _level, _scores


def compare(reference: dict, candidate: dict, sides: dict[str, str], cells: list[str]) -> list[dict]:
    rows = []
    for cell in cells:
        seeds = sorted({r["seed"] for r in reference["cells"] if r["cell"] == cell}
                       & {r["seed"] for r in candidate["cells"] if r["cell"] == cell})
        if not seeds:
            continue
        row: dict = {"cell": cell, "seeds": seeds}
        for side in ("old", "new"):
            ids = [q for q, s in sides.items() if s == side]
            ref, cand = _scores(reference["cells"], cell, seeds, ids), _scores(candidate["cells"], cell, seeds, ids)
            row[side] = {"reference": _level(ref), "candidate": _level(cand), "change": _change(ref, cand, len(seeds))}
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    out = ["| cell | seeds | old: reference | old: candidate | old change | new: reference | new: candidate | new change |",
           "|---|---:|---:|---:|---|---:|---:|---|"]
    for r in rows:
        cols = []
        for side in ("old", "new"):
            s = r[side]
            c = s["change"]
            cols += [f"{s['reference']['mean']}", f"{s['candidate']['mean']}", f"{c['mean']:+} [{c['lo']:+}, {c['hi']:+}]"]
        out.append(f"| {r['cell']} | {len(r['seeds'])} | " + " | ".join(cols) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reference", type=Path)
    ap.add_argument("candidate", type=Path)
    ap.add_argument("--cells", default="v1,distill+l2")
    args = ap.parse_args()
    from benchmarks.bench_forgetting import Scorer

    rows = compare(json.loads(args.reference.read_text()), json.loads(args.candidate.read_text()), Scorer().sides(),
                   [c.strip() for c in args.cells.split(",") if c.strip()])
    print(table(rows))


if __name__ == "__main__":
    main()
