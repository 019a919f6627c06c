"""Replacement graphs side by side with circuit-tracer 0.5.0: the same transcoders, model, prompt and target.

    python -m bench.peers.replacement_side_by_side [--max-feature-nodes N] [--batch-size B] [--out DIR]

1. Our default transcoders (or --transcoders, a folder load_transcoders reads) are exported in circuit-tracer's
   format (attribution.save_transcoders); both sides then read that same folder.
2. circuit-tracer's attribute() runs in its own venv (bench.peers.circuit_tracer_side_by_side: its half, timed, its
   peak RSS over the call) on gemma-3-270m from our converted folder.
3. Ours runs in a fresh process of this project's python (this file with --ours): build_graph with the same
   max_feature_nodes and batch size, timed, peak RSS over the call. Both halves run the model's plain forward
   on the prompt (its logits) before the RSS baseline: the model's weights are memory-mapped from its file
   and are resident only once read (1.0 GB of gemma-3-270m's, its 640 MB tied embedding first read by the
   unembedding), so without it our half counted them as memory the build adds and circuit-tracer's did not.
4. Compared: the active features; every edge both graphs have, and the top 1,000 edges of circuit-tracer's
   graph by |weight| (relative difference); the unpruned graphs' replacement and completeness scores
   (ours: graphs.scores; theirs: compute_graph_scores); time and peak memory, ours / theirs.
Writes bench/results/replacement_side_by_side.json (or --result).

Known differences, measured rather than hidden: circuit-tracer's TopK keeps the k largest pre-activations
whatever their sign (ours is relu after the top k, so a negative one is inactive), and it has error nodes at
<bos> with zero vectors (ours has none there); both only add nodes without edges or drop them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.peers.circuit_tracer_side_by_side import _peak_rss_reset, _rss_mb  # the peer's side measures the same way

ROOT = Path(__file__).resolve().parents[2]
RESULT = ROOT / "bench" / "results" / "replacement_side_by_side.json"
PROMPT = "Fact: The capital of the state where Kobe Bryant played basketball is"
GOOD, BAD = " Sacramento", " Albany"
SQUARE_SCORES = 20_000  # nodes up to which circuit-tracer's whole adjacency is rescored here (float64, n^2)


def ours(args) -> None:
    """Our half, in its own process: build the replacement graph, time it and its peak RSS, save it."""
    from safetensors.torch import save_file

    from attribution import LogitDiff, load_model
    from attribution.saes.transcoders import load_transcoders
    from graphs import build_graph
    from graphs.scores import graph_scores

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model()
    tcs = load_transcoders(args.transcoders, model=model)
    metric = LogitDiff(model, args.good, args.bad)
    model.logits(args.prompt)  # the model's own logits first, as circuit-tracer's half does: weights resident
    before = _rss_mb("VmRSS")
    _peak_rss_reset()  # the peak from here on is the build's
    t = time.perf_counter()
    g = build_graph(model, tcs, args.prompt, metric, labels=False, progress=False,
                    max_feature_nodes=args.max_feature_nodes, max_rows=args.batch_size)  # fmt: skip
    seconds = time.perf_counter() - t
    peak = _rss_mb()
    s = graph_scores(g, pruned=False)
    nodes = [[x.kind, x.layer - 1, x.position, -1 if x.feature is None else x.feature] for x in g.full_nodes]
    save_file(
        {"src": g.src.contiguous(), "dst": g.dst.contiguous(), "weight": g.weight.contiguous()},
        str(Path(args.out) / "edges.safetensors"),
    )
    result = {
        "nodes": nodes,
        "metric": g.metric_value,
        "d_model": model.d_model,
        "active_features": g.info["active_features"],
        "scores": {"replacement": s.replacement, "completeness": s.completeness},
        "timings": {"build_graph_s": seconds},
        "plan": g.info["plan"],
        "prompt_tokens": len(g.tokens),
        "memory": {"rss_before_mb": before, "peak_rss_build_mb": peak},
        "threads": torch.get_num_threads(),
    }
    (Path(args.out) / "result.json").write_text(json.dumps(result))


def compare(ours_dir: Path, peer_dir: Path) -> dict:
    """Nodes matched by identity (feature: layer, position, index; error: layer, position; token: position); our
    edges laid into circuit-tracer's dense [target, source] order and compared entry by entry."""
    from safetensors.torch import load_file

    mine = json.loads((ours_dir / "result.json").read_text())
    e = load_file(str(ours_dir / "edges.safetensors"))
    peer = json.loads((peer_dir / "result.json").read_text())
    t = load_file(str(peer_dir / "graph.safetensors"))
    lay = peer["layout"]
    n_f, n_e, n_t = lay["n_features"], lay["n_errors"], lay["n_tokens"]
    keys = [("feature", *map(int, r)) for r in t["features"].tolist()]
    keys += [("error", int(a), int(b), -1) for a, b in t["errors"].tolist()]
    keys += [("token", -1, p, -1) for p in range(n_t)]
    keys += [("metric", -1, -1, -1)] * lay["n_logits"]
    index = {k: i for i, k in enumerate(keys)}
    my_keys = [
        ("metric", -1, -1, -1) if k == "metric" else (k, layer if k != "token" else -1, p, f)
        for k, layer, p, f in mine["nodes"]
    ]
    to_peer = torch.tensor([index.get(k, -1) for k in my_keys])
    full = t["adjacency"]  # [target, source], circuit-tracer's order: only feature and logit rows have edges
    n = len(full)
    rows = torch.cat([torch.arange(n_f), torch.arange(n - lay["n_logits"], n)])
    small = n <= SQUARE_SCORES  # circuit-tracer's scores need the square matrix: only where it is small
    A = full[rows].double()  # [feature and logit rows, sources]
    square = full.double() if small else None
    del full
    row_of = torch.full((n,), -1, dtype=torch.long)
    row_of[rows] = torch.arange(len(rows))
    M = torch.zeros_like(A)  # ours, in the same order
    s_idx, d_idx = to_peer[e["src"]], to_peer[e["dst"]]
    mapped = (s_idx >= 0) & (d_idx >= 0)
    mapped[mapped.clone()] &= row_of[d_idx[mapped]] >= 0
    M[row_of[d_idx[mapped]], s_idx[mapped]] = e["weight"][mapped].double()
    both = (M != 0) & (A != 0)
    rel = (M - A).abs() / torch.maximum(M.abs(), A.abs()).clamp_min(1e-12)
    token_cols = torch.zeros_like(both)
    token_cols[:, n_f + n_e : n_f + n_e + n_t] = True
    ratio = (M[both & token_cols] / A[both & token_cols]).median().item() if bool((both & token_cols).any()) else None
    other = rel[both & ~token_cols]
    top = A.abs().flatten().topk(1000).indices
    top_rel, top_missing = rel.flatten()[top], (M.flatten()[top] == 0)
    top_other = ~token_cols.flatten()[top]
    fixed = square
    if ratio and small:
        fixed[:, n_f + n_e : n_f + n_e + n_t] *= ratio
    my_feats = {k for k in my_keys if k[0] == "feature"}
    return {
        "feature_nodes": {"ours": len(my_feats), "theirs": n_f, "common": len(my_feats & set(keys[:n_f]))},
        "active_features": {"ours": mine["active_features"], "theirs": lay["n_active_features"]},
        "edges": {
            "ours": len(e["src"]),
            "theirs": int((A != 0).sum()),
            "common": int(both.sum()),
            "ours_between_nodes_they_lack": int((~mapped).sum()),
            "median_rel_diff": rel[both].median().item(),
            "top1000_within_1e-3": int((top_rel <= 1e-3).sum()),
            "top1000_missing_in_ours": int(top_missing.sum()),
        },
        "token_edges": {"median_ratio_ours_over_theirs": ratio, "sqrt_d_model": mine["d_model"] ** 0.5},
        "edges_not_from_tokens": {
            "common": int(other.numel()),
            "median_rel_diff": other.median().item() if other.numel() else None,
            "p99_rel_diff": other.quantile(0.99).item() if other.numel() else None,
            "top1000_not_from_tokens": int(top_other.sum()),
            "top1000_within_1e-3": int(((top_rel <= 1e-3) & top_other).sum()),
        },
        "scores": {
            "ours": mine["scores"],
            "theirs": peer["scores"]["unpruned"],
            "theirs_tokens_scaled": dict(zip(("replacement", "completeness"), _scores(fixed, n_f, n_e, lay)))
            if small
            else None,
        },
        "metric": {"ours": mine["metric"], "theirs": peer["target"]["model_logit_diff"]},
        "time_s": {"ours": mine["timings"]["build_graph_s"], "theirs": peer["timings"]["attribute_s"]},
        "peak_rss_mb": {"ours": mine["memory"]["peak_rss_build_mb"], "theirs": peer["memory"]["peak_rss_attribute_mb"]},
        "rss_before_mb": {"ours": mine["memory"]["rss_before_mb"], "theirs": peer["memory"]["rss_before_attribute_mb"]},
        "threads": {"ours": mine["threads"], "theirs": peer["settings"]["threads"]},
        "error_nodes": {"theirs": n_e},
    }


