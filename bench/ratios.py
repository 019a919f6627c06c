"""The ratio report: every figure a ratio of medians measured in one run, so machines compare fairly.

One source of truth, pytest-benchmark's JSON (`--benchmark-json`): `python -m bench` writes it to
`bench/results/benchmarks.json` and this module turns it into `bench/results/summary.json` and
`bench/results/ratios.md`. The same functions print the table at the end of a plain `pytest bench/` run
(bench/conftest.py), so there is one definition of every ratio.

Conventions a benchmark can use in `benchmark.extra_info`:
- `tokens_per_s`: shown in the table's notes (SAE code);
- `target_s`: an absolute target on the median, in seconds (every benchmark in test_graph.py gets 60 s
  unless it sets its own);
- `note`: a short remark shown in the table;
- `forward_ref_s`: set by bench/conftest.py for every benchmark that uses the model: the median of plain
  forwards timed just before and just after it. Ratios are given twice: as ratios of medians (classic),
  and "local", each side divided by its own reference forward first, which cancels the drift of a shared
  machine's load between benchmarks run minutes apart. Targets are judged on the local ratio when both
  sides have a reference.

Usage: python -m bench.ratios [bench/results/benchmarks.json] [--out bench/results]
       python -m bench.ratios --from-summary    (after `python -m bench.peers.saelens_side_by_side`: no rerun needed)
"""

from __future__ import annotations

import argparse
import json
import operator
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
# machine_info keys bench/conftest.py adds: what every figure was computed in
PRECISION = ("cpu_capability", "bf16_native", "bf16_evidence", "compute_dtype", "compute_dtype_override", "model_dtype")
FORWARD = "plain_forward"
GRAPH_TARGET_S = 60.0

# key: (numerator, denominator, denominator multiplier, (op, target) or None, what)
# op "<=": the ratio must not exceed the target; ">=": it must reach it. A multiplier may be a function of
# the benchmarks (e.g. a ratio of work done, from their extra_info).
RATIOS: dict[str, tuple[str, str, float, tuple[str, float] | None, str]] = {
    "grad_x_act": (
        "grad_x_act_18_layers",
        FORWARD,
        1,
        ("<=", 4.0),
        "grad_x_act attribution (18 SAEs) / one plain forward",
    ),
    "grad_x_act_vs_body": (
        "grad_x_act_18_layers",
        "forward_to_final_norm",
        1,
        None,
        "grad_x_act attribution / forward without unembedding (body only)",
    ),
    "atp": ("atp_18_layers", FORWARD, 1, None, "attribution patching (clean + corrupt) / one plain forward"),
    "ig": ("ig_18_layers_10_steps", FORWARD, 1, None, "integrated gradients (10 steps) / one plain forward"),
    "ablations": ("ablate_256_nodes", FORWARD, 256, ("<=", 0.25), "256 batched ablations / 256 plain forwards"),
    "ablation_speedup": (
        "ablate_32_nodes_naive_loop",
        "ablate_32_nodes_batched",
        1,
        None,
        "speed-up: naive loop (one forward per node) / batched, 32 nodes",
    ),
    "naive_per_node": (
        "ablate_32_nodes_naive_loop",
        "forward_to_final_norm",
        33,
        None,
        "naive loop / its 33 forwards (sanity: ~1 = an honest baseline)",
    ),
    "splice": ("forward_with_18_saes", FORWARD, 1, None, "forward with 18 SAEs spliced / one plain forward"),
    "fit_vs_peak": (
        "matmul_peak",
        "sae_train_topk[steady]",
        lambda b: b["matmul_peak"]["extra_info"]["flop"] / b["sae_train_topk[steady]"]["extra_info"]["dense_flop"],
        (">=", 0.5),
        "`fit`'s FLOP/s (counted dense: 6 d_in d_sae a token) / the measured matmul peak, in its dtype",
    ),
    "sae_bf16_speedup": (
        "sae_encode_decode[fp32]",
        "sae_encode_decode[bf16]",
        1,
        None,
        "SAE encode+decode (4,096 tokens): float32 / bfloat16",
    ),
}
OPS = {"<=": operator.le, ">=": operator.ge}


def name_of(entry: dict) -> str:
    return entry["name"].removeprefix("test_")


