"""Which transcoder recipe makes the features carry the MLP's computation: factor by factor, at equal tokens.

    python -m studies.transcoder_recipe --layers 9 --tokens 1000000   # bench/results/transcoder_recipe.json

One layer's activations (resid_mid, mlp_in and mlp_out, the tokens the default stream keeps) are collected
once from the default corpus, so every recipe trains on the same tokens in the same order; each recipe is
then evaluated on held-out documents (attribution.training.evaluate: EV of the MLP output, what the features
explain of the part the skip path leaves, CE loss recovered, L0, dead features) and timed. The results file
is rewritten after each recipe, and a rerun skips the recipes it holds.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from attribution import load_model
from attribution.compute import model_autocast
from attribution.engine import trace
from attribution.models.model import Batch
from attribution.saes import build
from attribution.tokens import OUTLIER, keep_tokens
from attribution.training import defaults
from attribution.training.corpus import real_tokens
from attribution.training.evaluate import evaluate_sae
from attribution.training.trainer import Fitter, TrainConfig
from attribution.training.transcoder_defaults import SKIP_TOKENS, skip_stats, solve_skip

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "transcoder_recipe.json"
EVAL_WINDOWS = 96


@dataclass(frozen=True)
class Recipe:
    name: str
    optimizer: str = "adam"
    lr: float = 4e-4
    batch_size: int = 4064  # one step per forward batch of the default stream (32 windows of 127)
    normalize: str = "dim"
    skip: str = "lstsq"  # "lstsq" (fitted, fixed), "joint" (trained from zero), "none"
    reads: str = "resid_mid"
    k: int = 32
    d_sae: int = 4096
    extra: dict = field(default_factory=dict)


RECIPES = [
    Recipe("v1 (Adam 4e-4, 1 step / forward)"),
    Recipe("Adam 1e-3, batch 1024", lr=1e-3, batch_size=1024),
    Recipe("Adam 2e-3, batch 1024", lr=2e-3, batch_size=1024),
    Recipe("Adam 1e-3, batch 512", lr=1e-3, batch_size=512),
    Recipe("sign-SGD sf 1e-2, batch 1024", optimizer="signsgd", lr=1e-2, batch_size=1024),
    # the rest change one thing of the recipe the default transcoders v2 use (the line above)
    Recipe("sf, skip trained jointly", optimizer="signsgd", lr=1e-2, batch_size=1024, skip="joint"),
    Recipe("sf, reads mlp_in", optimizer="signsgd", lr=1e-2, batch_size=1024, reads="mlp_in"),
    Recipe("sf, k 64", optimizer="signsgd", lr=1e-2, batch_size=1024, k=64),
    Recipe("sf, lr 3e-3", optimizer="signsgd", lr=3e-3, batch_size=1024),
    Recipe("sf, scalar norm", optimizer="signsgd", lr=1e-2, batch_size=1024, normalize="scalar"),
    Recipe("sf, width 8192", optimizer="signsgd", lr=1e-2 / 2**0.5, batch_size=1024, d_sae=8192),
    Recipe("sf, batch 4064", optimizer="signsgd", lr=1e-2),
    Recipe("sf, no skip", optimizer="signsgd", lr=1e-2, batch_size=1024, skip="none"),
    Recipe("sf, zero-decoder init", optimizer="signsgd", lr=1e-2, batch_size=1024, extra={"init": "zero_decoder"}),
    Recipe("sf, width 16384", optimizer="signsgd", lr=1e-2 / 2, batch_size=1024, d_sae=16384),
]


def collect(model, layer: int, windows: torch.Tensor) -> dict[str, torch.Tensor]:
    """{hook: [n_kept, d_model] bf16}: the stream's kept tokens (not <bos>, not massive-norm at the middle
    layer) of resid_mid, mlp_in and mlp_out at `layer`."""
    hooks = [f"resid_mid.{layer}", f"mlp_in.{layer}", f"mlp_out.{layer}"]
    mask_hook = defaults.middle_hook(model)
    names = {h: model.hook(h).name for h in hooks}
    capture = sorted({*names.values(), model.hook(mask_hook).name}, key=lambda h: model.hooks[h].order)
    out = {h: [] for h in hooks}
    per = defaults.BATCH_WINDOWS
    for i in range(0, len(windows) - per + 1, per):
        with torch.no_grad(), model_autocast(model):
            acts = trace(model, Batch.from_ids(windows[i : i + per], model.device), capture=capture, stop_early=True)
        keep = keep_tokens(acts.acts[model.hook(mask_hook).name], OUTLIER)
        for h in hooks:
            out[h].append(acts.acts[names[h]][keep].to(torch.bfloat16).cpu())
    return {h: torch.cat(v) for h, v in out.items()}


def train(model, r: Recipe, layer: int, acts: dict, seed: int = 0):
    x, y = acts[f"{r.reads}.{layer}"], acts[f"mlp_out.{layer}"]
    tc = build(
        "topk", model.d_model, r.d_sae, f"{r.reads}.{layer}", k=r.k, target=f"mlp_out.{layer}", skip=r.skip != "none"
    )
    if r.skip == "lstsq":
        with torch.no_grad():
            tc.W_skip.copy_(solve_skip(*skip_stats(x[:SKIP_TOKENS].float(), y[:SKIP_TOKENS].float())))
    steps = len(x) // r.batch_size
    cfg = TrainConfig(
        steps=steps,
        batch_size=r.batch_size,
        lr=r.lr,
        normalize=r.normalize,
        optimizer=r.optimizer,
        train_skip=r.skip == "joint",
        dead_after_tokens=200_000,
        log_every=max(1, steps // 20),
        progress=False,
        **r.extra,
    )
    f = Fitter(tc, cfg)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    t0 = time.perf_counter()
    for i in range(steps):
        idx = perm[i * r.batch_size : (i + 1) * r.batch_size]
        f.step(x[idx], y[idx])
    seconds = time.perf_counter() - t0
    log = f.finish()
    return tc, {
        "train_s": seconds,
        "tokens": steps * r.batch_size,
        "steps": steps,
        "train_ev_curve": log.explained_variance,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", default="9", help="comma-separated layers")
    p.add_argument("--tokens", type=int, default=1_000_000)
    p.add_argument("--only", action="append", default=None, help="a recipe's name (repeatable; default: all)")
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args(argv)
    out = Path(a.out)
    result = json.loads(out.read_text()) if out.is_file() else {"runs": []}
    result["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }
    model = load_model()
    train_ids, _ = defaults.default_corpus(model, a.tokens + 64 * 127, progress=True)
    held = real_tokens(model, "heldout", seq_len=defaults.SEQ_LEN, max_tokens=EVAL_WINDOWS * 127, progress=False)
    unknown = sorted(set(a.only or ()) - {r.name for r in RECIPES})
    if unknown:
        raise SystemExit(f"unknown recipes {unknown}; known: {[r.name for r in RECIPES]}")
    wanted = [r for r in RECIPES if a.only is None or r.name in a.only]
    for layer in (int(v) for v in a.layers.split(",")):
        todo = [
            r for r in wanted if not any(x["layer"] == layer and x["recipe"]["name"] == r.name for x in result["runs"])
        ]
        if not todo:
            continue
        t0 = time.perf_counter()
        acts = collect(model, layer, train_ids)
        acts = {h: v[: a.tokens] for h, v in acts.items()}
        print(f"layer {layer}: {len(acts[f'mlp_out.{layer}'])} tokens collected in {time.perf_counter() - t0:.0f} s")
        for r in todo:
            tc, info = train(model, r, layer, acts)
            ev = evaluate_sae(model, tc, held, progress=False)
            run = {
                "layer": layer,
                "recipe": asdict(r),
                **info,
                "tokens_per_s": info["tokens"] / info["train_s"],
                "eval": ev,
            }
            result["runs"].append(run)
            print(
                f"L{layer} {r.name:42s} EV {ev['explained_variance']:.3f} rest {ev['features_on_rest'] or 0:.3f} "
                f"CE {ev['ce_loss_recovered']:.3f} L0 {ev['l0']:.1f} dead {ev['dead_fraction']:.1%} "
                f"{run['tokens_per_s']:.0f} tok/s",
                flush=True,
            )
            result["eval_tokens"] = ev["eval_tokens"]
            out.write_text(json.dumps(result, indent=1) + "\n")
        del acts
    return result


def table(result: dict) -> str:
    """Markdown rows, one per (layer, recipe) run, in the order they ran."""
    lines = [
        "| layer | recipe | EV (MLP out) | features on rest | CE rec. | L0 | dead (eval) | train tok/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        e = r["eval"]
        rest = "n/a" if e["features_on_rest"] is None else f"{e['features_on_rest']:.3f}"
        lines.append(
            f"| {r['layer']} | {r['recipe']['name']} | {e['explained_variance']:.3f} | {rest} | "
            f"{e['ce_loss_recovered']:.3f} | {e['l0']:.1f} | {e['dead_fraction']:.1%} | {r['tokens_per_s']:,.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
