"""Transcoder training side by side: our default transcoder recipe and EleutherAI's sparsify `Trainer` in its
transcoder mode, on the same input/output pairs in the same order.

    python -m bench.peers.sparsify_transcoder_side_by_side [--steps 400] [--variants skip,noskip] [--no-ce]

The pairs: the default stream's kept tokens (not <bos>, not massive-norm) of `resid_mid.9` -> `mlp_out.9` on the
default corpus's training text (studies.transcoder_recipe.collect), the first steps x 1,024 of them for training
(one epoch, in one seeded random order that both sides follow batch by batch) and the next 8,192 held out for the
conversion check. The default (400 steps of 1,024 tokens) is the SAE side by side's 409,600 tokens.

Ours: the default transcoder recipe of layer 9 (attribution.training.transcoder_defaults.TranscoderSpec(9):
TopK 4,096 features, k 32, per-dimension normalisation, schedule-free sign-SGD lr 1e-2, 1,024 tokens a step), its
skip path W_skip the least-squares map fitted first on the first 131,072 pairs (skip_stats / solve_skip, timed as
part of our run) and kept fixed while `Fitter` trains the features on what it leaves.

sparsify's side is its own `Trainer`, unmodified, with `SparseCoderConfig(transcode=True, skip_connection=...)`
and its default optimiser (signum: SignSGD in a schedule-free wrapper, momentum 0.95, lr 5e-3 / sqrt(d_sae / 2^14)
= 1e-2 at 4,096 features, constant). In transcode mode its forward hook takes the hooked module's input and
reconstructs the module's output; it initialises the decoder at zero, the encoder at nn.Linear's random init with
its bias centring the first batch's inputs, b_dec at the first batch's mean output, and (variant `skip`) W_skip at
zero, trained jointly with the rest by the same optimiser; it does not renormalise a transcoder's decoder rows;
its loss is the FVU of the output (no AuxK by default). Its Trainer takes a language model and token ids, so it gets
a stand-in whose one block ("layers.0") is called with the pair's input (`resid_mid.9`) and returns its output
(`mlp_out.9`), for the pairs that the batch's "token ids" index: its hook sees exactly our batches, in our order.
As in the SAE side by side, --precision bf16 (default, as ours) runs its `fit` under CPU bf16 autocast without
the cast cache. Variants: `skip` (its skip connection on: the closest to ours), `noskip`, and `skip-std`, a
diagnostic: `skip` on pairs standardised per dimension as ours are ((x - mean) / std in and out, the statistics of
the first 131,072 pairs, computed outside its timing; folded back into the converted weights for evaluation).

Its checkpoint (encoder.weight, encoder.bias, W_dec, b_dec, W_skip [d_out, d_in]) is converted into our TopKSAE
transcoder by attribution.saes.formats.sparsify.from_sparsify(folder, hook, target=), and the script asserts that
our forward equals its own on the held-out pairs to 1e-5 relative. Both are then evaluated by the same code,
attribution.training.evaluate.evaluate_sae on held-out documents (96 windows as studies.transcoder_recipe): EV of
the MLP output, features on rest (what the features explain of what the skip leaves, centred; against each
transcoder's own skip), CE loss recovered (its output in place of the MLP's), L0, dead fraction. Speed: tokens/s of
each whole run and paired short rounds, as bench/peers/sparsify_side_by_side.py. Writes
bench/results/sparsify_transcoder.json and prints the table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

VARIANTS = {"skip": (True, False), "noskip": (False, False), "skip-std": (True, True)}  # skip_connection, standardised
LAYER, BATCH, STEPS, PAIR_STEPS = 9, 1024, 400, 48  # 400 x 1,024 = 100 x 4,096 (the SAE run); 48 x 1,024 = 12 x 4,096
N_EVAL, EVAL_WINDOWS = 8192, 96
TOLERANCE = 1e-5
KEYS = ("trainer", "tokens_per_s", "median_step_tokens_per_s", "explained_variance", "features_on_rest")
KEYS += ("ce_loss_recovered", "l0", "dead_fraction", "pairs_explained_variance")


# --------------------------------------------------------------------------------------------------
# sparsify's side. Runs in its venv: imports nothing from this project but bench/peers/side_by_side.py (stdlib only).
# --------------------------------------------------------------------------------------------------
def step_quantiles(stamps: list[float]) -> list[float]:
    """10%, 50%, 90% and the largest step time (the first gap, which holds initialisation, left out)."""
    gaps = sorted(b - a for a, b in itertools.pairwise(stamps[1:]))
    return [gaps[int(q * (len(gaps) - 1))] for q in (0.1, 0.5, 0.9, 1.0)] if gaps else []


def worker(work: Path, steps: int, precision: str, threads: int | None, variant: str, tag: str = "") -> None:
    import sparsify
    import torch
    from safetensors.torch import load_file, save_file
    from sparsify import SparseCoder, SparseCoderConfig, TrainConfig, Trainer

    from bench.peers.side_by_side import speed

    if threads:
        torch.set_num_threads(threads)
    data = load_file(str(work / "pairs.safetensors"))
    x, y, order = data["x"], data["y"], data["order"][:steps]
    skip, standardise = VARIANTS[variant]
    n = min(len(x), 131_072)  # the diagnostic's per-dimension statistics: the pairs our skip path is fitted on
    mx, sx, my, sy = (0.0, 1.0, 0.0, 1.0) if not standardise else (*_moments(x[:n]), *_moments(y[:n]))

    class Block(torch.nn.Module):
        def forward(self, hidden, ids):  # called with the input, returns the output: what its hook reads
            return (y[ids].float() - my) / sy if standardise else y[ids].float()

    class Replay(torch.nn.Module):
        """The language model its Trainer expects, as far as it uses one: blocks, base_model, device,
        dummy_inputs (to size the hook's output) and a forward on token ids."""

        device = torch.device("cpu")
        dummy_inputs = {"input_ids": torch.zeros(1, 1, dtype=torch.long)}  # noqa: RUF012

        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([Block()])

        @property
        def base_model(self):
            return self

        def forward(self, input_ids):  # [1, 1024] pair indices
            inputs = (x[input_ids].float() - mx) / sx if standardise else x[input_ids].float()
            return self.layers[0](inputs, input_ids)

    stamps: list[float] = []

    class Batches(torch.utils.data.Dataset):
        def __len__(self):
            return len(order)

        def __getitem__(self, i):  # asked for right before step i
            stamps.append(time.perf_counter())
            return {"input_ids": order[i]}

    coder = SparseCoderConfig(num_latents=int(data["d_sae"]), k=int(data["k"]), transcode=True, skip_connection=skip)
    cfg = TrainConfig(
        coder,
        batch_size=1,
        optimizer="signum",
        hookpoints=["layers.0"],
        init_seeds=[0],
        save_every=10**9,  # only the final checkpoint
        log_to_wandb=False,
        save_dir=str(work / "sparsify_ckpt"),
        run_name=variant + tag,
    )
    trainer = Trainer(cfg, Batches(), Replay())
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16", cache_enabled=False)
    t0 = time.perf_counter()
    with bf16:
        trainer.fit()
    seconds = time.perf_counter() - t0
    folder = work / "sparsify_ckpt" / (variant + tag) / "layers.0"
    sae = SparseCoder.load_from_disk(folder)
    with torch.no_grad():
        out = sae((data["eval_x"].float() - mx) / sx, (data["eval_y"].float() - my) / sy)
    scales = {
        k: torch.as_tensor(v).float().expand(x.shape[1]).contiguous()
        for k, v in zip("mx sx my sy".split(), (mx, sx, my, sy), strict=True)
    }
    save_file(
        {"sae_out": out.sae_out.contiguous(), "indices": out.latent_indices.contiguous(), **scales},
        str(work / f"sparsify_forward_{variant}{tag}.safetensors"),
    )
    name = ("skip connection" if skip else "no skip") + (", pairs standardised per dimension" if standardise else "")
    result = {
        "trainer": f"sparsify {sparsify.__version__} Trainer, transcode, signum, {name}",
        **speed(seconds, stamps, steps, BATCH),
        "step_s_quantiles": step_quantiles(stamps),
        "steps": steps,
        "checkpoint": str(folder),
        "lr": [g.get("initial_lr", g["lr"]) for g in trainer.optimizers[0].param_groups],
        "own_forward_explained_variance": 1 - float(out.fvu),  # of the standardised output for skip-std
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    (work / f"sparsify_result_{variant}{tag}.json").write_text(json.dumps(result, indent=2))


def _moments(t):
    """Per-dimension mean and standard deviation of t [n, d] (a diagnostic's standardisation, as ours)."""
    t = t.float()
    return t.mean(0), t.std(0).clamp_min(1e-6)


# --------------------------------------------------------------------------------------------------
# Our side, in the project's environment.
# --------------------------------------------------------------------------------------------------
def prepare(model, work: Path, steps: int) -> dict:
    """Collect (or reuse) the pairs and the batch order; returns a description of the inputs."""
    import torch
    from safetensors.torch import load_file, save_file

    from attribution.training import defaults
    from studies.transcoder_recipe import collect

    path, n_train = work / "pairs.safetensors", steps * BATCH
    source = {"kind": "real", "reads": f"resid_mid.{LAYER}", "writes": f"mlp_out.{LAYER}", "corpus": defaults.CORPUS}
    if path.is_file() and len(load_file(str(path))["order"]) == steps:
        return {**source, "train_tokens": n_train, "held_out_tokens": N_EVAL, "reused": str(path)}
    windows, _ = defaults.default_corpus(model, int((n_train + N_EVAL) * 1.05) + 8192, progress=True)
    acts = collect(model, LAYER, windows)
    x, y = acts[f"resid_mid.{LAYER}"], acts[f"mlp_out.{LAYER}"]
    if len(x) < n_train + N_EVAL:
        raise SystemExit(f"collected {len(x)} pairs, fewer than the {n_train + N_EVAL} asked for")
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(0)).view(steps, BATCH)
    work.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "x": x[:n_train].contiguous(),
            "y": y[:n_train].contiguous(),
            "eval_x": x[n_train : n_train + N_EVAL].contiguous(),
            "eval_y": y[n_train : n_train + N_EVAL].contiguous(),
            "order": order,
            "d_sae": torch.tensor(4096),
            "k": torch.tensor(32),
        },
        str(path),
    )
    return {**source, "train_tokens": n_train, "held_out_tokens": N_EVAL, "windows": len(windows)}


