"""Long prompts and memory: attribute, ablate and build_graph on a ~2,048-token prompt of the default model.

`python -m bench.long_prompt` runs each operation in its own subprocess, so the peak resident set
(ru_maxrss) of each is its own, prints a table and writes bench/results/long_prompt.json with the machine
beside every figure. Timings on a shared machine are noisy; the load average is recorded with each.

Prompt: the start of the GPL-3 text (/usr/share/common-licenses/GPL-3), real prose the model did not write,
cut to `--tokens` tokens (<bos> included). Metric: logit(" the") - logit(" a") at the last token.
SAEs: random TopK SAEs (4,096 features, k = 32) at all 18 resid_post hooks (there are no trained SAEs at
all 18 layers): unit-norm random decoder rows, encoder = decoder^T, b_dec = the hook's mean activation on
the prompt, as tests/conftest.py::random_sae; cost depends on shapes and sparsity, not on meaning.
- attribute: grad_x_act with all 18 SAEs;
- ablate: the 256 nodes with the largest attributions (taken from the attribute run), zero ablation;
- build_graph: 10 SAE layers (resid_post 0, 2, 4, 6, 8, 9, 10, 12, 14, 16), `--candidates` feature nodes
  and `--error-nodes` error nodes per layer (each node is one backward row over the prompt).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
TEXT = Path("/usr/share/common-licenses/GPL-3")
GRAPH_LAYERS = (0, 2, 4, 6, 8, 9, 10, 12, 14, 16)
D_SAE, K = 4096, 32
OPS = ("attribute", "ablate", "graph")


def machine() -> dict:
    """What a reader needs to judge the figures: CPU, its vector units, torch's threads, memory, load."""
    import psutil

    from attribution.compute import cpu_flags, cpu_model

    cpu, flags = cpu_model() or platform.processor(), cpu_flags() or set()

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "amx_bf16": "amx_bf16" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "torch_threads": torch.get_num_threads(),
        "memory_total_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "memory_available_gib": round(psutil.virtual_memory().available / 2**30, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def long_prompt(model, tokens: int) -> str:
    """The first `tokens` tokens of the GPL-3 (counting <bos>), as text that tokenizes back to that length."""
    ids = model.encode(TEXT.read_text())
    bos = 1 if model._adds_bos else 0
    n = tokens - bos
    while True:
        text = model.tokenizer.decode(ids[bos : bos + n])
        have = len(model.encode(text))
        if have <= tokens:
            return text
        n -= have - tokens


def random_saes(model, prompt: str, hooks: list[str]) -> dict:
    """TopK SAEs with random unit-norm decoders, encoder = decoder^T, b_dec = the prompt's mean activation."""
    from attribution.engine import trace
    from attribution.saes import build

    acts = trace(model, model.tokenize(prompt), capture=hooks, stop_early=True).acts
    g = torch.Generator().manual_seed(0)
    out = {}
    for h in hooks:
        sae = build("topk", model.d_model, D_SAE, h, k=K)
        with torch.no_grad():
            sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(D_SAE, model.d_model, generator=g), dim=-1))
            sae.W_enc.copy_(sae.W_dec.T)
            sae.b_dec.copy_(acts[h][0, 1:].mean(0))
        out[h] = sae.requires_grad_(False)
    del acts
    return out


