"""Replacement graphs on long prompts: time and memory against circuit-tracer by length, and ours alone with
default arguments up to the longest prompt that fits.

    python -m bench.peers.replacement_length_curve [--tokens 128 512 1024 2048] [--max-feature-nodes 512]
        [--batch-size 32] [--alone 2048 4096]

Each length's prompt is the GPL-3 document cut where the model predicts the document's next word top-1
(bench.documents): the metric is that word minus the model's second choice. Per length, the side by side
(bench.peers.replacement_side_by_side: both sides with the same transcoders, feature-row cap and batch, one
at a time, each in its own process; circuit-tracer in its own venv, the first process the kernel ends when
memory runs out, its failure recorded). `--alone` lengths run only ours, with default arguments (the build
chooses its rows and batch from the memory it has). Writes bench/results/replacement_length_curve.json and
docs/img/replacement_length.svg (drawn here: no plotting library).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULT = ROOT / "bench" / "results" / "replacement_length_curve.json"
PLOT = ROOT / "docs" / "img" / "replacement_length.svg"


def targets(lengths: list[int]) -> dict[int, dict]:
    from attribution import load_model
    from bench.documents import document_target

    model = load_model()
    out = {}
    for n in lengths:
        t = document_target(model, n)
        out[n] = {"prompt": t.prompt, "tokens": t.tokens, "answer": t.answer, "counterfactual": t.counterfactual,
                  "answer_p": t.answer_p, "counterfactual_p": t.counterfactual_p}  # fmt: skip
    return out


def side_by_side(n: int, target: dict, args, tmp: Path) -> dict:
    result = tmp / f"side_by_side_{n}.json"
    cmd = [sys.executable, "-m", "bench.peers.replacement_side_by_side", "--prompt", target["prompt"],
           "--good", target["answer"], "--bad", target["counterfactual"], "--result", str(result),
           "--max-feature-nodes", str(args.max_feature_nodes), "--batch-size", str(args.batch_size),
           "--out", str(tmp / f"run_{n}")]  # fmt: skip
    subprocess.check_call(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(result.read_text())


def alone(n: int, target: dict, tmp: Path, folder: Path, rows: int | None = None) -> dict:
    """Ours only, default arguments (or `rows` feature rows); a build that cannot fit is recorded with its error."""
    out = tmp / f"alone_{n}_{rows or 'auto'}"
    cmd = [sys.executable, "-m", "bench.peers.replacement_side_by_side", "--ours", "--transcoders", str(folder),
           "--prompt", target["prompt"], "--good", target["answer"], "--bad", target["counterfactual"],
           "--max-feature-nodes", str(rows or "auto"), "--batch-size", "auto", "--out", str(out)]  # fmt: skip
    err = out / "stderr.log"
    out.mkdir(parents=True, exist_ok=True)
    with err.open("w") as f:
        rc = subprocess.call(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=f)
    if rc != 0:
        return {"failed": {"returncode": rc, "stderr_tail": err.read_text().strip().splitlines()[-2:]}}
    mine = json.loads((out / "result.json").read_text())
    return {k: mine[k] for k in ("active_features", "scores", "timings", "memory", "plan", "prompt_tokens")}


def largest(lengths: list[int], tmp: Path, folder: Path, rows: int, resolution: int = 0) -> dict:
    """The longest document prompt the build's memory plan accepts with default arguments (the planner's
    estimate errs high), then a build there with `rows` feature rows, its time and peak memory measured.
    resolution > 0: between the longest length that fits and the first that does not, bisect until they are
    at most `resolution` tokens apart."""
    from attribution import LogitDiff, load_model, memory
    from attribution.saes.transcoders import load_transcoders
    from bench.documents import document_target
    from graphs.replacement import plan_replacement_graph

    model = load_model()
    tcs = load_transcoders(folder, model=model)
    tried, best = [], None

    def fits(n: int) -> bool:
        nonlocal best
        t = document_target(model, n)
        try:
            p = plan_replacement_graph(model, tcs, t.prompt, LogitDiff(model, t.answer, t.counterfactual))
        except memory.OutOfMemoryError as e:
            tried.append({"tokens": t.tokens, "requested": n, "fits": False, "error": str(e)})
            print(f"{t.tokens} tokens: does not fit", flush=True)
            return False
        tried.append({"tokens": t.tokens, "requested": n, "fits": True, "feature_rows": p.rows, "batch": p.batch,
                      "active_features": p.features, "estimate_gib": p.total_bytes / 2**30})  # fmt: skip
        print(f"{t.tokens} tokens: fits (~{p.total_bytes / 2**30:.1f} GiB)", flush=True)
        if best is None or t.tokens > best[1].tokens:
            best = (n, t)
        return True

    lo, hi = None, None
    for n in sorted(lengths):
        if not fits(n):
            hi = n
            break
        lo = n
    while resolution > 0 and lo is not None and hi is not None and hi - lo > resolution:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    model = tcs = None  # freed before the build, which runs in its own process and plans with what is free:
    gc.collect()  # hand the model's memory back to the system, or the build sees ~3 GiB less than was planned
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    out = {"tried": tried, "budget_gib": memory.budget() / 2**30, "resolution": resolution}
    if best is not None:
        n, t = best
        target = {"prompt": t.prompt, "answer": t.answer, "counterfactual": t.counterfactual}
        r = alone(n, target, tmp, folder, rows=rows)
        out["build"] = {"tokens": t.tokens, "feature_rows": rows, **r}
    return out


def plot(curve: list[dict], path: Path) -> None:
    """Two panels (seconds, GiB added over the build) against prompt length, ours and circuit-tracer's."""
    import math

    w, h, pad = 360, 260, 48
    panels = [("build time (s)", "time_s"), ("memory added (GiB)", "added")]
    colours = {"ours": "#1f77b4", "theirs": "#d62728"}
    xs = [c["tokens"] for c in curve]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * w}" height="{h + 30}" font-family="sans-serif"'
             ' font-size="11"><rect width="100%" height="100%" fill="white"/>']  # fmt: skip
    for k, (title, key) in enumerate(panels):
        x0 = k * w
        vals = {}
        for side in ("ours", "theirs"):
            pts = []
            for c in curve:
                v = c.get(key, {}).get(side)
                if v is not None:
                    pts.append((c["tokens"], v))
            vals[side] = pts
        top = max([v for pts in vals.values() for _, v in pts] + [1e-9]) * 1.1
        lx = [math.log2(x) for x in xs]
        lo, hi = min(lx), max(lx) if max(lx) > min(lx) else min(lx) + 1

        def X(t, x0=x0, lo=lo, hi=hi):
            return x0 + pad + (math.log2(t) - lo) / (hi - lo) * (w - 1.5 * pad)

        def Y(v, top=top):
            return h - pad + 10 - v / top * (h - 1.5 * pad)

        parts.append(f'<text x="{x0 + w / 2}" y="16" text-anchor="middle" font-size="13">{title}</text>')
        parts.append(f'<line x1="{x0 + pad}" y1="{Y(0)}" x2="{x0 + w - pad / 2}" y2="{Y(0)}" stroke="#444"/>')
        parts.append(f'<line x1="{x0 + pad}" y1="{Y(0)}" x2="{x0 + pad}" y2="{Y(top)}" stroke="#444"/>')
        for t in xs:
            parts.append(f'<text x="{X(t)}" y="{Y(0) + 14}" text-anchor="middle">{t}</text>')
        for i in range(5):
            v = top * i / 4
            parts.append(f'<text x="{x0 + pad - 4}" y="{Y(v) + 4}" text-anchor="end">{v:.3g}</text>')
        parts.append(f'<text x="{x0 + w / 2}" y="{h + 22}" text-anchor="middle">prompt tokens</text>')
        for side, pts in vals.items():
            if len(pts) > 1:
                d = " ".join(f"{X(t):.1f},{Y(v):.1f}" for t, v in pts)
                parts.append(f'<polyline points="{d}" fill="none" stroke="{colours[side]}" stroke-width="2"/>')
            for t, v in pts:
                parts.append(f'<circle cx="{X(t):.1f}" cy="{Y(v):.1f}" r="3" fill="{colours[side]}"/>')
        for c in curve:
            if c.get("theirs_failed"):
                parts.append(f'<text x="{X(c["tokens"])}" y="{Y(top * 0.9)}" text-anchor="middle" '
                             f'fill="{colours["theirs"]}">circuit-tracer: out of memory</text>')  # fmt: skip
    legend = [("ours", "this library"), ("theirs", "circuit-tracer 0.5.0")]
    for i, (side, name) in enumerate(legend):
        parts.append(f'<rect x="{pad + 10}" y="{30 + 14 * i}" width="10" height="3" fill="{colours[side]}"/>')
        parts.append(f'<text x="{pad + 24}" y="{34 + 14 * i}">{name}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def main(argv=None) -> int:
    from attribution.compute import machine

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="*", default=[128, 512, 1024, 2048])
    ap.add_argument("--alone", type=int, nargs="*", default=[2048, 4096])
    ap.add_argument("--alone-rows", type=int, default=None, help="--alone builds' feature rows (default: what fits)")
    ap.add_argument("--largest", type=int, nargs="*", default=[], help="lengths to plan, shortest first")
    ap.add_argument("--largest-rows", type=int, default=64, help="feature rows of the build at the largest length")
    ap.add_argument("--bisect", type=int, default=0, help="bisect the largest length to this many tokens (0: off)")
    ap.add_argument("--max-feature-nodes", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--tmp", default="/tmp/replacement-length-curve")
    ap.add_argument("--result", default=str(RESULT))
    ap.add_argument("--plot", default=str(PLOT))
    args = ap.parse_args(argv)
    tmp = Path(args.tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    prompts = targets(sorted(set(args.tokens) | set(args.alone))) if args.tokens or args.alone else {}
    curve, solo = [], []
    folder, longest = None, None
    settings = {"max_feature_nodes": args.max_feature_nodes, "batch_size": args.batch_size,
                "alone": {"max_feature_nodes": args.alone_rows, "batch_size": None}}  # fmt: skip
    command = "python -m bench.peers.replacement_length_curve " + " ".join(argv if argv is not None else sys.argv[1:])

    def save() -> None:  # after every stage: a long run stopped midway keeps what it measured
        out = {"command": command.strip(), "settings": settings, "curve": curve, "alone": solo, "largest": longest}
        out["machine"] = machine()
        Path(args.result).write_text(json.dumps(out, indent=1) + "\n")
        if curve:
            plot(curve, Path(args.plot))

    for n in args.tokens:
        t = time.perf_counter()
        r = side_by_side(n, prompts[n], args, tmp)
        row = {"tokens": prompts[n]["tokens"], "requested": n}
        row["target"] = {k: v for k, v in prompts[n].items() if k != "prompt"}
        for key in ("time_s", "peak_rss_mb", "rss_before_mb", "scores", "active_features"):
            row[key] = r[key]
        row["added"] = {s: (r["peak_rss_mb"][s] - r["rss_before_mb"][s]) / 1024 for s in r["peak_rss_mb"]}
        for key in ("ratios", "theirs_failed", "edges", "edges_not_from_tokens", "feature_nodes"):
            if key in r:
                row[key] = r[key]
        row["wall_s"] = time.perf_counter() - t
        curve.append(row)
        save()
        print(json.dumps({k: row[k] for k in ("tokens", "time_s", "added")}), flush=True)
    save()
    if args.alone or args.largest:
        from attribution import load_model
        from attribution.saes.transcoders import save_transcoders
        from attribution.training.transcoder_defaults import default_transcoders

        model = load_model()
        folder = save_transcoders(default_transcoders(model, train=False), tmp / "transcoders")
        del model
        longest = largest(args.largest, tmp, folder, args.largest_rows, args.bisect) if args.largest else None
        save()
        for n in args.alone:
            r = alone(n, prompts[n], tmp, folder, rows=args.alone_rows)
            r.update(requested=n, target={k: v for k, v in prompts[n].items() if k != "prompt"})
            solo.append(r)
            print(json.dumps({k: r.get(k) for k in ("requested", "timings", "memory", "plan", "failed")}), flush=True)
            save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