def train_ours(work: Path, steps: int, precision: str):
    import dataclasses

    import torch
    from safetensors.torch import load_file

    from attribution.saes import build
    from attribution.training.trainer import Fitter
    from attribution.training.transcoder_defaults import SKIP_TOKENS, TranscoderSpec, skip_stats, solve_skip
    from bench.peers.side_by_side import speed

    data = load_file(str(work / "pairs.safetensors"))
    x, y, order = data["x"], data["y"], data["order"][:steps]
    spec = TranscoderSpec(layer=LAYER)
    dtype = "bfloat16" if precision == "bf16" else "float32"
    cfg = dataclasses.replace(spec.train_config(), steps=steps, dtype=dtype, progress=False)
    tc = build("topk", x.shape[1], spec.d_sae, spec.hook, k=spec.k, target=spec.target, skip=spec.skip)
    assert (cfg.batch_size, spec.d_sae, spec.k) == (BATCH, int(data["d_sae"]), int(data["k"]))
    t0 = time.perf_counter()
    with torch.no_grad():  # the least-squares skip path on the first pairs in stream order, as the default build
        tc.W_skip.copy_(solve_skip(*skip_stats(x[:SKIP_TOKENS].float(), y[:SKIP_TOKENS].float())))
    skip_s = time.perf_counter() - t0
    fitter, stamps = Fitter(tc, cfg), []
    for idx in order:
        stamps.append(time.perf_counter())
        fitter.step(x[idx], y[idx])
    fitter.finish()
    seconds = time.perf_counter() - t0
    return tc, {
        "trainer": "ours: default transcoder recipe (least-squares skip, sign-SGD sf)",
        **speed(seconds, stamps, steps, BATCH),
        "step_s_quantiles": step_quantiles(stamps),
        "skip_fit_s": skip_s,
        "steps": steps,
        "threads": torch.get_num_threads(),
    }