def summarize(entries: list[dict], *, machine: dict | None = None, commit: dict | None = None) -> dict:
    """pytest-benchmark entries (its JSON's "benchmarks", or Metadata.as_dict()) -> the summary."""
    benches = {}
    for e in entries:
        s = e["stats"]
        benches[name_of(e)] = {
            "file": e["fullname"].split("::")[0],
            "mean_s": s["mean"],
            "median_s": s["median"],
            "stddev_s": s["stddev"],
            "min_s": s["min"],
            "rounds": s["rounds"],
            "extra_info": e.get("extra_info") or {},
        }
    fwd = benches.get(FORWARD, {}).get("median_s")
    for b in benches.values():
        b["ratio_to_forward"] = b["median_s"] / fwd if fwd else None
        ref = b["extra_info"].get("forward_ref_s")
        b["ratio_to_local_forward"] = b["median_s"] / ref if ref else None
        target = b["extra_info"].get("target_s")
        if target is None and b["file"].endswith("test_graph.py"):
            target = GRAPH_TARGET_S
        b["target_s"] = target
        b["met"] = None if target is None else b["median_s"] <= target
    ratios = {}
    for key, (num, den, mult, target, what) in RATIOS.items():
        if num in benches and den in benches:
            mult = mult(benches) if callable(mult) else mult
            value = benches[num]["median_s"] / (benches[den]["median_s"] * mult)
            rn, rd = benches[num]["ratio_to_local_forward"], benches[den]["ratio_to_local_forward"]
            local = rn / (rd * mult) if rn and rd else None
            judged = value if local is None else local
            ratios[key] = {
                "what": what,
                "ratio": value,
                "local_ratio": local,
                "numerator": num,
                "denominator": den if mult == 1 else f"{mult:g} x {den}",
                "target": None if target is None else f"{target[0]} {target[1]:g}",
                "met": None if target is None else OPS[target[0]](judged, target[1]),
            }
    out = {"benchmarks": benches, "ratios": ratios}
    if machine:
        keys = ("node", "machine", "python_version", "cpu", "torch", "torch_threads", *PRECISION)
        out["machine"] = {k: machine.get(k) for k in (*keys, "load_average_start", "load_average_end")}
        if isinstance(out["machine"].get("cpu"), dict):
            cpu = out["machine"]["cpu"]
            out["machine"]["cpu"] = {k: cpu.get(k) for k in ("brand_raw", "count", "arch")}
    if commit:
        out["commit"] = {k: commit.get(k) for k in ("id", "time", "dirty", "branch")}
    side = side_by_side()
    if side:
        out["saelens_side_by_side"] = side
    return out


def side_by_side(path: Path = RESULTS / "saelens.json") -> dict | None:
    """The summary of bench/peers/saelens_side_by_side.py's last run, as the report embeds it (None if never run)."""
    if not path.exists():
        return None
    side = json.loads(path.read_text())
    threads = {r.get("threads") for r in side.get("details", [])}
    return {**side["summary"], "datetime": side.get("datetime"), "threads": sorted(threads)}


def rewrite(out: Path = RESULTS) -> dict:
    """Redo ratios.md from the committed summary.json, with the side-by-side taken afresh from saelens.json
    (it is its own run: a rerun of it must not leave the report quoting the previous one)."""
    summary = json.loads((out / "summary.json").read_text())
    side = side_by_side(out / "saelens.json")
    if side:
        summary["saelens_side_by_side"] = side
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "ratios.md").write_text(markdown(summary))
    return summary


def _fmt_s(x: float) -> str:
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"


def _load(x) -> str:
    return "?" if not x else "/".join(f"{v:.1f}" for v in x)


def _met(met: bool | None) -> str:
    return "" if met is None else ("met" if met else "**MISSED**")


