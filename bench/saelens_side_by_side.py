"""SAE training side by side: our `attribution.training.fit` and SAELens's `SAETrainer`, same activations.

    python -m bench.saelens_side_by_side [--steps 100] [--precision bf16|fp32] [--normalize dim|scalar] [--no-ce]

The same architecture (TopK, d_in 640, d_sae 8,192, k 32), the same batches in the same order (batch 4,096),
the same step count, learning rate (4e-4, Adam 0.9/0.999), schedule (1% warm-up, linear decay to zero over
the last 20%), precision (bfloat16 autocast by default), centred encoder input (apply_b_dec_to_input) and
dead-feature window (10^6 tokens). Input normalisation: SAELens's scalar one ("expected_average_only_in");
ours as --normalize says, by default per dimension as the default SAEs train ("scalar" matches SAELens).
Everything else is each library's own recipe:
ours keeps decoder rows at unit norm and uses AuxK 1/32 over 256 dead features; SAELens rescales by
decoder norms, clips gradients at 1.0 and uses AuxK 1.0 over d_in/2 features (its TopK defaults).

SAELens is driven through its public model-free trainer, `sae_lens.SAETrainer(cfg, sae, data_provider)`,
with a `TopKTrainingSAE` and an iterator of activation batches (the `LanguageModelSAETrainingRunner` would
need a TransformerLens model, which the default model is not). It runs in its own virtualenv (default
/tmp/saelens-venv; `--install` creates it with `pip install sae-lens torch==2.13.0`), never in the
project's environment: sae-lens pulls transformer-lens and pins of its own.

Steps:
1. inputs: the default model's cached layer-9 activations (`train_sae`'s cache; the last 8,192 tokens are
   held out, never trained on), else synthetic ones; dumped with the batch order to one .safetensors file;
2. ours: `fit` for --steps steps, timed (tokens/s = steps x 4,096 / wall time of the call);
3. SAELens, in a subprocess of its venv: `SAETrainer.fit()` for the same steps, timed the same way; the
   trained SAE is saved with `save_inference_model` (its format) and loaded back here with our `load_sae`;
4. both SAEs are evaluated by the same code: explained variance, MSE, L0 and dead fraction on the held-out
   activations, and (when the corpus that produced the cache is found) CE loss recovered on its held-out
   text with `evaluate_sae`;
5. speed again, paired: --paired-rounds rounds of 12 steps each, ours then SAELens, the ratio of their
   median step times per round (a shared machine's load drifts over a 10-minute run; pairs cancel it);
6. writes bench/results/saelens.json and prints the comparison table.

Measured with sae-lens 6.54.12 (installs cleanly from PyPI beside torch 2.13.0+cpu).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

STEPS, BATCH, LR = 100, 4096, 4e-4
PAIR_STEPS = 12
DEAD_AFTER_TOKENS = 1_000_000
N_EVAL = 8192
VENV = Path(os.environ.get("SAELENS_VENV", "/tmp/saelens-venv"))
RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = {"default": "", "mean_init": ", b_dec = data mean at start"}


def timed(batches, stamps: list[float]):
    """Yield from `batches`, noting when each is asked for: the gaps are step times (robust to a busy
    machine through their median, where the wall time of the whole run is not)."""
    for b in batches:
        stamps.append(time.perf_counter())
        yield b


def speed(seconds: float, stamps: list[float], steps: int) -> dict:
    gaps = sorted(b - a for a, b in itertools.pairwise(stamps[1:]))  # the first gap holds initialisation
    median = gaps[len(gaps) // 2] if gaps else seconds / steps
    return {
        "seconds": seconds,
        "tokens_per_s": steps * BATCH / seconds,
        "median_step_s": median,
        "median_step_tokens_per_s": BATCH / median,
    }


# --------------------------------------------------------------------------------------------------
# The SAELens side. Runs in the SAELens venv: imports nothing from this project.
# --------------------------------------------------------------------------------------------------
def worker(work: Path, steps: int, precision: str, threads: int | None, variant: str, tag: str = "") -> None:
    import sae_lens
    import torch

    if threads:
        torch.set_num_threads(threads)
    from sae_lens import LoggingConfig, SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from safetensors.torch import load_file

    data = load_file(str(work / "activations.safetensors"))
    train, order = data["train"], data["order"][:steps]
    torch.manual_seed(0)
    sae = TopKTrainingSAE(
        TopKTrainingSAEConfig(
            d_in=train.shape[1],
            d_sae=int(data["d_sae"]),
            k=int(data["k"]),
            apply_b_dec_to_input=True,
            normalize_activations="expected_average_only_in",
            dtype="float32",
            device="cpu",
        )
    )
    cfg = SAETrainerConfig(
        total_training_samples=steps * BATCH,
        train_batch_size_samples=BATCH,
        lr=LR,
        lr_end=LR,  # the "constant" scheduler then decays linearly from lr to 0 over lr_decay_steps
        lr_scheduler_name="constant",
        lr_warm_up_steps=max(1, int(0.01 * steps)),
        lr_decay_steps=int(0.2 * steps),
        adam_beta1=0.9,
        adam_beta2=0.999,
        device="cpu",
        autocast=precision == "bf16",
        dead_feature_window=math.ceil(DEAD_AFTER_TOKENS / BATCH),
        feature_sampling_window=steps + 1,  # its window statistics only feed wandb, which is off
        n_batches_for_norm_estimate=1,  # ours estimates the scale from the first batch too
        logger=LoggingConfig(log_to_wandb=False),
    )

    def batches():
        for idx in order:
            yield train[idx].float()

    # the scale estimate reads one batch from the provider: give it the first batch, then the same stream
    stamps: list[float] = []
    first = train[order[0]].float()
    provider = itertools.chain([first], timed(batches(), stamps))
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=provider)
    t0 = time.perf_counter()
    if variant == "mean_init":
        # as ours does: b_dec starts at the mean of the first batch (in the scaled space the SAE sees);
        # estimating the scale here makes fit() skip its own estimate, which would read the same batch
        trainer.activation_scaler.estimate_scaling_factor(sae.cfg.d_in, provider, 1)
        with torch.no_grad():
            sae.b_dec.copy_(first.mean(0) * trainer.activation_scaler.scaling_factor)
    trained = trainer.fit()
    seconds = time.perf_counter() - t0
    trained.save_inference_model(str(work / f"saelens_sae_{variant}{tag}"))
    # its own forward on the held-out activations, to cross-check the reload into our SAE class
    x = data["eval"].float()
    trained.eval()
    with torch.no_grad():
        x_hat = trained(x)
    ev = 1 - float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    out = {
        "trainer": f"SAELens {sae_lens.__version__} SAETrainer" + VARIANTS[variant],
        **speed(seconds, stamps, steps),
        "steps": steps,
        "own_forward_explained_variance": ev,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    (work / f"saelens_result_{variant}{tag}.json").write_text(json.dumps(out, indent=2))


# --------------------------------------------------------------------------------------------------
# Our side, in the project's environment.
# --------------------------------------------------------------------------------------------------
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


def ensure_venv(venv: Path, install: bool) -> Path | None:
    py = venv / "bin" / "python"
    ok = py.exists() and subprocess.run([str(py), "-c", "import sae_lens"], capture_output=True).returncode == 0
    if ok or not install:
        return py if ok else None
    subprocess.check_call([sys.executable, "-m", "venv", str(venv)])
    r = subprocess.run([str(py), "-m", "pip", "install", "sae-lens", "torch==2.13.0"], capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stdout[-4000:], r.stderr[-4000:], sep="\n", file=sys.stderr)
        return None
    return py


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=STEPS, help=f"training steps of {BATCH} tokens (default {STEPS})")
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="matmul precision, both sides")
    ap.add_argument(
        "--normalize",
        choices=["dim", "scalar"],
        default="dim",
        help="our input normalisation: per dimension, as the default SAEs (default), or scalar, as SAELens's",
    )
    ap.add_argument("--no-ce", action="store_true", help="skip CE loss recovered (needs the default model)")
    ap.add_argument("--venv", default=str(VENV), help="virtualenv with sae-lens (default %(default)s)")
    ap.add_argument("--install", action="store_true", help="create the venv and pip install sae-lens if missing")
    ap.add_argument("--work", default="/tmp/saelens-side-by-side", help="scratch folder for activations/SAEs")
    ap.add_argument("--threads", type=int, default=None, help="torch threads on both sides (default: torch's)")
    ap.add_argument(
        "--variants",
        default="default,mean_init",
        help="SAELens runs: 'default' (its own init, b_dec = 0) and/or 'mean_init' (b_dec set to the data mean "
        "before training, as ours does); comma-separated (default %(default)s)",
    )
    ap.add_argument(
        "--paired-rounds",
        type=int,
        default=3,
        help=f"speed only: alternate {PAIR_STEPS}-step runs of ours and SAELens this many times, so that a "
        "shared machine's changing load hits both alike (default %(default)s; 0 to skip)",
    )
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tag", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    work = Path(args.work)
    if args.worker:
        worker(work, args.steps, args.precision, args.threads, args.variants, args.tag)
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    variants = [v for v in args.variants.split(",") if v]
    if not variants or set(variants) - set(VARIANTS):
        ap.error(f"--variants must name some of {list(VARIANTS)}")
    py = ensure_venv(Path(args.venv), args.install)
    if py is None:
        print(
            f"SAELens is not importable from {args.venv}. Create it (outside the project's environment):\n"
            f"  python -m venv {args.venv} && {args.venv}/bin/pip install sae-lens torch==2.13.0\n"
            "or rerun with --install.",
            file=sys.stderr,
        )
        return 2

    from safetensors.torch import load_file

    from attribution.saes import load_sae, save_sae
    from bench.data import HOOK

    print(f"load average {os.getloadavg()} (2 cores: timings are only as good as the machine is idle)")
    print(f"[1/4] dumping activations to {work}", flush=True)
    source = prepare(work, args.steps)
    print(f"      {source}", flush=True)
    print(f"[2/4] training ours for {args.steps} steps ({args.precision})", flush=True)
    ours, ours_row = train_ours(work, args.steps, args.precision, normalize=args.normalize)
    save_sae(ours, work / "ours_sae")
    ours_row["load_average_after"] = os.getloadavg()
    print(f"      {ours_row['tokens_per_s']:,.0f} tokens/s, load {ours_row['load_average_after']}", flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONPATH": ""}
    theirs = []

    def run_saelens(steps: int, variant: str, tag: str = "") -> dict:
        cmd = [str(py), str(Path(__file__).resolve()), "--worker", "--work", str(work), "--steps", str(steps)]
        cmd += ["--precision", args.precision, "--variants", variant, "--tag", tag]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        subprocess.check_call(cmd, env=env, cwd=str(work))
        return json.loads((work / f"saelens_result_{variant}{tag}.json").read_text())

    for variant in variants:
        print(f"[3/4] training SAELens ({variant}) for {args.steps} steps in {py} ({args.precision})", flush=True)
        row = run_saelens(args.steps, variant)
        row["load_average_after"] = os.getloadavg()
        print(f"      {row['tokens_per_s']:,.0f} tokens/s, load {row['load_average_after']}", flush=True)
        theirs.append((load_sae(work / f"saelens_sae_{variant}", hook=HOOK), row))

    print("[4/4] evaluating both on held-out activations" + ("" if args.no_ce else " and text"), flush=True)
    held = load_file(str(work / "activations.safetensors"))["eval"]
    both = [(ours, ours_row), *theirs]
    for sae, row in both:
        row.update(quality(sae, held))
    ids = None if args.no_ce or source["kind"] != "real" else held_out_text(source.get("cache"))
    if ids is not None:
        from attribution import load_model
        from attribution.training import evaluate_sae

        model = load_model()
        for sae, row in both:
            ev = evaluate_sae(model, sae, ids, progress=False)
            row["ce_loss_recovered"] = ev["ce_loss_recovered"]
            row["text"] = ev
    rows = [row for _, row in both]
    theirs_row = theirs[0][1]
    paired = []
    for r in range(args.paired_rounds):
        print(f"[+] paired speed round {r + 1}/{args.paired_rounds}: {PAIR_STEPS} steps each", flush=True)
        mine = train_ours(work, PAIR_STEPS, args.precision, progress=False, normalize=args.normalize)[1][
            "median_step_tokens_per_s"
        ]
        other = run_saelens(PAIR_STEPS, "default", tag="_paired")["median_step_tokens_per_s"]
        paired.append({"ours": mine, "saelens": other, "ratio": mine / other, "load_average": os.getloadavg()})
    result = {
        "summary": {
            "rows": [
                {
                    k: r.get(k)
                    for k in (
                        "trainer",
                        "tokens_per_s",
                        "median_step_tokens_per_s",
                        "explained_variance",
                        "mse",
                        "l0",
                        "dead_fraction",
                        "ce_loss_recovered",
                    )
                }
                for r in rows
            ],
            "speed_ratio_ours_over_saelens": ours_row["tokens_per_s"] / theirs_row["tokens_per_s"],
            "median_step_speed_ratio": ours_row["median_step_tokens_per_s"] / theirs_row["median_step_tokens_per_s"],
            "paired_speed_ratio": sorted(p["ratio"] for p in paired)[len(paired) // 2] if paired else None,
            "steps": args.steps,
            "batch_size": BATCH,
            "precision": args.precision,
            "inputs": source["kind"],
            "threads": ours_row["threads"],
        },
        "inputs": source,
        "held_out_text_sequences": None if ids is None else len(ids),
        "details": rows,
        "paired_speed": paired,
        "load_average_at_end": os.getloadavg(),
        "datetime": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "saelens.json").write_text(json.dumps(result, indent=2) + "\n")

    from bench.report import side_table

    print()
    print(side_table(result["summary"]))
    summ = result["summary"]
    print(
        f"\nours / SAELens tokens/s: {summ['speed_ratio_ours_over_saelens']:.2f} (wall), "
        f"{summ['median_step_speed_ratio']:.2f} (median step)"
        + ("" if not paired else f", {summ['paired_speed_ratio']:.2f} (median of {len(paired)} paired rounds)")
    )
    for _, row in theirs:
        print(
            f"{row['trainer']}: its own forward on the held-out activations gives EV "
            f"{row['own_forward_explained_variance']:.4f}; reloaded with our load_sae: {row['explained_variance']:.4f}"
        )
    print(f"wrote {RESULTS / 'saelens.json'}")
    return 0


if __name__ == "__main__":
    if "--worker" in sys.argv:  # run as a file in the SAELens venv: keep bench/'s modules off its path
        sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
