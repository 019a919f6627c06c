"""`python -m cases`: run a case study from a shell and write its offline HTML report.

  python -m cases emotion --out runs/emotion        John ... feels: sad vs happy
  python -m cases multihop --out runs/kobe          Kobe Bryant -> Sacramento vs Albany, with the graph
  python -m cases run --prompt "The capital of Texas is" --good " Austin" --bad " Dallas" --out runs/mine
  python -m cases suite --out runs/suite          a suite of two-hop prompts: graphs, supernodes, suppression, swaps

Each writes report.html (open it in a browser; it needs no network), report.json with every number, and
CSV tables (top_attribution.csv, top_activation.csv, steering.csv) into --out.
Exit codes: 0 done, 2 bad input (one line on stderr saying what and how to fix it).
"""

from __future__ import annotations

import argparse
import json
import sys

RAW = argparse.RawDescriptionHelpFormatter


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("model and dictionaries")
    g.add_argument(
        "--model", default=None,
        help="model folder, .gguf file or hub id, anything attribution.load_model takes (default: the embedded "
        "gemma-3-270m)",
    )  # fmt: skip
    g.add_argument(
        "--saes", action="append", default=None, metavar="PATH|default|whole",
        help="SAE folder (ours or SAELens: cfg.json + sae_weights.safetensors); repeat for several hooks. "
        "'default': the project's SAEs for the default model (trained on first use, then cached). 'whole': no "
        "SAE, each layer's whole activation at each position is one node (activation patching). Default: default",
    )  # fmt: skip
    g.add_argument(
        "--hooks", default=None,
        help="comma-separated hook points, e.g. resid_post.6,resid_post.9: which of the SAEs to use (for "
        "'default' and 'whole': where to put them; 'whole' defaults to every resid_post). 'middle' names the "
        "residual stream after the middle block. Default for emotion: middle (one dictionary, as in the paper); "
        "otherwise every SAE",
    )  # fmt: skip
    a = common.add_argument_group("attribution and ablation")
    a.add_argument("--method", choices=["grad_x_act", "atp", "ig"], default="grad_x_act",
                   help="attribution: activation x gradient (one backward), attribution patching from --corrupt, "
                   "or integrated gradients (default: grad_x_act)")  # fmt: skip
    a.add_argument("--mode", choices=["zero", "mean", "patch"], default="zero",
                   help="ablation that checks it: zero the node, set it to its mean, or patch it from --corrupt "
                   "(default: zero)")  # fmt: skip
    a.add_argument("--corrupt", default=None, help="same-length corrupted prompt, for --method atp / --mode patch")
    a.add_argument("--ablate", type=int, default=100, help="ablate the top N nodes of each ranking (default: 100)")
    r = common.add_argument_group("report")
    r.add_argument("--out", default=None, help="folder for report.html, report.json and the CSVs (default: runs/NAME)")
    r.add_argument("--top", type=int, default=20, help="rows of each table shown in the page (default: 20)")
    r.add_argument("--cards", type=int, default=5, help="feature cards for the top N features (default: 5)")
    r.add_argument("--no-explain", action="store_true", help="skip labels and feature cards (no feature index)")
    r.add_argument("--no-steer", action="store_true", help="skip the steering panel")
    r.add_argument(
        "--steer", default=None, metavar="HOOK:FEATURE",
        help="the feature to clamp, e.g. resid_post.9:1234 (default: the largest positive attribution)",
    )  # fmt: skip
    r.add_argument("--steer-tokens", type=int, default=12, help="tokens of greedy continuation (default: 12)")
    r.add_argument(
        "--clamp", default="0,5,10", metavar="M,M,...",
        help="clamp the steered feature to these multiples of its maximum activation (default: 0,5,10)",
    )  # fmt: skip
    r.add_argument("--graph", action=argparse.BooleanOptionalAction, default=None,
                   help="build the feature graph (default: on for multihop, off otherwise)")  # fmt: skip
    r.add_argument(
        "--transcoders", default=None, metavar="default|none|PATH",
        help="a replacement graph beside the SAE graph, with these transcoders (default: 'default' for "
        "multihop, none otherwise; a folder or release for load_transcoders)",
    )  # fmt: skip
    r.add_argument("--quiet", action="store_true", help="no progress bars")

    p = argparse.ArgumentParser(prog="python -m cases", description=__doc__, formatter_class=RAW)
    sub = p.add_subparsers(dest="case", required=True, metavar="{emotion,multihop,run,suite}")
    from cases import emotion, multihop

    for name, case, what in (
        ("emotion", emotion, "John says he wants to be alone: sad vs happy"),
        ("multihop", multihop, "Kobe Bryant's state capital: Sacramento vs Albany, with the graph"),
    ):
        text = f"{what}.\n\nprompt: {case.PROMPT!r}\nmetric: logit({case.GOOD!r}) - logit({case.BAD!r})"
        sub.add_parser(name, parents=[common], help=what, description=text, formatter_class=RAW)
    own = sub.add_parser(
        "run", parents=[common], help="your own prompt and answer pair",
        description="Any prompt; the metric is logit(--good) - logit(--bad) at its last token.",
    )  # fmt: skip
    own.add_argument("--prompt", required=True, help="the prompt; the metric is read at its last token")
    own.add_argument("--good", required=True, help="answer counted positively, one token (mind the leading space)")
    own.add_argument("--bad", required=True, help="answer counted negatively, one token")
    own.add_argument("--title", default="Case study", help="the report's title")
    suite_parser(sub)
    return p