def _scores(A, n_f: int, n_e: int, lay: dict) -> tuple[float, float]:
    """circuit-tracer's compute_graph_scores on an adjacency matrix in its node order (logit weight 1)."""
    N = A.abs()
    N = N / N.sum(1, keepdim=True).clamp_min(1e-10)
    w = torch.zeros(len(A), dtype=torch.float64)
    w[-lay["n_logits"] :] = 1.0
    inf, cur = torch.zeros_like(w), w @ N
    for _ in range(len(A)):
        if not bool(cur.any()):
            break
        inf += cur
        cur = cur @ N
    tokens = inf[n_f + n_e : n_f + n_e + lay["n_tokens"]].sum()
    errors = inf[n_f : n_f + n_e].sum()
    out = inf + w
    complete = ((1 - N[:, n_f : n_f + n_e].sum(1)) * out).sum() / out.sum()
    return float(tokens / (tokens + errors)), float(complete)


def _auto(value: str) -> int | None:
    return None if value == "auto" else int(value)


def _peer_run(cmd: list[str], env: dict, out: Path) -> dict:
    """circuit-tracer's half; {} when it finished, else how it failed. Its process is the kernel's first choice
    when memory runs out (oom_score_adj 1000), so a run too large for the machine ends it, not another job."""

    def first_to_go() -> None:
        Path("/proc/self/oom_score_adj").write_text("1000")

    out.mkdir(parents=True, exist_ok=True)
    log = out / "stderr.log"
    with log.open("w") as err:
        rc = subprocess.call(cmd, cwd=ROOT, env=env, stderr=err, preexec_fn=first_to_go)
    if rc == 0 and (out / "result.json").exists():
        return {}
    tail = log.read_text().strip().splitlines()[-3:]
    text = " ".join(tail)
    if rc in (-9, 137) or "SIGKILL" in text or "Killed" in text:
        how = "killed by the kernel (SIGKILL): out of memory"
    elif "can't allocate memory" in text or "OutOfMemory" in text:
        how = "out of memory: an allocation failed"
    else:
        how = "error"
    return {"returncode": rc, "how": how, "stderr_tail": tail}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transcoders", default=None, help="a transcoder folder (default: default_transcoders)")
    ap.add_argument("--max-feature-nodes", type=_auto, default=1024, help="an int, or auto: what fits (ours only)")
    ap.add_argument("--batch-size", type=_auto, default=64, help="an int, or auto: what fits (ours only)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="/tmp/replacement-side-by-side")
    ap.add_argument("--result", default=str(RESULT))
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--good", default=GOOD)
    ap.add_argument("--bad", default=BAD)
    ap.add_argument("--reuse-theirs", action="store_true", help="keep circuit-tracer's result already in --out")
    ap.add_argument("--ours", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.ours:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        ours(args)
        return 0
    from attribution import load_model
    from attribution.compute import machine
    from attribution.saes.transcoders import load_transcoders, save_transcoders

    out.mkdir(parents=True, exist_ok=True)
    model = load_model()
    if args.transcoders:
        tcs = load_transcoders(args.transcoders, model=model)
    else:
        from attribution.training.transcoder_defaults import default_transcoders

        tcs = default_transcoders(model, train=False)
    folder = save_transcoders(tcs, out / "transcoders")
    del model, tcs
    if args.max_feature_nodes is None or args.batch_size is None:
        ap.error("the side by side needs the same --max-feature-nodes and --batch-size on both sides (auto: --ours)")
    common = ["--max-feature-nodes", str(args.max_feature_nodes), "--batch-size", str(args.batch_size)]
    common += ["--prompt", args.prompt, "--good", args.good, "--bad", args.bad, "--threads", str(args.threads)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs, failed = {}, {}
    for side in ("theirs", "ours"):  # one at a time: two cores, and each side's peak memory is its own
        if side == "theirs" and args.reuse_theirs and (out / "theirs" / "result.json").exists():
            continue
        t = time.perf_counter()
        if side == "ours":
            cmd = [sys.executable, "-m", "bench.peers.replacement_side_by_side", "--ours", "--transcoders", str(folder)]
            subprocess.check_call(cmd + common + ["--out", str(out / "ours")], cwd=ROOT, env=env)
        else:
            (out / "theirs" / "result.json").unlink(missing_ok=True)
            cmd = [sys.executable, "-m", "bench.peers.circuit_tracer_side_by_side", "--transcoders", str(folder)]
            cmd += [*common, "--out", str(out / "theirs"), "--no-graph-json"]
            failed = _peer_run(cmd, env, out / "theirs")
        runs[side] = time.perf_counter() - t
    if failed:  # circuit-tracer did not finish (e.g. out of memory): our numbers, and how theirs failed
        mine = json.loads((out / "ours" / "result.json").read_text())
        result = {
            "theirs_failed": failed,
            "active_features": {"ours": mine["active_features"]},
            "scores": {"ours": mine["scores"]},
            "time_s": {"ours": mine["timings"]["build_graph_s"]},
            "peak_rss_mb": {"ours": mine["memory"]["peak_rss_build_mb"]},
            "rss_before_mb": {"ours": mine["memory"]["rss_before_mb"]},
        }
    else:
        result = compare(out / "ours", out / "theirs")
        result["ratios"] = {
            "time_ours_over_theirs": result["time_s"]["ours"] / result["time_s"]["theirs"],
            "peak_rss_ours_over_theirs": result["peak_rss_mb"]["ours"] / result["peak_rss_mb"]["theirs"],
            "added_rss_ours_over_theirs": (result["peak_rss_mb"]["ours"] - result["rss_before_mb"]["ours"])
            / max(1.0, result["peak_rss_mb"]["theirs"] - result["rss_before_mb"]["theirs"]),
        }
    result["settings"] = {
        "max_feature_nodes": args.max_feature_nodes,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "prompt": args.prompt,
        "good": args.good,
        "bad": args.bad,
    }
    result["machine"] = machine()
    result["load_average"] = os.getloadavg()
    result["subprocess_s"] = runs
    Path(args.result).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
