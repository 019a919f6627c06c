"""What the SAE-training side-by-sides share: the inputs, our run, the common evaluation and the result file.

Used by bench/peers/saelens_side_by_side.py (SAELens) and bench/peers/sparsify_side_by_side.py (EleutherAI's sparsify),
so both compare a peer against the same `fit` run on the same activations in the same batch order, and
score both SAEs with the same code. Imports only the standard library at the top: the peers' workers, which
run in their own virtualenvs, import `timed` and `speed` from here.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

STEPS, BATCH, LR = 100, 4096, 4e-4
PAIR_STEPS = 12
DEAD_AFTER_TOKENS = 1_000_000
N_EVAL = 8192
RESULTS = Path(__file__).resolve().parents[1] / "results"
ROW_KEYS = ("trainer", "tokens_per_s", "median_step_tokens_per_s", "explained_variance", "mse", "l0")
ROW_KEYS += ("dead_fraction", "ce_loss_recovered")


def timed(batches, stamps: list[float]):
    """Yield from `batches`, noting when each is asked for: the gaps are step times (robust to a busy
    machine through their median, where the wall time of the whole run is not)."""
    for b in batches:
        stamps.append(time.perf_counter())
        yield b


def speed(seconds: float, stamps: list[float], steps: int, batch: int = BATCH) -> dict:
    gaps = sorted(b - a for a, b in itertools.pairwise(stamps[1:]))  # the first gap holds initialisation
    median = gaps[len(gaps) // 2] if gaps else seconds / steps
    return {
        "seconds": seconds,
        "tokens_per_s": steps * batch / seconds,
        "median_step_s": median,
        "median_step_tokens_per_s": batch / median,
    }


def prepare(work: Path, steps: int) -> dict:
    """Dump train/held-out activations and the batch order; returns a description of the inputs."""
    import torch
    from safetensors.torch import save_file

    from bench.data import D_SAE, HOOK, K, find_cache, load, synthetic

    cache = find_cache(HOOK)
    if cache is not None:
        x = load(cache, HOOK)
        source = {"kind": "real", "cache": str(cache.path), "tokens": cache.n_tokens, "hook": HOOK}
    else:
        x = synthetic(200_000 + N_EVAL).to(torch.bfloat16)
        source = {"kind": "synthetic", "tokens": len(x), "hook": HOOK}
    train, held = x[:-N_EVAL].contiguous(), x[-N_EVAL:].contiguous()
    g = torch.Generator().manual_seed(0)
    per_epoch = len(train) // BATCH
    epochs = [torch.randperm(len(train), generator=g)[: per_epoch * BATCH].view(per_epoch, BATCH)]
    while sum(len(e) for e in epochs) < steps:
        epochs.append(torch.randperm(len(train), generator=g)[: per_epoch * BATCH].view(per_epoch, BATCH))
    order = torch.cat(epochs)[:steps]
    work.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "train": train,
            "eval": held,
            "order": order,
            "d_sae": torch.tensor(D_SAE),
            "k": torch.tensor(K),
        },
        str(work / "activations.safetensors"),
    )
    source.update(train_tokens=len(train), held_out_tokens=len(held), epochs=steps * BATCH / len(train))
    return source


def train_ours(work: Path, steps: int, precision: str, progress: bool = True, normalize: str = "dim"):
    import torch
    from safetensors.torch import load_file

    from attribution.saes import build
    from attribution.training import TrainConfig, fit
    from bench.data import D_IN, D_SAE, HOOK, K

    data = load_file(str(work / "activations.safetensors"))
    train, order = data["train"], data["order"][:steps]
    sae = build("topk", D_IN, D_SAE, HOOK, k=K, apply_b_dec_to_input=True)
    cfg = TrainConfig(
        steps=steps,
        batch_size=BATCH,
        lr=LR,
        lr_warmup=0.01,
        lr_decay=0.2,
        dead_after_tokens=DEAD_AFTER_TOKENS,
        dtype="bfloat16" if precision == "bf16" else "float32",
        normalize=normalize,
        progress=progress,
        seed=0,
    )
    stamps: list[float] = []
    t0 = time.perf_counter()
    fit(sae, timed((train[idx].float() for idx in order), stamps), cfg)
    seconds = time.perf_counter() - t0
    return sae, {
        "trainer": f"attribution.training.fit (ours, normalize={normalize!r})",
        **speed(seconds, stamps, steps),
        "steps": steps,
        "threads": torch.get_num_threads(),
    }


def quality(sae, x) -> dict:
    """The same held-out measures for both SAEs, in model units (scales are folded into the weights)."""
    import torch

    with torch.no_grad():
        x = x.float()
        x_hat, f = sae(x)
        err = (x - x_hat).pow(2).sum(-1)
        return {
            "explained_variance": 1 - float(err.sum() / (x - x.mean(0)).pow(2).sum()),
            "mse": float(err.mean()),  # per token, summed over the 640 dimensions
            "relative_mse": float(err.mean() / x.pow(2).sum(-1).mean()),
            "l0": float((f != 0).float().sum(-1).mean()),
            "dead_fraction": float((~(f != 0).any(0)).float().mean()),
            # gemma's layer-9 residual has one dimension holding ~87% of E[x^2]: EV and MSE mostly measure it
            "error_share_top_dim": float((x - x_hat).pow(2).sum(0).max() / err.sum()),
        }


def held_out_text(cache_path: str | None):
    """The held-out token ids of the corpus that produced `cache_path` (train_sae's 5% split), or None."""
    from safetensors.torch import load_file

    from attribution.cache import cache_dir, tensor_digest

    if cache_path is None:
        return None
    digest = Path(cache_path).name.rsplit("-", 1)[-1]  # cached_activations puts the ids' hash last
    for f in sorted((cache_dir() / "corpus").glob("*/*.safetensors")):
        ids = load_file(str(f))["tokens"]
        n_eval = max(1, round(0.05 * len(ids)))
        if tensor_digest(ids[:-n_eval]).startswith(digest):
            return ids[-n_eval:]
    return None


def ensure_venv(venv: Path, install: bool, module: str, packages: list[str]) -> Path | None:
    """The venv's python if `module` imports there; with `install`, create the venv and pip install `packages`
    first. Refuses a venv that pulled CUDA packages: the peers are meant to run on the CPU torch wheel."""
    py = venv / "bin" / "python"
    ok = py.exists() and subprocess.run([str(py), "-c", f"import {module}"], capture_output=True).returncode == 0
    if ok or not install:
        return py if ok else None
    subprocess.check_call([sys.executable, "-m", "venv", str(venv)])
    r = subprocess.run([str(py), "-m", "pip", "install", *packages], capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stdout[-4000:], r.stderr[-4000:], sep="\n", file=sys.stderr)
        return None
    listed = subprocess.run([str(py), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True)
    cuda = [p for p in listed.stdout.split() if p.lower().startswith(("nvidia-", "triton", "cuda"))]
    if cuda:
        print(f"{venv} pulled CUDA packages {cuda}: reinstall torch's CPU wheel there", file=sys.stderr)
        return None
    return py


def cpu_kind() -> dict:
    """What decides the speed of bf16 work here: the CPU's bf16 flags and torch's CPU capability."""
    import torch

    from attribution.compute import cpu_flags

    flags = cpu_flags() or set()
    return {
        "bf16_flags": sorted(flags & {"amx_bf16", "avx512_bf16"}),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
    }


def paired(rounds: int, ours, theirs, peer: str, steps: int = PAIR_STEPS) -> list[dict]:
    """Speed only: `rounds` alternating short runs, ours then the peer's; each round's ratio of median steps
    cancels the drift of a shared machine's load."""
    out = []
    for r in range(rounds):
        print(f"[+] paired speed round {r + 1}/{rounds}: {steps} steps each", flush=True)
        mine, other = ours(), theirs()
        out.append({"ours": mine, peer: other, "ratio": mine / other, "load_average": os.getloadavg()})
    return out


def results_file(
    rows: list[dict], pairs: list[dict], source: dict, ids, peer: str, keys=ROW_KEYS, batch=BATCH, **summary
) -> dict:
    """The results file: rows[0] is ours, rows[1] the peer's main run; `summary` adds steps, precision etc.;
    `keys`: each row's figures in the summary; `batch`: tokens an optimiser step."""
    ours, theirs = rows[0], rows[1]
    return {
        "summary": {
            "rows": [{k: r.get(k) for k in keys} for r in rows],
            f"speed_ratio_ours_over_{peer}": ours["tokens_per_s"] / theirs["tokens_per_s"],
            "median_step_speed_ratio": ours["median_step_tokens_per_s"] / theirs["median_step_tokens_per_s"],
            "paired_speed_ratio": sorted(p["ratio"] for p in pairs)[len(pairs) // 2] if pairs else None,
            **summary,
            "batch_size": batch,
            "inputs": source["kind"],
            "threads": ours["threads"],
        },
        "inputs": source,
        "held_out_text_sequences": None if ids is None else len(ids),
        "details": rows,
        "paired_speed": pairs,
        "load_average_at_end": os.getloadavg(),
        "datetime": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def evaluate(both: list, work: Path, source: dict, no_ce: bool):
    """Held-out activation quality for every (sae, row), and CE loss recovered on held-out text where the
    corpus behind the cache is found; returns the text's token ids (or None)."""
    from safetensors.torch import load_file

    held = load_file(str(work / "activations.safetensors"))["eval"]
    for sae, row in both:
        row.update(quality(sae, held))
    ids = None if no_ce or source["kind"] != "real" else held_out_text(source.get("cache"))
    if ids is not None:
        from attribution import load_model
        from attribution.training import evaluate_sae

        model = load_model()
        for sae, row in both:
            ev = evaluate_sae(model, sae, ids, progress=False)
            row["ce_loss_recovered"] = ev["ce_loss_recovered"]
            row["text"] = ev
    return ids


def add_common_arguments(ap, peer: str, pair: int) -> None:
    """The arguments every side-by-side shares after its own: paired speed rounds, and the hidden worker
    flags the peer's venv is started with."""
    import argparse

    ap.add_argument(
        "--paired-rounds",
        type=int,
        default=3,
        help=f"speed only: alternate {pair}-step runs of ours and {peer} this many times, so that a shared "
        "machine's changing load hits both alike (default %(default)s; 0 to skip)",
    )
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tag", default="", help=argparse.SUPPRESS)


def start(ap, args, worker, known: dict) -> list[str] | None:
    """Run the peer's side when this process is its worker (None: done); else set torch's threads and return
    the --variants asked for, checked against `known`."""
    if args.worker:
        worker(Path(args.work), args.steps, args.precision, args.threads, args.variants, args.tag)
        return None
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    variants = [v for v in args.variants.split(",") if v]
    if not variants or set(variants) - set(known):
        ap.error(f"--variants must name some of {list(known)}")
    return variants


def peer_python(args, module: str, package: str) -> Path | None:
    """The peer venv's python (created with --install), or None after saying how to create it."""
    py = ensure_venv(Path(args.venv), args.install, module, [package, "torch==2.13.0"])
    if py is None:
        print(
            f"{package} is not importable from {args.venv}. Create it (outside the project's environment):\n"
            f"  python -m venv {args.venv} && {args.venv}/bin/pip install {package} torch==2.13.0\n"
            "or rerun with --install.",
            file=sys.stderr,
        )
    return py


def write_report(result: dict, file: str, peer: str, pairs: list, theirs: list, loaded: str) -> Path:
    """Write `result` to bench/results/`file` and print its table, the speed ratios and, per peer run, its
    own forward's EV beside ours of its weights (`loaded`: how they came into our SAE class)."""
    import json

    from bench.ratios import side_table

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / file).write_text(json.dumps(result, indent=2) + "\n")
    summ = result["summary"]
    ratio = next(v for k, v in summ.items() if k.startswith("speed_ratio_ours_over_"))
    print()
    print(side_table(summ))
    print(
        f"\nours / {peer} tokens/s: {ratio:.2f} (wall), {summ['median_step_speed_ratio']:.2f} (median step)"
        + ("" if not pairs else f", {summ['paired_speed_ratio']:.2f} (median of {len(pairs)} paired rounds)")
    )
    for _, row in theirs:
        print(
            f"{row['trainer']}: its own forward on the held-out activations gives EV "
            f"{row['own_forward_explained_variance']:.4f}; {loaded}: {row['explained_variance']:.4f}"
        )
    return RESULTS / file
