"""Device smoke test: attribution, ablation, a graph and a few training steps on a device, against the CPU.

    python -m attribution.smoke --device cuda          # a GPU against the CPU (float32 and its native dtype)
    python -m attribution.smoke --device cpu           # the CPU in low precision against the CPU in float64
    python -m attribution.smoke --dtypes float32,float16 --families gpt2 --no-default-model

Tiny random models of every family run as CPU float64 (the reference) and on the device in each dtype;
the default model (when its conversion is already cached, or with --default-model) runs as CPU float32
(the reference) and on the device. SAEs are random float32 dictionaries, copied for each side. Training
fits the same activations with the same seed on both sides.

Each row compares the device's numbers with the reference's: max |device - reference| over the shared
nodes/edges, divided by the reference's largest |value|, against a tolerance per dtype (TOL: 2-3x the
worst seen on CPU in tests/test_dtypes.py, wider for float32 across devices whose kernels sum in another
order). Training compares the final explained variance (absolute, TRAIN_EV_TOL): TopK picks diverge once
any rounding differs, so weights are not compared. Exits 1 on any mismatch.

Tested on CPU only (tests/test_device_smoke.py); no GPU was available when it was written, so the CUDA path
is untested.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch

from attribution import AttributionError, LogitDiff, ablate, attribute, load_model
from attribution.compute import compute_dtype, dtype_name, parse_dtype
from attribution.saes import build
from attribution.training import TrainConfig, fit

TOL = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}
# Edges out of error nodes in a low-precision model: gemma-3-270m's error terms carry its massive residual
# dimension (norm ~6,000), and an edge is the dot product of that with a Jacobian computed in bf16, so the
# largest ones cancel badly: 30% off in bf16 on the CPU (measured), against 2.7% for edges out of features.
# Reported against this looser bound (build graphs of gemma in float32); float32 keeps TOL.
ERROR_EDGE_TOL = {torch.float16: 0.5, torch.bfloat16: 0.5}
MIN_SHARED = 0.95  # low precision flips features at their threshold: node/edge sets may differ a little
TRAIN_EV_TOL = 0.05
FAMILIES = ("gemma3", "llama", "gpt2", "neox")
TINY_PROMPT = "john says i want to be alone right now john feels"
DEFAULT_PROMPT = "Fact: The capital of the state where Kobe Bryant played basketball is"
TRAIN_TEXTS = {  # activations to train on (the same tensor on both sides)
    "tiny": ["john says i want to be alone right now john feels", "mary went home and felt tired", "the cat ran fast"],
    "default": [
        DEFAULT_PROMPT,
        'John says, "I want to be alone right now." John feels',
        "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
        "In 1969 the first humans walked on the Moon, and millions watched the landing on television.",
    ],
}


def _compare(got: dict, want: dict) -> tuple[float, float, float]:
    """(shared fraction, max abs error over shared keys, reference scale)."""
    shared = [k for k in want if k in got]
    scale = max((abs(v) for v in want.values()), default=0.0)
    err = max((abs(got[k] - want[k]) for k in shared), default=0.0)
    return len(shared) / max(1, len(want)), err, scale


def _edges(g) -> dict:
    ids = [n.id for n in g.full_nodes]
    return {(ids[s], ids[d]): w for s, d, w in zip(g.src.tolist(), g.dst.tolist(), g.weight.tolist())}


def _random_sae(d: int, hook: str, d_sae: int, arch: str, seed: int, k: int = 8):
    g = torch.Generator().manual_seed(seed)
    sae = build(arch, d, d_sae, hook, **({"k": k} if arch == "topk" else {}))
    with torch.no_grad():
        W = torch.nn.functional.normalize(torch.randn(d_sae, d, generator=g), dim=-1)
        sae.W_dec.copy_(W)
        sae.W_enc.copy_(W.T)
        if arch == "relu":
            sae.b_enc.copy_(-3.0 * torch.rand(d_sae, generator=g))
    return sae.requires_grad_(False)


def _run(model, saes: dict, prompt: str, good: str, bad: str, graph_hooks: list[str], candidates, n_nodes, keys=None):
    """Every number the smoke test compares, as {check: {key: float}}; timings; the nodes ablated (the top
    n_nodes by attribution, or `keys`: the device ablates the reference's nodes)."""
    from graphs import build_graph

    saes = {h: copy.deepcopy(s) for h, s in saes.items()}  # each side moves its own copies
    metric = LogitDiff(model, good, bad)
    out, secs = {}, {}
    t = time.perf_counter()
    attr = attribute(model, saes, prompt, metric)
    out["metric"] = {0: float(attr.metric[0])}
    out["attribution"] = dict(zip(attr.node_keys(), attr.value.tolist()))
    secs["attribution"] = time.perf_counter() - t
    t = time.perf_counter()
    if keys is None:
        nodes = [(h, p, f) for _, h, p, f in attr.node_keys()]
        keys = [nodes[i] for i in attr.order(n_nodes).tolist()]
    abl = ablate(model, saes, prompt, metric, [(h, p, None if f < 0 else f) for h, p, f in keys], progress=False)
    out["ablation"] = dict(zip(keys, abl.effect.tolist()))
    secs["ablation"] = time.perf_counter() - t
    t = time.perf_counter()
    g = build_graph(
        model, {h: saes[h] for h in graph_hooks}, prompt, metric, candidates=candidates, labels=False, progress=False
    )
    kind = {n.id: n.kind for n in g.full_nodes}
    edges = _edges(g)
    out["graph edges"] = {k: w for k, w in edges.items() if kind[k[0]] != "error"}
    out["edges from errors"] = {k: w for k, w in edges.items() if kind[k[0]] == "error"}
    secs["graph edges"] = secs["edges from errors"] = time.perf_counter() - t
    return out, secs, keys


def _activations(model, texts: list[str], hook: str) -> torch.Tensor:
    """[tokens, d_model] float32 activations at `hook` (non-<bos> tokens), repeated with small noise so that
    a few steps see different batches."""
    from attribution import trace

    batch = model.tokenize(texts)
    x = trace(model, batch, capture=[hook], stop_early=True).acts[hook][batch.node_mask()].float()
    g = torch.Generator().manual_seed(0)
    reps = max(1, 2048 // len(x))
    x = x.repeat(reps, 1)
    return x + 0.05 * x.std() * torch.randn(x.shape, generator=g)


def _train(acts: torch.Tensor, device, steps: int, dtype) -> float:
    sae = build("topk", acts.shape[-1], 4 * acts.shape[-1], "resid_post.1", k=8, apply_b_dec_to_input=True)
    cfg = TrainConfig(steps=steps, batch_size=min(256, len(acts)), lr=3e-3, progress=False, dtype=dtype)
    log = fit(sae.to(device), acts, cfg)
    return log.explained_variance[-1]


def smoke(args) -> list[dict]:
    from attribution.models.tiny import tiny_hf

    device = torch.device(args.device)
    rows = []
    dtypes = [parse_dtype(d) for d in args.dtypes.split(",")] if args.dtypes else None
    if dtypes is None:  # float32, plus what the device computes in natively (when that is another dtype)
        dtypes = list(dict.fromkeys([torch.float32, compute_dtype(device)]))
        if device.type == "cpu" and torch.float32 in dtypes and len(dtypes) == 1:
            dtypes.append(torch.bfloat16)  # the CPU against itself: also in low precision, however slow

    cases = [(f, None) for f in args.families.split(",") if f]
    if args.default_model or (args.default_model is None and _default_cached()):
        cases.append(("default", None))
    for family, _ in cases:
        if family == "default":
            base = load_model()
            hf, hf.tokenizer = base.hf, base.tokenizer
            ref_dtype, prompt, good, bad = torch.float32, DEFAULT_PROMPT, " Sacramento", " Albany"
            hooks = ["resid_post.3", "resid_post.9", "resid_post.15"]
            d_sae, arch, candidates, n_nodes = 2048, "topk", 16, 32
        else:
            hf = tiny_hf(family)
            ref_dtype, prompt, good, bad = torch.float64, TINY_PROMPT, "sad", "happy"
            hooks = ["resid_post.0", "resid_post.2"]
            d_sae, arch, candidates, n_nodes = 64, "relu", None, 24
        ref = load_model(hf, dtype=ref_dtype)
        saes = {h: _random_sae(ref.d_model, h, d_sae, arch, seed=i) for i, h in enumerate(hooks)}
        want, want_s, keys = _run(ref, saes, prompt, good, bad, hooks, candidates, n_nodes)
        # the metric is one number, possibly near 0: judged on the scale of the effects that move it
        metric_scale = max(abs(want["metric"][0]), *(abs(v) for v in want["ablation"].values()))
        acts = _activations(ref, TRAIN_TEXTS["default" if family == "default" else "tiny"], hooks[-1])
        ev_ref = _train(acts, "cpu", args.steps, "float32")
        for dtype in dtypes:
            m = load_model(hf, dtype=dtype, device=device)
            try:
                got, got_s, _ = _run(m, saes, prompt, good, bad, hooks, candidates, n_nodes, keys)
            except AttributionError as exc:  # e.g. gemma in float16 overflows: NumericalError
                rows.append(_failed(family, dtype, exc))
                continue
            for check, values in got.items():
                shared, err, scale = _compare(values, want[check])
                scale = metric_scale if check == "metric" else scale
                rel = ERROR_EDGE_TOL.get(dtype, TOL[dtype]) if check == "edges from errors" else TOL[dtype]
                tol = rel * max(scale, 1e-12)
                rows.append(
                    {
                        "model": family,
                        "dtype": dtype_name(dtype),
                        "check": check,
                        "n": len(want[check]),
                        "shared": shared,
                        "err": err,
                        "scale": scale,
                        "tol": tol,
                        "ok": err <= tol and shared >= MIN_SHARED,
                        "s": got_s.get(check, 0.0),
                        "ref_s": want_s.get(check, 0.0),
                    }
                )
            train_dtype = "float32" if dtype == torch.float32 else dtype_name(dtype)
            ev = _train(acts, device, args.steps, train_dtype)
            rows.append(
                {
                    "model": family,
                    "dtype": train_dtype,
                    "check": f"fit EV ({args.steps} steps)",
                    "n": 1,
                    "shared": 1.0,
                    "err": abs(ev - ev_ref),
                    "scale": ev_ref,
                    "tol": TRAIN_EV_TOL,
                    "ok": abs(ev - ev_ref) <= TRAIN_EV_TOL and ev == ev,
                    "s": 0.0,
                    "ref_s": 0.0,
                }
            )
    return rows


def _failed(family: str, dtype, exc: Exception) -> dict:
    print(f"{family} in {dtype_name(dtype)}: {type(exc).__name__}: {exc}", file=sys.stderr)
    row = {"model": family, "dtype": dtype_name(dtype), "check": type(exc).__name__, "n": 0, "shared": 0.0}
    return {**row, "err": float("nan"), "scale": 0.0, "tol": 0.0, "ok": False, "s": 0.0, "ref_s": 0.0}


def _default_cached() -> bool:
    from attribution.models.loading import cache_dir

    return (cache_dir() / "models" / "gemma-3-270m" / ".complete").exists()


def table(rows: list[dict], device: str) -> str:
    head = (
        f"{'model':8} {'dtype':9} {'check':18} {'n':>6} {'shared':>7} {'max err':>9} {'scale':>9} {'tol':>9}  ok"
        f"  {'time s':>7} {'ref s':>7}"
    )
    lines = [f"device {device} against the CPU reference (float64 tiny models, float32 default model)", head]
    for r in rows:
        lines.append(
            f"{r['model']:8} {r['dtype']:9} {r['check']:18} {r['n']:6d} {r['shared']:7.1%} {r['err']:9.2e} "
            f"{r['scale']:9.2e} {r['tol']:9.2e}  {'yes' if r['ok'] else 'NO ':3}  {r['s']:7.3f} {r['ref_s']:7.3f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m attribution.smoke", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtypes", default=None, help="comma-separated model dtypes (default: float32 + native)")
    ap.add_argument("--families", default=",".join(FAMILIES), help="tiny model families (empty: none)")
    ap.add_argument("--default-model", dest="default_model", action="store_true", default=None)
    ap.add_argument("--no-default-model", dest="default_model", action="store_false")
    ap.add_argument("--steps", type=int, default=20, help="training steps on each side")
    args = ap.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: pass --device cpu", file=sys.stderr)
        return 2
    rows = smoke(args)
    print(table(rows, args.device))
    bad = [r for r in rows if not r["ok"]]
    if bad:
        print(f"{len(bad)} mismatch(es)", file=sys.stderr)
        return 1
    print("all checks within tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