def suite_parser(sub) -> None:
    """`suite`: a JSONL suite of multi-hop prompts (cases.suite)."""
    from cases.suite_prompts import TWO_HOP

    s = sub.add_parser(
        "suite", help="a suite of multi-hop prompts: graphs, supernodes, suppression and swaps, one report",
        description="Every prompt of --prompts checked against the model; for each two-hop prompt it answers "
        "top-1: the feature graph, supernodes found by contrast across the suite, the intermediate group "
        "suppressed and swapped for another prompt's; DIR/report.html, DIR/report.json, DIR/graphs/.",
        formatter_class=RAW,
    )  # fmt: skip
    s.add_argument("--prompts", default=str(TWO_HOP), help="JSONL suite file (default: the shipped two-hop suite)")
    s.add_argument("--out", default="runs/suite", help="output folder (default: runs/suite)")
    s.add_argument("--model", default=None, help="model (default: the embedded gemma-3-270m)")
    s.add_argument("--saes", action="append", default=None, metavar="PATH|default",
                   help="SAE folders, or 'default' (the project's SAEs; default)")  # fmt: skip
    s.add_argument("--hooks", default=None, help="comma-separated hooks of the SAEs to use (default: all)")
    s.add_argument("--transcoders", default=None, metavar="default|PATH",
                   help="replacement graphs with these transcoders instead of SAE graphs ('default': the "
                   "project's; a folder or release for load_transcoders)")  # fmt: skip
    s.add_argument("--check", action="store_true", help="only check the prompts against the model and print it")
    s.add_argument("--only", action="append", default=[], metavar="ID", help="run only this prompt (repeatable)")
    s.add_argument("--max-features", type=int, default=100, help="feature nodes kept per graph (default: 100)")
    s.add_argument("--min-score", type=float, default=0.5, help="a supernode's contrast score (default: 0.5)")
    s.add_argument("--no-labels", action="store_true", help="no feature labels (no feature indexes built)")
    s.add_argument("--qk-heads", type=int, default=0, metavar="N",
                   help="per prompt, QK-decompose the N heads moving most into the last token")  # fmt: skip
    s.add_argument("--quiet", action="store_true", help="no progress bars")


def main(argv=None, *, model=None, saes=None) -> int:
    """Run the CLI. `model`/`saes` objects, when given, replace --model/--saes (for tests and notebooks)."""
    args = parser().parse_args(argv)
    from attribution import AttributionError
    from cases.study import run

    try:
        if args.case == "suite":
            return suite(args, model=model, saes=saes)
        report = run(config(args, model=model, saes=saes))
    except AttributionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report)
    return 0


def config(args: argparse.Namespace, *, model=None, saes=None):
    """The CaseConfig the parsed flags describe (bad values raise the library's errors, as a run would)."""
    from cases import emotion, multihop
    from cases.config import CaseConfig

    keywords = dict(
        model=model if model is not None else args.model,
        saes=saes if saes is not None else _saes(args.saes),
        hooks=args.hooks,
        out=args.out or f"runs/{'kobe' if args.case == 'multihop' else args.case}",
        method=args.method,
        mode=args.mode,
        corrupt=args.corrupt,
        n_ablate=args.ablate,
        top=args.top,
        cards=args.cards,
        explain=not args.no_explain,
        steer=False if args.no_steer else (args.steer or True),
        steer_tokens=args.steer_tokens,
        clamps=args.clamp,
        progress=not args.quiet,
    )
    if args.graph is not None:
        keywords["graph"] = args.graph
    if args.transcoders is not None:
        keywords["transcoders"] = None if args.transcoders == "none" else args.transcoders
    if args.case == "emotion":
        return emotion.config(**keywords)
    if args.case == "multihop":
        return multihop.config(**keywords)
    return CaseConfig.from_keywords(args.prompt, args.good, args.bad, title=args.title, **keywords)


def _saes(values: list[str] | None):
    if not values:
        return "default"
    return values[0] if len(values) == 1 and values[0] in ("default", "whole") else values


def suite(args: argparse.Namespace, *, model=None, saes=None) -> int:
    """`python -m cases suite`: check the prompts (--check), or run the whole suite and print its summary."""
    from cases.sources import resolve_model, resolve_saes
    from cases.suite import SuiteOptions, run_suite
    from cases.suite_prompts import check, load_suite

    prompts = load_suite(args.prompts)
    model = resolve_model(model if model is not None else args.model, progress=not args.quiet)
    if args.check:
        answered = check(model, prompts)
        for p, a in zip(prompts, answered):
            mark = "top-1" if a.top1 else f"rank {a.answer_rank} (top {a.top!r} {a.top_p:.2f})"
            print(f"{p.id:32s} {p.answer!r:14s} p={a.answer_p:.3f}  {mark}")
        two = [a for p, a in zip(prompts, answered) if p.hops >= 2]
        print(f"{sum(a.top1 for a in two)} of {len(two)} two-hop prompts and "
              f"{sum(a.top1 for p, a in zip(prompts, answered) if p.hops < 2)} of {len(prompts) - len(two)} one-hop "
              "controls are answered top-1")  # fmt: skip
        return 0
    hooks = args.hooks.split(",") if args.hooks else None
    if args.transcoders is not None:
        from cases.replacement_stage import load

        dicts = load(args.transcoders, model, not args.quiet)
    else:
        dicts = resolve_saes(model, saes if saes is not None else _saes(args.saes), hooks, quick=False,
                             progress=not args.quiet)  # fmt: skip
    options = SuiteOptions(max_features=args.max_features, min_score=args.min_score, labels=not args.no_labels,
                           progress=not args.quiet, only=args.only, qk_heads=args.qk_heads)  # fmt: skip
    report = run_suite(model, dicts, args.prompts, args.out, options)
    print(json.dumps(report["summary"], indent=1))
    print(f"wrote {args.out}/report.html and report.json")
    return 0
