"""`python -m attribution run`: attribution, ablation and their agreement for one prompt, from a shell.

With --sae folders it attributes to SAE features (grad_x_act, checked by zero ablation). Without, every
(layer, position) of the residual stream is one node, and it runs attribution patching against real
activation patching from --corrupt: the classic experiment, and the baseline SAE features must beat.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

JOHN = 'John says, "I want to be alone right now." John feels'
JOHN_HAPPY = 'John says, "I love to be here right now." John feels'


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m attribution", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="attribute a logit difference and check it by ablation")
    run.add_argument("--model", default=None, help="model folder, .gguf file or hub id (default: gemma-3-270m)")
    run.add_argument(
        "--sae",
        action="append",
        default=[],
        help="SAE folder (ours or SAELens); repeatable. 'default': the project's SAE after the middle block "
        "(16,384 features; trained on first use with the other default SAEs, ~30 min on a 2-core AMX CPU, then cached)",
    )
    run.add_argument(
        "--hooks", default=None, help="comma-separated hook points for the SAE-free run (default: every resid_post)"
    )
    run.add_argument("--prompt", default=JOHN, help="the prompt (default: the paper's John example)")
    run.add_argument("--good", default=" sad", help="answer whose logit counts positively (one token)")
    run.add_argument("--bad", default=" happy", help="answer whose logit counts negatively (one token)")
    run.add_argument(
        "--corrupt",
        default=None,
        help=f"same-length corrupted prompt for atp / patching (SAE-free default: {JOHN_HAPPY!r})",
    )
    run.add_argument(
        "--method",
        choices=["grad_x_act", "atp", "ig"],
        default=None,
        help="attribution method (default: grad_x_act with --sae, atp without)",
    )
    run.add_argument(
        "--mode",
        choices=["zero", "mean", "patch"],
        default=None,
        help="ablation mode (default: zero with --sae, patch without)",
    )
    run.add_argument("--steps", type=int, default=10, help="integrated-gradient steps")
    run.add_argument("--ablate", type=int, default=100, help="ablate this many top nodes (0: all)")
    run.add_argument("--top", type=int, default=15, help="rows of the printed table")
    run.add_argument("--json", default=None, help="write every node's estimate and effect to this file")
    saes = sub.add_parser(
        "saes",
        help="train (once) and cache the default SAEs; --evaluate measures them on real text",
        description="Train the default SAEs (resid_post of every other layer plus a wider middle layer) if "
        "they are not cached yet, print where they are, and optionally measure their quality.",
    )
    saes.add_argument("--model", default=None, help="model folder, .gguf file or hub id (default: gemma-3-270m)")
    saes.add_argument("--hooks", default=None, help="comma-separated subset of the default hooks")
    saes.add_argument(
        "--evaluate",
        action="store_true",
        help="also measure EV / CE loss recovered / L0 on Debian English text and count dead features",
    )
    saes.add_argument("--dead-tokens", type=int, default=1_000_000, help="tokens over which dead features count")
    saes.add_argument("--index", action="store_true", help="also build each SAE's feature index (for explain)")
    tcs = sub.add_parser(
        "transcoders",
        help="train (once) and cache the default transcoders (one per layer, for replacement graphs)",
        description="Train the default skip-transcoders (one per layer, reading resid_mid, writing mlp_out) if "
        "they are not cached yet, and print each one's held-out quality.",
    )
    tcs.add_argument("--model", default=None, help="model folder, .gguf file or hub id (default: gemma-3-270m)")
    tcs.add_argument("--report", default=None, help="also write the quality table as JSON to this file")
    tcs.add_argument(
        "--evaluate",
        action="store_true",
        help="also measure them on Debian's fortunes + Jargon File (apt-get install fortunes jargon-text) and "
        "count dead features over its tokens",
    )
    tcs.add_argument("--dead-tokens", type=int, default=1_000_000, help="tokens to count dead features over")
    tcs.add_argument(
        "--tokens",
        type=int,
        default=None,
        help="training tokens per transcoder (default: the recipe's 2M; more than the corpus's 3.4M makes "
        "epochs); another budget is another cached set (default_transcoders(model, tokens=N) loads it), and a set "
        "of the same recipe trained on fewer tokens whose training state was kept is continued, not retrained",
    )
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.command == "saes":
        return _saes(args)
    if args.command == "transcoders":
        return _transcoders(args)
    from attribution import (
        AttributionError,
        LogitDiff,
        WholeActivation,
        ablate,
        attribute,
        compare,
        load_model,
        load_sae,
    )

    try:
        _check_counts(args)  # before the model loads: a typo should not cost the load
        t0 = time.perf_counter()
        model = load_model(args.model)
        metric = LogitDiff(model, args.good, args.bad)
        if args.sae:
            saes = {}
            for path in args.sae:
                if path == "default":
                    from attribution.training.defaults import default_saes, middle_hook

                    saes |= default_saes(model, middle_hook(model))
                else:
                    sae = load_sae(path, model=model)
                    saes[sae.hook] = sae
            method, mode, corrupt = args.method or "grad_x_act", args.mode or "zero", args.corrupt
        else:
            hooks = args.hooks.split(",") if args.hooks else [f"resid_post.{i}" for i in range(model.n_layers)]
            saes = WholeActivation.at(model, hooks)
            method, mode = args.method or "atp", args.mode or "patch"
            corrupt = args.corrupt or (JOHN_HAPPY if args.prompt == JOHN else None)
            if corrupt is None and (mode == "patch" or method == "atp"):
                raise AttributionError("without --sae, give --corrupt: a same-length prompt to patch from")
        print(f"{model}\nprompt: {args.prompt!r}\nmetric: {metric}")
        t1 = time.perf_counter()
        attr = attribute(model, saes, args.prompt, metric, method=method, corrupt=corrupt, steps=args.steps)
        t2 = time.perf_counter()
        print(
            f"metric = {float(attr.metric[0]):+.3f}"
            + (f" (corrupt: {float(attr.baseline[0]):+.3f})" if attr.baseline is not None else "")
        )
        nodes = attr.top(args.ablate or None)
        abl = ablate(model, saes, args.prompt, metric, nodes, mode=mode, corrupt=corrupt)
        t3 = time.perf_counter()
    except AttributionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    effect = dict(zip(abl.node_keys(), abl.effect.tolist()))
    print(f"\n{'hook':>13} {'pos':>4} {'token':>12} {'node':>8} {'estimate':>9} {'real effect':>12}")
    for n in nodes[: args.top]:
        label = f"f{n.feature}" if not n.is_error else ("error" if args.sae else "whole")
        print(f"{n.hook:>13} {n.position:>4} {n.token!r:>12} {label:>8} {n.attribution:+9.3f} {effect[n.key]:+12.3f}")
    agreement = compare(attr, abl)
    print(f"\n{method} vs {mode} ablation: {agreement}")
    print(
        f"time: load {t1 - t0:.1f}s, attribution {t2 - t1:.2f}s ({len(attr)} nodes), "
        f"{len(abl)} ablations {t3 - t2:.2f}s"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "prompt": args.prompt,
                    "metric": float(attr.metric[0]),
                    "baseline": None if attr.baseline is None else float(attr.baseline[0]),
                    "method": method,
                    "mode": mode,
                    "agreement": agreement.__dict__,
                    "seconds": {"load": t1 - t0, "attribution": t2 - t1, "ablation": t3 - t2},
                    "n_nodes": len(attr),
                    "nodes": [n._asdict() | {"effect": effect[n.key]} for n in nodes],
                },
                fh,
                indent=1,
            )
    return 0


def _check_counts(args) -> None:
    from attribution import AttributionError, TokenizationError

    if not args.prompt.strip():
        raise TokenizationError(f"empty prompt {args.prompt!r}: give --prompt some text to attribute")
    for flag, value, least in (("--steps", args.steps, 1), ("--ablate", args.ablate, 0), ("--top", args.top, 1)):
        if value < least:
            raise AttributionError(f"{flag} must be >= {least}, got {value}" + (" (0: all)" if least == 0 else ""))
    if args.ablate == 1:
        raise AttributionError("--ablate 1 cannot be compared: give >= 2 nodes (a correlation), or 0 for all")


def _saes(args) -> int:
    from attribution import AttributionError, default_saes, feature_indexes, load_model
    from attribution.compute import machine
    from attribution.training.defaults import saes_dir
    from attribution.training.quality import evaluate_defaults, quality_table, save_report

    try:
        model = load_model(args.model)
        t0 = time.perf_counter()
        saes = default_saes(model, args.hooks.split(",") if args.hooks else None)
        seconds = time.perf_counter() - t0
        print(f"default SAEs in {saes_dir(model)} ({seconds / 60:.1f} min to build or load):")
        for h, sae in saes.items():
            ev = sae.meta.get("eval", {})
            print(
                f"  {h:>14}: {sae.d_sae} features, held-out EV {ev.get('explained_variance', float('nan')):.3f}, "
                f"CE loss recovered {ev.get('ce_loss_recovered', float('nan')):.3f}, L0 {ev.get('l0', 0):.1f}"
            )
        if args.index:
            feature_indexes(model, saes)
        if args.evaluate:
            report = evaluate_defaults(model, saes, dead_tokens=args.dead_tokens)
            report["build"] = {"seconds": seconds, **machine()}
            path = save_report(report, saes_dir(model) / "quality.json")
            print(quality_table(report))
            print(f"written to {path}")
    except AttributionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _transcoders(args) -> int:
    from attribution import AttributionError, load_model
    from attribution.compute import machine
    from attribution.training.quality import evaluate_defaults
    from attribution.training.transcoder_defaults import add_reference, default_transcoders, quality_rows, quality_table

    try:
        if args.tokens is not None and args.tokens < 1:
            raise AttributionError(f"--tokens must be a whole number >= 1 (e.g. 8000000), got {args.tokens}")
        if args.dead_tokens < 1:
            raise AttributionError(f"--dead-tokens must be a whole number >= 1 (e.g. 1000000), got {args.dead_tokens}")
        model = load_model(args.model)
        t0 = time.perf_counter()
        tcs = default_transcoders(model, **({} if args.tokens is None else {"tokens": args.tokens}))
        seconds = time.perf_counter() - t0
        rows = quality_rows(tcs)
        if args.evaluate:
            rows = add_reference(rows, evaluate_defaults(model, tcs, dead_tokens=args.dead_tokens))
        print(f"default transcoders ({seconds / 60:.1f} min to build or load):")
        print(quality_table(rows))
        if args.report:
            report = {"transcoders": rows, "build": {"seconds": seconds, **machine()}}
            Path(args.report).write_text(json.dumps(report, indent=1))
            print(f"written to {args.report}")
    except AttributionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