def pairs_quality(tc, x, y) -> dict:
    import torch

    with torch.no_grad():
        y_hat, f = tc(x.float())
        y = y.float()
        return {
            "pairs_explained_variance": 1 - float((y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum()),
            "pairs_l0": float((f != 0).float().sum(-1).mean()),
        }


def unstandardise(tc, mx, sx, my, sy) -> None:
    """Fold the diagnostic's per-dimension standardisation ((x - mx) / sx in, (y - my) / sy out) into the
    converted transcoder, which then maps model-space inputs to model-space outputs."""
    import torch

    with torch.no_grad():
        shift = mx / sx
        tc.b_enc.sub_(shift @ tc.W_enc)
        tc.W_enc.div_(sx[:, None])
        if tc.W_skip is not None:
            tc.b_dec.sub_(shift @ tc.W_skip)
            tc.W_skip.mul_(sy[None, :] / sx[:, None])
        tc.b_dec.mul_(sy).add_(my)
        tc.W_dec.mul_(sy[None, :])


def conversion_check(tc, x, forward: dict) -> dict:
    """Our forward of the converted weights against sparsify's own forward on the same inputs."""
    import torch

    with torch.no_grad():
        y_hat, f = tc(x.float())
    theirs = forward["sae_out"]
    ours_idx = f.topk(forward["indices"].shape[-1], dim=-1).indices.sort(-1).values
    same = (ours_idx == forward["indices"].sort(-1).values).all(-1)  # a near-tie in the top k may flip a token
    err = (y_hat - theirs).abs()
    return {
        "max_abs_error": float(err[same].max()),
        "scale": float(theirs.abs().max()),
        "relative_error": float(err[same].max() / theirs.abs().max()),  # on the tokens with the same latents
        "relative_error_all_tokens": float(err.max() / theirs.abs().max()),
        "tokens_with_other_latents": int((~same).sum()),
        "tokens": len(x),
    }


def table(summary: dict) -> str:
    def f(v, spec):
        return "n/a" if v is None else format(v, spec)

    cols = ["trainer", "tokens/s (wall)", "tokens/s (median step)", "EV (MLP out)", "features on rest", "CE rec."]
    lines = ["| " + " | ".join([*cols, "L0", "dead"]) + " |", "|---" * 8 + "|"]
    for r in summary["rows"]:
        lines.append(
            f"| {r['trainer']} | {r['tokens_per_s']:,.0f} | {r['median_step_tokens_per_s']:,.0f} | "
            f"{f(r['explained_variance'], '.3f')} | {f(r['features_on_rest'], '.3f')} | "
            f"{f(r['ce_loss_recovered'], '.3f')} | {f(r['l0'], '.1f')} | {f(r['dead_fraction'], '.1%')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench.peers import side_by_side as common
    from bench.peers.sparsify_side_by_side import sparsify_arguments, sparsify_runner

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    no_ce = "evaluate on the held-out pairs only (no model runs)"
    sparsify_arguments(ap, STEPS, BATCH, "/tmp/sparsify-transcoder-side-by-side", no_ce)
    ap.add_argument("--variants", default="skip,noskip", help="sparsify runs: skip and/or noskip (%(default)s)")
    ap.add_argument("--out", default="sparsify_transcoder.json", help="file name under bench/results/")
    common.add_common_arguments(ap, "sparsify", PAIR_STEPS)
    args = ap.parse_args(argv)
    work = Path(args.work)
    variants = common.start(ap, args, worker, VARIANTS)
    if variants is None:
        return 0
    py = common.peer_python(args, "sparsify", "eai-sparsify")
    if py is None:
        return 2

    from safetensors.torch import load_file

    from attribution import load_model
    from attribution.saes import save_sae
    from attribution.saes.formats.sparsify import from_sparsify
    from attribution.training import defaults
    from attribution.training.corpus import real_tokens
    from attribution.training.evaluate import evaluate_sae

    cpu = common.cpu_kind()
    print(f"load average {os.getloadavg()}; CPU {cpu} (timings are only as good as the machine is idle)")
    model = load_model()
    print(f"[1/4] collecting resid_mid.{LAYER} -> mlp_out.{LAYER} pairs to {work}", flush=True)
    source = prepare(model, work, args.steps)
    print(f"      {source}", flush=True)
    print(f"[2/4] training ours for {args.steps} steps of {BATCH} ({args.precision})", flush=True)
    ours, ours_row = train_ours(work, args.steps, args.precision)
    save_sae(ours, work / "ours_tc")
    ours_row["load_average_after"] = os.getloadavg()
    print(f"      {ours_row['tokens_per_s']:,.0f} tokens/s, load {ours_row['load_average_after']}", flush=True)
    run_sparsify = sparsify_runner(py, Path(__file__), work, args)

    data = load_file(str(work / "pairs.safetensors"))
    theirs = []
    for variant in variants:
        print(f"[3/4] training sparsify ({variant}) for {args.steps} steps in {py} ({args.precision})", flush=True)
        row = run_sparsify(args.steps, variant)
        row["load_average_after"] = os.getloadavg()
        print(f"      {row['tokens_per_s']:,.0f} tokens/s, load {row['load_average_after']}", flush=True)
        tc = from_sparsify(Path(row["checkpoint"]), f"resid_mid.{LAYER}", target=f"mlp_out.{LAYER}")
        forward = load_file(str(work / f"sparsify_forward_{variant}.safetensors"))
        mx, sx, my, sy = (forward[k] for k in ("mx", "sx", "my", "sy"))  # 0, 1, 0, 1 but for skip-std
        check = conversion_check(tc, (data["eval_x"].float() - mx) / sx, forward)  # in the units it trained in
        row["conversion"] = check
        print(f"      conversion: our forward vs its forward {check}", flush=True)
        ok = check["relative_error"] < TOLERANCE and check["tokens_with_other_latents"] <= len(data["eval_x"]) // 1000
        assert ok, f"conversion of sparsify's transcoder is off: {check}"
        if VARIANTS[variant][1]:  # to model units for evaluation; float32 folding is not exact: recorded
            unstandardise(tc, mx, sx, my, sy)
            row["fold"] = conversion_check(tc, data["eval_x"], {**forward, "sae_out": forward["sae_out"] * sy + my})
        theirs.append((tc, row))

    both = [(ours, ours_row), *theirs]
    ids = None
    if not args.no_ce:
        ids = real_tokens(model, "heldout", seq_len=defaults.SEQ_LEN, max_tokens=EVAL_WINDOWS * 127, progress=False)
    print(f"[4/4] evaluating on the held-out pairs{'' if ids is None else ' and held-out documents'}", flush=True)
    for tc, row in both:
        row.update(pairs_quality(tc, data["eval_x"], data["eval_y"]))
        if ids is not None:
            ev = evaluate_sae(model, tc, ids, progress=False)
            row.update({k: ev.get(k) for k in KEYS if k in ev})
            row["text"] = ev
        print(f"      {row['trainer']}: " + ", ".join(f"{k} {row.get(k)}" for k in KEYS[3:]), flush=True)
    del model
    pairs = common.paired(
        args.paired_rounds,
        lambda: train_ours(work, PAIR_STEPS, args.precision)[1]["median_step_tokens_per_s"],
        lambda: run_sparsify(PAIR_STEPS, variants[0], tag="_paired")["median_step_tokens_per_s"],
        "sparsify",
        PAIR_STEPS,
    )
    rows = [row for _, row in both]
    summary = {"steps": args.steps, "precision": args.precision, "cpu": cpu, "layer": LAYER}
    summary["eval_tokens"] = None if ids is None else rows[0]["text"].get("eval_tokens")
    result = common.results_file(rows, pairs, source, ids, "sparsify", keys=KEYS, batch=BATCH, **summary)
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    path = common.RESULTS / args.out
    path.write_text(json.dumps(result, indent=2) + "\n")
    summ = result["summary"]
    print("\n" + table(summ))
    paired_ratio = "" if not pairs else f", {summ['paired_speed_ratio']:.2f} (median of {len(pairs)} paired rounds)"
    print(
        f"\nours / sparsify ({variants[0]}) tokens/s: {summ['speed_ratio_ours_over_sparsify']:.2f} (wall), "
        f"{summ['median_step_speed_ratio']:.2f} (median step){paired_ratio}"
    )
    for _, row in theirs:
        print(
            f"{row['trainer']}: its own forward on the held-out pairs gives EV "
            f"{row['own_forward_explained_variance']:.4f}; converted: {row['pairs_explained_variance']:.4f}"
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
