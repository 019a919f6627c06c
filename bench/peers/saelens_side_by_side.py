"""SAE training side by side: our `attribution.training.fit` and SAELens's `SAETrainer`, same activations.

    python -m bench.peers.saelens_side_by_side [--steps 100] [--precision bf16|fp32] [--normalize dim|scalar] [--no-ce]

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

VENV = Path(os.environ.get("SAELENS_VENV", "/tmp/saelens-venv"))
VARIANTS = {"default": "", "mean_init": ", b_dec = data mean at start"}


# --------------------------------------------------------------------------------------------------
# The SAELens side. Runs in the SAELens venv: imports nothing from this project but bench/peers/side_by_side.py
# (standard library only).
# --------------------------------------------------------------------------------------------------
def worker(work: Path, steps: int, precision: str, threads: int | None, variant: str, tag: str = "") -> None:
    import sae_lens
    import torch

    from bench.peers.side_by_side import BATCH, DEAD_AFTER_TOKENS, LR, speed, timed

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
def main(argv: list[str] | None = None) -> int:
    from bench.peers.side_by_side import (
        BATCH,
        PAIR_STEPS,
        RESULTS,
        STEPS,
        add_common_arguments,
        evaluate,
        paired,
        peer_python,
        prepare,
        results_file,
        start,
        train_ours,
        write_report,
    )

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
    add_common_arguments(ap, "SAELens", PAIR_STEPS)
    args = ap.parse_args(argv)
    work = Path(args.work)
    variants = start(ap, args, worker, VARIANTS)
    if variants is None:
        return 0
    py = peer_python(args, "sae_lens", "sae-lens")
    if py is None:
        return 2

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
    both = [(ours, ours_row), *theirs]
    ids = evaluate(both, work, source, args.no_ce)
    pairs = paired(
        args.paired_rounds,
        lambda: train_ours(work, PAIR_STEPS, args.precision, progress=False, normalize=args.normalize)[1][
            "median_step_tokens_per_s"
        ],
        lambda: run_saelens(PAIR_STEPS, "default", tag="_paired")["median_step_tokens_per_s"],
        "saelens",
    )
    rows = [row for _, row in both]
    result = results_file(rows, pairs, source, ids, "saelens", steps=args.steps, precision=args.precision)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = write_report(result, "saelens.json", "SAELens", pairs, theirs, "reloaded with our load_sae")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    if "--worker" in sys.argv:  # run as a file in the SAELens venv: keep bench/'s modules off its path,
        sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
        sys.path.append(str(Path(__file__).resolve().parents[2]))  # but bench.peers.side_by_side importable
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main())
