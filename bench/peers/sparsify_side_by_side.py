"""SAE training side by side: our `attribution.training.fit` and EleutherAI's sparsify `Trainer`, same activations.

    python -m bench.peers.sparsify_side_by_side [--steps 100] [--precision bf16|fp32] [--variants signum,adam] [--no-ce]

The same inputs, batch order, architecture (TopK, d_in 640, d_sae 8,192, k 32), batch (4,096 tokens) and step
count as bench/peers/saelens_side_by_side.py, whose helpers (bench/peers/side_by_side.py) prepare the activations, train
ours with the same TrainConfig (Adam 4e-4, 1% warm-up, linear decay over the last 20%, per-dimension
normalisation, AuxK 1/32) and score both SAEs with the same code.

sparsify's side is its own `sparsify.Trainer`, unmodified: `Trainer.__init__` builds the `SparseCoder` (seed 0)
and its optimizer with its width-scaled learning rate, and `Trainer.fit` runs its whole step: b_dec set to the
first batch's mean, decoder rows renormalised to unit norm before every forward, the loss its `SparseCoder`
forward returns (FVU, plus `auxk_alpha` x AuxK, 0 by default, so no AuxK), the decoder gradient's component
along the rows removed, the optimizer step, dead-latent bookkeeping, and the final checkpoint (schedule-free
optimizers save their averaged weights). Its Trainer takes a language model and token ids, and runs the model
with a forward hook on the chosen blocks; the default model is not loadable by it offline, so it gets a
stand-in: a module whose one block ("layers.0") returns the cached activations that its "token ids" index,
and a dataset whose item i is batch i's 4,096 indices (a batch of one sequence). The hook then sees exactly
our batches, in our order. Nothing of its training is replicated; what we add:
- with --precision bf16 (default, as ours), `Trainer.fit` runs under CPU bfloat16 autocast: its forward
  autocasts only on CUDA ("improves performance by almost 2x"), once per forward; here without autocast's
  weight-cast cache, which over one context around `fit` would freeze the encoder's bf16 copy at step 0 (a
  first run did: EV 0.88 inside fit, -267 for the checkpoint); with fp32 it runs as it would on a CPU;
- the adam variant warms up over 1% of the steps: its default (1,000 steps of 64k tokens) outlasts the run.
Variants: `signum` (its default: SignSGD in a schedule-free wrapper, momentum 0.95, lr 5e-3 / sqrt(d_sae / 2^14),
constant) and `adam` (its torch Adam: lr 2e-4 / sqrt(d_sae / 2^14), linear decay to 0).

Its checkpoint (`sae.safetensors`: encoder.weight [d_sae, d_in], encoder.bias, W_dec [d_sae, d_in], b_dec;
the encoder's input is x - b_dec) is loaded into our `TopKSAE` by the library's sparsify reader
(`attribution.saes.formats.sparsify.from_sparsify`, what `load_sae(folder, hook=...)` uses), and the script asserts
that our encode/decode equals its own forward on the held-out activations to 1e-5 (relative to their scale).
It runs in its own virtualenv (default /tmp/sparsify-venv; `--install` creates it with
`pip install eai-sparsify torch==2.13.0`), never in the project's environment. Writes
bench/results/sparsify.json (the shape of saelens.json) and prints the comparison table.

Measured with eai-sparsify 1.3.3 (installs beside torch 2.13.0+cpu with no CUDA packages; without triton it
decodes with its eager embedding_bag).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

VENV = Path(os.environ.get("SPARSIFY_VENV", "/tmp/sparsify-venv"))
VARIANTS = ("signum", "adam")
TOLERANCE = 1e-5


# --------------------------------------------------------------------------------------------------
# sparsify's side. Runs in its venv: imports nothing from this project but bench/peers/side_by_side.py (stdlib only).
# --------------------------------------------------------------------------------------------------
def worker(work: Path, steps: int, precision: str, threads: int | None, variant: str, tag: str = "") -> None:
    import sparsify
    import torch
    from safetensors.torch import load_file, save_file
    from sparsify import SaeConfig, SparseCoder, TrainConfig, Trainer

    from bench.peers.side_by_side import speed

    if threads:
        torch.set_num_threads(threads)
    data = load_file(str(work / "activations.safetensors"))
    train, order = data["train"], data["order"][:steps]

    class Lookup(torch.nn.Module):
        def forward(self, ids):  # [1, 4096] indices -> [1, 4096, d_in] activations, a block's hidden states
            return train[ids].float()

    class Replay(torch.nn.Module):
        """The language model its Trainer expects, as far as it uses one: blocks, base_model, device,
        dummy_inputs (to size the hook's output) and a forward on token ids."""

        device = torch.device("cpu")
        dummy_inputs = {"input_ids": torch.zeros(1, 1, dtype=torch.long)}  # noqa: RUF012

        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([Lookup()])

        @property
        def base_model(self):
            return self

        def forward(self, input_ids):
            return self.layers[0](input_ids)

    stamps: list[float] = []

    class Batches(torch.utils.data.Dataset):
        def __len__(self):
            return len(order)

        def __getitem__(self, i):  # asked for right before step i, as `timed` notes it for the others
            stamps.append(time.perf_counter())
            return {"input_ids": order[i]}

    cfg = TrainConfig(
        SaeConfig(num_latents=int(data["d_sae"]), k=int(data["k"])),
        batch_size=1,
        optimizer=variant,
        lr_warmup_steps=max(1, steps // 100),  # only adam warms up
        hookpoints=["layers.0"],
        init_seeds=[0],
        save_every=10**9,  # only the final checkpoint
        log_to_wandb=False,
        save_dir=str(work / "sparsify_ckpt"),
        run_name=variant + tag,
    )
    trainer = Trainer(cfg, Batches(), Replay())
    # no cast cache: within one autocast context it would keep step 0's bf16 encoder for the whole run (the
    # forward would never see the updated weights); its CUDA forward re-enters autocast at every call instead
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16", cache_enabled=False)
    t0 = time.perf_counter()
    with bf16:
        trainer.fit()
    seconds = time.perf_counter() - t0
    # its own forward, on the held-out activations, of the weights it saved: the reference for the conversion
    folder = work / "sparsify_ckpt" / (variant + tag) / "layers.0"
    sae = SparseCoder.load_from_disk(folder)
    with torch.no_grad():
        out = sae(data["eval"].float())
    save_file(
        {"sae_out": out.sae_out.contiguous(), "indices": out.latent_indices.contiguous()},
        str(work / f"sparsify_forward_{variant}{tag}.safetensors"),
    )
    result = {
        "trainer": f"sparsify {sparsify.__version__} Trainer, {variant}",
        **speed(seconds, stamps, steps),
        "steps": steps,
        "checkpoint": str(folder),
        "lr": [g.get("initial_lr", g["lr"]) for g in trainer.optimizers[0].param_groups],
        "own_forward_explained_variance": 1 - float(out.fvu),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    (work / f"sparsify_result_{variant}{tag}.json").write_text(json.dumps(result, indent=2))


# --------------------------------------------------------------------------------------------------
# Our side, in the project's environment.
# --------------------------------------------------------------------------------------------------
def conversion_check(sae, x, forward: dict) -> dict:
    """Our encode/decode of the converted weights against sparsify's own forward on the same inputs."""
    import torch

    with torch.no_grad():
        x_hat, f = sae(x.float())
    theirs = forward["sae_out"]
    ours_idx = f.topk(forward["indices"].shape[-1], dim=-1).indices.sort(-1).values
    return {
        "max_abs_error": float((x_hat - theirs).abs().max()),
        "scale": float(theirs.abs().max()),
        "relative_error": float((x_hat - theirs).abs().max() / theirs.abs().max()),
        "tokens_with_other_latents": int((ours_idx != forward["indices"].sort(-1).values).any(-1).sum()),
        "tokens": len(x),
    }


def sparsify_runner(py, script: Path, work: Path, args) -> Callable[..., dict]:
    """run(steps, variant, tag="") -> the result dict of `script`'s worker, run in sparsify's venv (`py`) with
    no hub, no wandb, no triton and none of this project on its path."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONPATH": ""}
    env["SPARSIFY_DISABLE_TRITON"] = "1"  # its eager decoder: the triton one is for CUDA tensors

    def run(steps: int, variant: str, tag: str = "") -> dict:
        cmd = [str(py), str(script.resolve()), "--worker", "--work", str(work), "--steps", str(steps)]
        cmd += ["--precision", args.precision, "--variants", variant, "--tag", tag]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        subprocess.check_call(cmd, env=env, cwd=str(work), stdout=subprocess.DEVNULL)
        return json.loads((work / f"sparsify_result_{variant}{tag}.json").read_text())

    return run


def sparsify_arguments(ap: argparse.ArgumentParser, steps: int, batch: int, work: str, no_ce: str) -> None:
    """The options both sparsify side by sides take (this one and sparsify_transcoder_side_by_side)."""
    ap.add_argument("--steps", type=int, default=steps, help=f"training steps of {batch} tokens (default {steps})")
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="matmul precision, both sides")
    ap.add_argument("--no-ce", action="store_true", help=no_ce)
    ap.add_argument("--venv", default=str(VENV), help="virtualenv with eai-sparsify (default %(default)s)")
    ap.add_argument("--install", action="store_true", help="create the venv and pip install eai-sparsify if missing")
    ap.add_argument("--work", default=work, help="scratch folder (default %(default)s)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads on both sides (default: torch's)")


def main(argv: list[str] | None = None) -> int:
    from bench.peers import side_by_side as common

    steps, batch, pair = common.STEPS, common.BATCH, common.PAIR_STEPS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sparsify_arguments(
        ap, steps, batch, "/tmp/sparsify-side-by-side", "skip CE loss recovered (needs the default model)"
    )
    ap.add_argument(
        "--variants",
        default="signum,adam",
        help="sparsify optimizers, its own lr for each: 'signum' (its default) and/or 'adam' (default %(default)s)",
    )
    common.add_common_arguments(ap, "sparsify", pair)
    args = ap.parse_args(argv)
    work = Path(args.work)
    variants = common.start(ap, args, worker, VARIANTS)
    if variants is None:
        return 0
    py = common.peer_python(args, "sparsify", "eai-sparsify")
    if py is None:
        return 2

    from safetensors.torch import load_file

    from attribution.saes import save_sae
    from attribution.saes.formats.sparsify import from_sparsify
    from bench.data import HOOK

    cpu = common.cpu_kind()
    print(f"load average {os.getloadavg()}; CPU {cpu} (timings are only as good as the machine is idle)")
    print(f"[1/4] dumping activations to {work}", flush=True)
    source = common.prepare(work, args.steps)
    print(f"      {source}", flush=True)
    print(f"[2/4] training ours for {args.steps} steps ({args.precision})", flush=True)
    ours, ours_row = common.train_ours(work, args.steps, args.precision)
    save_sae(ours, work / "ours_sae")
    ours_row["load_average_after"] = os.getloadavg()
    print(f"      {ours_row['tokens_per_s']:,.0f} tokens/s, load {ours_row['load_average_after']}", flush=True)
    run_sparsify = sparsify_runner(py, Path(__file__), work, args)

    held = load_file(str(work / "activations.safetensors"))["eval"]
    theirs = []
    for variant in variants:
        print(f"[3/4] training sparsify ({variant}) for {args.steps} steps in {py} ({args.precision})", flush=True)
        row = run_sparsify(args.steps, variant)
        row["load_average_after"] = os.getloadavg()
        print(f"      {row['tokens_per_s']:,.0f} tokens/s, load {row['load_average_after']}", flush=True)
        sae = from_sparsify(Path(row["checkpoint"]), HOOK)
        check = conversion_check(sae, held, load_file(str(work / f"sparsify_forward_{variant}.safetensors")))
        row["conversion"] = check
        print(f"      conversion: our encode/decode vs its forward {check}", flush=True)
        assert check["relative_error"] < TOLERANCE, f"conversion of sparsify's SAE is off: {check}"
        theirs.append((sae, row))

    print("[4/4] evaluating both on held-out activations" + ("" if args.no_ce else " and text"), flush=True)
    both = [(ours, ours_row), *theirs]
    ids = common.evaluate(both, work, source, args.no_ce)
    pairs = common.paired(
        args.paired_rounds,
        lambda: common.train_ours(work, pair, args.precision, progress=False)[1]["median_step_tokens_per_s"],
        lambda: run_sparsify(pair, variants[0], tag="_paired")["median_step_tokens_per_s"],
        "sparsify",
    )
    rows = [row for _, row in both]
    summary = {"steps": args.steps, "precision": args.precision, "cpu": cpu}
    result = common.results_file(rows, pairs, source, ids, "sparsify", **summary)
    path = common.write_report(
        result, "sparsify.json", f"sparsify ({variants[0]})", pairs, theirs, "converted to our TopKSAE"
    )
    print(f"CPU: {cpu}; wrote {path}")
    return 0


if __name__ == "__main__":
    if "--worker" in sys.argv:  # run as a file in sparsify's venv: keep bench/'s modules off its path,
        sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
        sys.path.append(str(Path(__file__).resolve().parents[2]))  # but bench.peers.side_by_side importable
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main())
