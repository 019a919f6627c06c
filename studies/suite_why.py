"""Why suppressing the intermediate group rarely halves the answer: how much of the entity sits in the SAE
features at all, and how much in their error terms.

    python -m studies.suite_why cases/results/suite/report.json [--out bench/results/suite_why.json]

For every prompt of a suite report whose intermediate group was found, at the positions of that group's
members (the entity's tokens) and at every SAE hook, in the real model with the default SAEs spliced:
zero the group (the report's suppression), zero every active feature there, zero every error term there,
and both. If the features carried the entity, zeroing all of them would remove as much as zeroing the
residual's error terms does not; the drops say where the country lives.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from attribution import LogitDiff, default_saes, load_model
from attribution.spliced import ablation_values
from graphs.interventions import pair_rows, run_rows


def measure(model, saes, row: dict) -> dict:
    group = next(g for g in row["supernodes"] if g["name"] == row["intermediate"])
    members = [m.split(":") for m in group["members"]]  # hook:position:f<feature>
    positions = sorted({int(p) for _, p, _ in members})
    batch = model.tokenize(row["prompt"])
    metric = LogitDiff(model, row["answer"], row["counterfactual"])
    values = ablation_values(model, saes, batch, "zero")
    # rows: 0 clean, 1 the group, 2 every feature at the positions, 3 every error term there, 4 both
    rows = [pair_rows(saes, set(saes), batch.width, values)[0]]
    rows += [pair_rows(saes, set(saes), batch.width, values)[1] for _ in range(4)]
    for h, p, f in members:
        rows[1][h].features[int(p), int(f[1:])] = False
    for h in saes:
        for p in positions:
            rows[2][h].features[p] = False
            rows[3][h].errors[p] = False
            rows[4][h].features[p] = False
            rows[4][h].errors[p] = False
    m = run_rows(model, saes, batch, metric, rows, values).tolist()
    drop = [1 - x / m[0] for x in m[1:]]
    return {"id": row["id"], "positions": positions, "metric": m[0],
            "drop": dict(zip(("group", "all_features", "all_errors", "both"), drop))}  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("report")
    p.add_argument("--out", default="bench/results/suite_why.json")
    args = p.parse_args(argv)
    report = json.loads(Path(args.report).read_text())
    model = load_model()
    saes = default_saes(model)
    with torch.no_grad():
        rows = [measure(model, saes, r) for r in report["prompts"] if r.get("intermediate_found")]
    kinds = ("group", "all_features", "all_errors", "both")
    medians = {k: statistics.median(r["drop"][k] for r in rows) for k in kinds}
    halves = {k: sum(r["drop"][k] >= 0.5 for r in rows) for k in kinds}
    out = {"report": args.report, "prompts": rows, "median_drop": medians, "halves": halves, "n": len(rows)}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({"median_drop": medians, "halves": halves, "n": len(rows)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