def child(op: str, args) -> dict:
    """One operation in this process: its time and this process's peak resident set."""
    from attribution import LogitDiff, ablate, attribute, load_model

    model = load_model()
    prompt = long_prompt(model, args.tokens)
    metric = LogitDiff(model, " the", " a")
    n_tokens = len(model.encode(prompt))
    if op == "graph":
        hooks = [f"resid_post.{layer}" for layer in GRAPH_LAYERS]
    else:
        hooks = [f"resid_post.{layer}" for layer in range(model.n_layers)]
    saes = random_saes(model, prompt, hooks)
    before = peak_gib()
    start = time.perf_counter()
    out: dict = {}
    if op == "attribute":
        attr = attribute(model, saes, prompt, metric)
        what = f"attribute grad_x_act, {len(hooks)} SAEs, {len(attr)} nodes"
        out["top_nodes"] = [list(n.key) for n in attr.top(args.nodes)]
        out["metric"] = float(attr.metric[0])
    elif op == "ablate":
        keys = json.loads(Path(args.nodes_file).read_text())
        nodes = [(h, p, None if f < 0 else f, b) for b, h, p, f in keys]
        abl = ablate(model, saes, prompt, metric, nodes, progress=False)
        what = f"ablate {len(abl)} nodes (zero), {len({n[0] for n in nodes})} hooks"
        out["metric"] = float(abl.metric[0])
    else:
        from graphs import build_graph

        g = build_graph(
            model,
            saes,
            prompt,
            metric,
            candidates=args.candidates,
            error_nodes=args.error_nodes,
            labels=False,
            progress=False,
        )
        kinds = [x.kind for x in g.full_nodes]
        what = (
            f"build_graph {len(hooks)} SAE layers, {kinds.count('feature')} feature + {kinds.count('error')} error "
            f"nodes, {len(g.src)} edges"
        )
    seconds = time.perf_counter() - start
    out.update(
        op=op,
        what=what,
        tokens=n_tokens,
        seconds=round(seconds, 1),
        peak_gib=round(peak_gib(), 2),
        peak_before_op_gib=round(before, 2),
        saes=f"random TopK {D_SAE} features, k={K}, at {len(hooks)} resid_post hooks",
        machine=machine(),
    )
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--nodes", type=int, default=256, help="nodes to ablate")
    p.add_argument("--candidates", type=int, default=16, help="graph feature nodes per layer")
    p.add_argument("--error-nodes", type=int, default=16, help="graph error nodes per layer")
    p.add_argument("--only", choices=OPS, action="append", help="run only these operations")
    p.add_argument("--out", type=Path, default=RESULTS / "long_prompt.json")
    p.add_argument("--child", choices=OPS, help=argparse.SUPPRESS)
    p.add_argument("--nodes-file", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        Path(args.result).write_text(json.dumps(child(args.child, args)))
        return 0
    ops = args.only or list(OPS)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        nodes_file = Path(tmp) / "nodes.json"
        for op in ops:
            if op == "ablate" and not nodes_file.exists():
                if "attribute" in ops:
                    print("ablate skipped: the attribute run failed", file=sys.stderr)
                    continue
                run_child("attribute", argv, tmp, nodes_file)  # for its top nodes only
            result = run_child(op, argv, tmp, nodes_file)
            if result is None:
                continue
            result.pop("top_nodes", None)
            results.append(result)
            print(f"{op:>9}  {result['seconds']:8.1f} s  {result['peak_gib']:6.2f} GiB  {result['what']}", flush=True)
    if not results:
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python -m bench.long_prompt", *argv])
    args.out.write_text(json.dumps({"command": command, "runs": results}, indent=2) + "\n")
    print(f"\n{'operation':>9}  {'seconds':>10}  {'peak GiB':>8}  what ran  ({results[0]['tokens']} tokens)")
    for r in results:
        print(f"{r['op']:>9}  {r['seconds']:10.1f}  {r['peak_gib']:8.2f}  {r['what']}")
    m = results[-1]["machine"]
    print(
        f"\n{m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['cpu_capability']}, amx_bf16 {m['amx_bf16']}, "
        f"avx512_bf16 {m['avx512_bf16']}), {m['torch_threads']} threads; load {m['load_average']} (shared machine: "
        f"timings are noisy). Written to {args.out}"
    )
    return 0


def run_child(op: str, argv: list[str], tmp: str, nodes_file: Path) -> dict | None:
    result = Path(tmp) / f"{op}.json"
    cmd = [sys.executable, "-m", "bench.long_prompt", *argv, "--child", op, "--result", str(result)]
    cmd += ["--nodes-file", str(nodes_file)]
    rc = subprocess.call(cmd)
    if rc != 0 or not result.exists():
        print(f"{op} failed (exit {rc})", file=sys.stderr)
        return None
    out = json.loads(result.read_text())
    if op == "attribute":
        nodes_file.write_text(json.dumps(out["top_nodes"]))
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