def markdown(summary: dict) -> str:
    """The two tables docs/benchmarks.md quotes: named ratios with targets, then every benchmark."""
    m = summary.get("machine") or {}
    lines = []
    if m:
        cpu = (m.get("cpu") or {}).get("brand_raw", m.get("machine"))
        lines += [
            f"Run: {summary.get('datetime', '')}, {cpu}, torch {m.get('torch')} with {m.get('torch_threads')} "
            f"thread(s); load average (1/5/15 min) {_load(m.get('load_average_start'))} at the start, "
            f"{_load(m.get('load_average_end'))} at the end.",
            "",
            f"Precision: {precision(m)}.",
            "",
        ]
    lines += [
        "| ratio (one run) | local (vs forwards timed around each) | ratio of medians | target | |",
        "|---|---|---|---|---|",
    ]
    for r in summary["ratios"].values():
        local = "" if r["local_ratio"] is None else f"**{r['local_ratio']:.3g}**"
        lines.append(f"| {r['what']} | {local} | {r['ratio']:.3g} | {r['target'] or ''} | {_met(r['met'])} |")
    lines += [
        "",
        "| benchmark | dtype | mean | median | rounds | median / plain forward (local; of medians) | target | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, b in summary["benchmarks"].items():
        ratio = "" if b["ratio_to_forward"] is None else f"{b['ratio_to_forward']:.3g}"
        if b["ratio_to_local_forward"] is not None:
            ratio = f"{b['ratio_to_local_forward']:.3g}; {ratio}"
        target = "" if b["target_s"] is None else f"<= {b['target_s']:g} s ({_met(b['met'])})"
        info = b["extra_info"]
        notes = []
        if info.get("tokens_per_s") is not None:
            notes.append(f"{info['tokens_per_s']:,.0f} tokens/s")
        if "peak_rss_mb" in info:
            notes.append(f"peak RSS {info['peak_rss_mb']:,} MB")
        if "note" in info:
            notes.append(str(info["note"]))
        lines.append(
            f"| {name} | {info.get('dtype', '?')} | {_fmt_s(b['mean_s'])} | {_fmt_s(b['median_s'])} | {b['rounds']} "
            f"| {ratio} | {target} "
            f"| {'; '.join(notes)} |"
        )
    side = summary.get("saelens_side_by_side")
    if side:
        when = f"{side.get('datetime') or '?'}, {side.get('threads')} thread(s), {side.get('steps')} steps"
        lines += ["", f"SAE training side by side (bench/peers/saelens_side_by_side.py, its own run: {when}):", ""]
        lines.append(side_table(side))
        speeds = [f"{side['speed_ratio_ours_over_saelens']:.2f} (wall time of the {side.get('steps')}-step runs)"]
        if side.get("paired_speed_ratio"):
            speeds.append(f"{side['paired_speed_ratio']:.2f} (median of paired 12-step rounds)")
        lines += ["", "Training speed, ours / SAELens: " + ", ".join(speeds) + "."]
    return "\n".join(lines) + "\n"


def precision(m: dict) -> str:
    """The machine's precision facts in one phrase (benchmarks from before they were recorded: unknown)."""
    if m.get("cpu_capability") is None:
        return "not recorded (a run from before the dtype choice)"
    native = "native" if m.get("bf16_native") else "not native"
    override = f", forced by ${m['compute_dtype_override']}" if m.get("compute_dtype_override") else ""
    return (
        f"CPU capability {m['cpu_capability']}, bf16 {native} ({m.get('bf16_evidence')}), compute dtype "
        f"{m.get('compute_dtype')}{override}, model {m.get('model_dtype')}"
    )


def side_table(side: dict) -> str:
    """The SAELens comparison as a markdown table (from bench/results/saelens.json's summary)."""
    cols = [
        ("tokens_per_s", "tokens/s (wall)", "{:,.0f}"),
        ("median_step_tokens_per_s", "tokens/s (median step)", "{:,.0f}"),
        ("explained_variance", "EV (held-out acts)", "{:.3f}"),
        ("mse", "MSE (held-out acts)", "{:.4g}"),
        ("l0", "L0", "{:.1f}"),
        ("dead_fraction", "dead (held-out)", "{:.1%}"),
        ("ce_loss_recovered", "CE loss recovered", "{:.3f}"),
    ]
    rows = [r for r in side["rows"]]
    present = [c for c in cols if any(r.get(c[0]) is not None for r in rows)]
    out = ["| trainer | " + " | ".join(c[1] for c in present) + " |", "|---" * (len(present) + 1) + "|"]
    for r in rows:
        cells = ["" if r.get(k) is None else fmt.format(r[k]) for k, _, fmt in present]
        out.append(f"| {r['trainer']} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def terminal(summary: dict) -> str:
    """A compact plain-text version for the end of a pytest run."""
    lines = ["", f"precision: {precision(summary.get('machine') or {})}"]
    lines += ["ratios from this run: local (each against plain forwards timed around it) | of medians"]
    for r in summary["ratios"].values():
        tgt = "" if r["target"] is None else f"  target {r['target']}: {_met(r['met']).strip('*')}"
        local = "" if r["local_ratio"] is None else f"{r['local_ratio']:8.3f}"
        lines.append(f"  {r['what']:<66} {local:>8} | {r['ratio']:8.3f}{tgt}")
    for name, b in summary["benchmarks"].items():
        extra = b["extra_info"]
        if extra.get("tokens_per_s") is not None:
            lines.append(f"  {name:<66} {extra['tokens_per_s']:8,.0f} tokens/s ({extra.get('dtype', '?')})")
        if b["target_s"] is not None:
            lines.append(f"  {name:<66} {b['median_s']:8.2f} s  target <= {b['target_s']:g} s: {_met(b['met'])}")
    return "\n".join(lines)


def write(benchmark_json: Path, out: Path = RESULTS) -> dict:
    data = json.loads(Path(benchmark_json).read_text())
    summary = summarize(data["benchmarks"], machine=data.get("machine_info"), commit=data.get("commit_info"))
    summary["datetime"] = data.get("datetime")
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "ratios.md").write_text(markdown(summary))
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="?", default=str(RESULTS / "benchmarks.json"), help="pytest-benchmark JSON")
    ap.add_argument("--out", default=str(RESULTS), help="folder for summary.json and ratios.md")
    ap.add_argument(
        "--from-summary",
        action="store_true",
        help="no benchmark JSON: redo ratios.md from --out's summary.json and saelens.json (after a side-by-side run)",
    )
    args = ap.parse_args(argv)
    summary = rewrite(Path(args.out)) if args.from_summary else write(Path(args.json), Path(args.out))
    print(markdown(summary))
    print(f"wrote {Path(args.out) / 'summary.json'} and {Path(args.out) / 'ratios.md'}")


if __name__ == "__main__":
    main()
