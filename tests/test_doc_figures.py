"""Figures that README.md, docs/*.md and docstrings quote equal the committed result files they come from.

FIGURES is the table: the document (DOCS: whichever of README.md and docs/**/*.md quotes it; a figure may move
between pages without its row changing, but must be quoted once among them all), the exact quoted text with
one `{}` where the figure goes (or, with `regex=True`, a regular expression whose one group is the figure,
every match of it checked), the source file, the key path into its JSON and the format the document uses.
A rerun that changes a result then fails here until the prose is updated, instead of leaving the docs
quoting the previous run. bench/results/ratios.md is generated, so bench/test_ratios.py checks it by
regenerating it from summary.json (bench/ratios.py).

To wire in a case study once its report is committed, add rows such as
    Figure(DOCS, "` sad` − ` happy` = {} |", "cases/results/emotion/report.json", ("metric",), signed(".3f"))
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = "bench/results/summary.json"
SAELENS = "bench/results/saelens.json"
SAELENS_SCALAR = "bench/results/saelens_scalar.json"  # the earlier side-by-side run (--normalize scalar)
LONG = "bench/results/long_prompt.json"
RATIO_ROWS = (  # README's ratio table: label, summary.json ratio key, format, suffix
    ("grad_x_act attribution / one plain forward", "grad_x_act", "{:.3g}", ""),
    ("grad_x_act attribution / forward without unembedding", "grad_x_act_vs_body", "{:.3g}", ""),
    ("attribution patching / one plain forward", "atp", "{:.3g}", ""),
    ("integrated gradients (10 steps) / one plain forward", "ig", "{:.3g}", ""),
    ("256 batched ablations / 256 plain forwards", "ablations", "{:#.2g}", ""),
    ("naive loop (one forward per node) / batched ablation, 32 nodes", "ablation_speedup", "{:#.2g}", "x"),
    ("forward with 18 SAEs spliced / one plain forward", "splice", "{:.3g}", ""),
)
LONG_ROWS = (
    ("attribute", "grad_x_act, 18 SAEs, 1215918 nodes"),
    ("ablate", "256 nodes (zero), 17 hooks"),
    ("build_graph", "10 SAE layers, 160 feature + 160 error nodes, 21728 edges"),
)
EMOTION = "cases/results/emotion/report.json"
MULTIHOP = "cases/results/multihop/report.json"
CAPTURED_ATTR = ("rankings", "attribution", "captured", "10")
CAPTURED_ACT = ("rankings", "activation", "captured", "10")
QUALITY = "bench/results/default_saes_quality.json"  # the default SAEs (v3)
QUALITY_V2 = "bench/results/default_saes_quality_v2.json"  # v2, trained on sampled text, on the same text
RUN = "bench/results/run.json"  # python -m attribution run --json ...
AGREE = r"attribution vs ablation over 100 nodes: "


@dataclass(frozen=True)
class Figure:
    doc: str  # path from the repository root, or DOCS
    text: str  # quoted text with one {} (or a regex with one group, regex=True)
    source: str  # JSON file, path from the repository root
    key: tuple  # path into the JSON: keys and list indexes
    fmt: str | Callable = "{}"  # format string, or a function of the value returning the quoted text
    regex: bool = False

    def shown(self, value) -> str:
        return str(self.fmt(value)) if callable(self.fmt) else self.fmt.format(value)


def hundreds(v: float) -> str:
    """6,011 -> '6,000': tokens/s quoted to the hundred."""
    return f"{round(v, -2):,.0f}"


def minus(spec: str) -> Callable:
    """A signed figure typeset with a true minus sign, as the README's tables print it."""
    return lambda v: format(v, spec).replace("-", "−")


def signed(spec: str) -> Callable:
    return lambda v: format(v, "+" + spec).replace("-", "−")


def percent(v: float) -> str:
    return f"{v:.0%}".removesuffix("%")


def ms(v: float) -> str:
    return f"{v * 1000:.0f}"


def version(trainer: str) -> str:
    """'SAELens 6.54.12 SAETrainer' -> '6.54.12'."""
    return re.search(r"SAELens (\S+)", trainer).group(1)


def empty(check: str) -> str:
    """A graph check's line -> m(empty), every feature node ablated ('... empty +0.6050, ...' -> '+0.605')."""
    return f"{float(re.search(r'empty ([-+][0-9.]+)', check).group(1)):+.3f}"


def target(t: str) -> str:
    """summary.json's '<= 4' -> '4' (the README writes ≤)."""
    return t.removeprefix("<= ")


DOCS = "README.md|docs/**/*.md"  # a figure found in whichever of these it lives in (see _docs)
FRONT = "README.md"  # the front page's headline figures
R = DOCS
B = ("benchmarks",)
ROWS = ("summary", "rows")


def _ratio_figures(label: str, key: str, fmt: str, suf: str) -> list[Figure]:
    """One row of the README's ratio table, found by its label: the local ratio, the ratio of medians and,
    for the rows with a target, the target."""
    row = rf"\| {re.escape(label)} \| "
    figs = [
        Figure(R, row + rf"\**([\d.]+){suf}\** \|", SUMMARY, ("ratios", key, "local_ratio"), fmt, regex=True),
        Figure(R, row + rf"\**[\d.]+{suf}\** \| ([\d.]+){suf} \|", SUMMARY, ("ratios", key, "ratio"), fmt, regex=True),
    ]
    if key in ("grad_x_act", "ablations"):
        figs.append(
            Figure(R, row + r"[^|]+ \| [^|]+ \| ≤ ([\d.]+) \|", SUMMARY, ("ratios", key, "target"), target, regex=True)
        )
    return figs


FIRST = "bench/results/first_run.json"
FITPEAK = "bench/results/summary_fit_peak.json"
SPARSIFY = "bench/results/sparsify.json"
CT = "bench/results/circuit_tracer_random.json"  # python -m bench.peers.circuit_tracer_side_by_side --random
CT_ALL = "bench/results/circuit_tracer_random_all.json"  # the same with --max-feature-nodes 100000 --batch-size 64
KR = "cases/results/kobe_replacement/report.json"  # python -m cases multihop --out cases/results/kobe_replacement
RP = ("replacement",)
SBS = "bench/results/replacement_side_by_side.json"  # python -m bench.peers.replacement_side_by_side (2,048 features)
SBS_ALL = "bench/results/replacement_side_by_side_all.json"  # the same with --max-feature-nodes 100000
WHY = "bench/results/replacement_why.json"  # python -m studies.replacement_why
WHY2 = "bench/results/replacement_why_v2.json"  # python -m studies.replacement_why (transcoders v2)
TC_ROW = "| transcoders, ≤ 100 features | 100 | 163 | {} |"
SUITE = "cases/results/suite/report.json"  # python -m cases suite --out cases/results/suite
TSUITE = "cases/results/suite_transcoders/report.json"  # the command is in docs/case-studies.md
SUITE_WHY = "bench/results/suite_why.json"  # python -m studies.suite_why cases/results/suite/report.json


def _suite(text: str, key: str | tuple, fmt="{}", report: str = SUITE) -> Figure:
    """A figure of a suite report's summary (key: a summary field, or a path inside the summary)."""
    return Figure(R, text, report, ("summary", *((key,) if isinstance(key, str) else key)), fmt)


def _tsuite(text: str, key: str | tuple, fmt="{}") -> Figure:
    return _suite(text, key, fmt, TSUITE)


TSUITE_FIGURES = [
    _tsuite("pruned to ≤ 100 features | **{}** / **0.55** |", "median_replacement_score", "{:.2f}"),
    _tsuite("| **0.27** / **{}** | 0.11 / 0.35 |", "median_completeness_score", "{:.2f}"),
    _tsuite("by real ablation | **{}** | 0.02 |", "median_faithfulness", "{:.2f}"),
    _tsuite("make the expected answer top-1 | **{} / 29** | 24 / 29 |", "swap_top1"),
    _tsuite("make the expected answer top-1 | **23 / {}** | 24 / 29 |", "swaps_run"),
    _tsuite("the control halves the logit difference | **{}** / 2 / 7 of 31", "suppress_halves_metric"),
    _tsuite("| **5** / {} / 7 of 31 |", "shared_suppress_halves_metric"),
    _tsuite("| **5** / 2 / {} of 31 |", "control_suppress_halves_metric"),
    _tsuite("inhibiting the entity group (−1×) halves it | **{} / 31** |", "inhibit_halves_metric"),
    _tsuite("(median drop {}% for the entity group,", "median_suppress_drop", percent),
    _tsuite("{}% for the\ncontrol)", "median_control_suppress_drop", percent),
    _tsuite("(inhibition, −1×) removes a median {}%.", "median_inhibit_drop", percent),
    _tsuite("moves the answer to the\ndonor's in {} of 29", "swap_top1"),
    _tsuite("the four pairings: {} / 23 / 13 / 24 of 29", ("swap_top1_by_variant", "shared->shared")),
    _tsuite("the four pairings: 12 / {} / 13 / 24 of 29", ("swap_top1_by_variant", "shared->entity")),
    _tsuite("the four pairings: 12 / 23 / {} / 24 of 29", ("swap_top1_by_variant", "entity->shared")),
    _tsuite("the four pairings: 12 / 23 / 13 / {} of 29", ("swap_top1_by_variant", "entity->entity")),
    _tsuite("(faithfulness {} against 0.02;", "median_faithfulness", "{:.2f}"),
    Figure(R, "the 18 default transcoders v2, all {} two-hop prompts", TSUITE, ("summary", "graphs"), "{}"),
    Figure(R, "labelled (index\nv9); {} s on the 2-core", TSUITE, ("seconds",), "{:,.0f}"),
    Figure(R, "` German` from rank {} to top-1, p 0.001 -> 0.58", TSUITE, ("prompts", 0, "swap", "expect_rank_before")),
    Figure(R, "to top-1, p {} -> 0.58", TSUITE, ("prompts", 0, "swap", "expect_p_before"), "{:.3f}"),
    Figure(R, "to top-1, p 0.001 -> {}", TSUITE, ("prompts", 0, "swap", "expect_p_after"), "{:.2f}"),
    _tsuite(
        "the other answer top-1; median faithfulness of the pruned graphs (SAE graphs: 0.02) | **{}** of 29;",
        "swap_top1",
    ),
    _tsuite("(SAE graphs: 0.02) | **23** of 29; **{}** |", "median_faithfulness", "{:.2f}"),
]
SUITE_FIGURES = [
    _suite("| graphs whose intermediate group was found by contrast | **{} / 31** |", "intermediate_found"),
    _suite("donor's entity group in) that make the expected answer top-1 | **{} / 29** |", "swap_top1"),
    _suite("zero-ablating the entity group halves the logit difference | **{} / 31**", "suppress_halves_metric"),
    _suite("(median drop {}%) | ≥ 80%: not met (77%) |", "median_suppress_drop", percent),
    _suite("its activation) halves it | **{} / 31** (median drop", "inhibit_halves_metric"),
    _suite("(median drop {}%) | |\n| zero-ablating the shared", "median_inhibit_drop", percent),
    _suite("zero-ablating the shared group halves it | **{} / 31**", "shared_suppress_halves_metric"),
    _suite("| **5 / 31** (median drop {}%) | |", "median_shared_suppress_drop", percent),
    _suite("same tokens) halves it | **{} / 31**", "control_suppress_halves_metric"),
    _suite("| **21 / 31** (median drop {}%) | |", "median_control_suppress_drop", percent),
    _suite("shared -> shared **{}**,", ("swap_top1_by_variant", "shared->shared")),
    _suite("shared -> entity **{}**,", ("swap_top1_by_variant", "shared->entity")),
    _suite("entity -> shared **{}**,", ("swap_top1_by_variant", "entity->shared")),
    _suite("entity -> entity **{}**.", ("swap_top1_by_variant", "entity->entity")),
    _suite("pruned to ≤ 100 features | **{}** / 0.35 |", "median_replacement_score", "{:.2f}"),
    _suite("| **0.11** / {} | (Gemma-2-2B CLTs", "median_completeness_score", "{:.2f}"),
    _suite("faithfulness of the pruned graph by real ablation | **{}** |", "median_faithfulness", "{:.2f}"),
    _suite("swaps that make the other answer top-1 | **31** of 31; **31** of 31; **{}** of 29", "swap_top1"),
    _suite("a control of other features halves it in 21) | **{}** of 31", "suppress_halves_metric"),
    _suite("a control of other features halves it in {}) |", "control_suppress_halves_metric"),
    Figure(
        R, "active\nfeature on its tokens removes a median {}%", SUITE_WHY, ("median_drop", "all_features"), percent
    ),
    Figure(R, "removes a median 86% ({} of 31 prompts halved)", SUITE_WHY, ("halves", "all_features")),
    Figure(R, "the error terms alone {}%: the entity", SUITE_WHY, ("median_drop", "all_errors"), percent),
    Figure(R, "have in common) removes a median {}% of the logit", SUITE_WHY, ("median_drop", "group"), percent),
]
FIGURES = [
    Figure(R, "against the residual-SAE graph's | **{}** /", KR, (*RP, "budgets", "100", "faithfulness"), "{:.3f}"),
    Figure(
        R,
        "| transcoders, ≤ 100 features | 100 | 163 | 0.259 | 0.528 | **{}** |",
        KR,
        (*RP, "budgets", "100", "faithfulness"),
        "{:.3f}",
    ),
    Figure(R, TC_ROW.format("{}") + " 0.528", KR, (*RP, "budgets", "100", "replacement_score"), "{:.3f}"),
    Figure(R, "| 100 | 163 | 0.259 | {} |", KR, (*RP, "budgets", "100", "completeness_score"), "{:.3f}"),
    Figure(
        R,
        "| its replacement / completeness scores (targets ≥ 0.5 / ≥ 0.8: not met, and why) | **{}** /",
        KR,
        (*RP, "budgets", "100", "replacement_score"),
        "{:.3f}",
    ),
    Figure(
        R,
        "(targets ≥ 0.5 / ≥ 0.8: not met, and why) | **0.259** / **{}** |",
        KR,
        (*RP, "budgets", "100", "completeness_score"),
        "{:.3f}",
    ),
    Figure(
        R,
        "| transcoders, ≤ 60 features | 60 | 163 | 0.250 | 0.506 | {} |",
        KR,
        (*RP, "budgets", "60", "faithfulness"),
        "{:.3f}",
    ),
    Figure(
        R,
        "| residual SAEs, ≤ 100 features | 100 | 88 | 0.118 | 0.376 | {} |",
        KR,
        (*RP, "sae_graph", "budgets", "100", "faithfulness"),
        "{:.3f}",
    ),
    Figure(
        R,
        "| residual SAEs, ≤ 60 features | 60 | 88 | 0.110 | 0.323 | {} |",
        KR,
        (*RP, "sae_graph", "budgets", "60", "faithfulness"),
        "{:.3f}",
    ),
    Figure(R, "| transcoders, full | 7419 | 234 | {} |", KR, (*RP, "full", "replacement_score"), "{:.3f}"),
    Figure(
        R, "| residual SAEs, full | 1280 | 130 | {} |", KR, (*RP, "sae_graph", "full", "replacement_score"), "{:.3f}"
    ),
    Figure(
        R,
        "the transcoder graph at ≤ 100 features scores {} /",
        KR,
        (*RP, "budgets", "100", "replacement_score_removed"),
        "{:.3f}",
    ),
    Figure(
        R,
        "build time ratio, memory added ratio; top 1,000 edges within 1e-3 | **{}**,",
        SBS_ALL,
        ("ratios", "time_ours_over_theirs"),
        "{:.2f}",
    ),
    Figure(R, "**0.35**, **{}**; **969** of 1,000 |", SBS_ALL, ("ratios", "added_rss_ours_over_theirs"), "{:.2f}"),
    Figure(R, "| **0.35**, **0.33**; **{}** of 1,000 |", SBS_ALL, ("edges", "top1000_within_1e-3")),
    Figure(R, "| graph build, ours / theirs | **{} s** /", SBS_ALL, ("time_s", "ours"), "{:.1f}"),
    Figure(R, "| graph build, ours / theirs | **27.2 s** / {} s", SBS_ALL, ("time_s", "theirs"), "{:.1f}"),
    Figure(R, "/ 76.8 s (**{}**)", SBS_ALL, ("ratios", "time_ours_over_theirs"), "{:.2f}"),
    Figure(R, "| 11.2 s / {} s (0.29) |", SBS, ("time_s", "theirs"), "{:.1f}"),
    Figure(R, "| {} s / 38.4 s (0.29) |", SBS, ("time_s", "ours"), "{:.1f}"),
    Figure(R, "within 1e-3 relative | **969** | {} |", SBS, ("edges", "top1000_within_1e-3")),
    Figure(R, "adds\nat every feature and {}× at 2,048", SBS, ("ratios", "added_rss_ours_over_theirs"), "{:.2f}"),
    Figure(R, "| feature nodes in both | **{}** of 7,488 (the other 69", SBS_ALL, ("feature_nodes", "common")),
    Figure(R, "(the other 69: below) | {} of 2,048", SBS, ("feature_nodes", "common")),
    Figure(R, "| the same, circuit-tracer | {} /", SBS_ALL, ("scores", "theirs", "replacement"), "{:.3f}"),
    Figure(
        R,
        "| the same, circuit-tracer with its token edges scaled by √640 | {} /",
        SBS_ALL,
        ("scores", "theirs_tokens_scaled", "replacement"),
        "{:.3f}",
    ),
    Figure(R, "(median ratio {}, √640", SBS_ALL, ("token_edges", "median_ratio_ours_over_theirs"), "{:.4f}"),
    Figure(
        R,
        "the build adds {}× what circuit-tracer's attribute() adds",
        SBS_ALL,
        ("ratios", "added_rss_ours_over_theirs"),
        "{:.2f}",
    ),
    Figure(R, "| peak RSS over the build, ours / theirs | {} MB", SBS_ALL, ("peak_rss_mb", "ours"), "{:.0f}"),
    Figure(R, "**Error nodes carry {} of the influence on the metric", WHY2, ("error_influence",), "{:.3f}"),
    Figure(R, "the tokens {}** (the full graph's", WHY2, ("token_influence",), "{:.3f}"),
    Figure(R, "the same full graph: replacement score {}):", WHY2, ("full_graph", "replacement_score"), "{:.3f}"),
    Figure(
        R,
        "layers\n  0-3, whose transcoders explain {} of",
        WHY2,
        ("layers",),
        lambda v: spread("explained_variance")(v[:4]),
    ),
    Figure(
        R,
        "0-3, whose transcoders explain 0.87-0.98 of their MLP's variance, hold {} of it",
        WHY2,
        ("error_influence_layers_0_3",),
        "{:.3f}",
    ),
    Figure(R, "top next token is ` Kobe` (p = {})", WHY2, ("model_top_tokens", 0, 1), "{:.3f}"),
    Figure(R, "` Sacramento` has p = {} and", WHY2, ("p_good",), "{:.1e}"),
    Figure(R, "has p = 1.0e-04 and ` Albany` {}.", WHY2, ("p_bad",), "{:.1e}"),
    # the report's replacement stage: its time, the checks beside the SAE graph's, the California group
    Figure(R, "the replacement stage took {} s,", KR, ("timings", "replacement graph"), "{:.1f}"),
    Figure(R, "the full graph with its labels took {} s", KR, (*RP, "build_s"), "{:.1f}"),
    Figure(R, "| transcoders, full | {} | 234 |", KR, (*RP, "full", "features")),
    Figure(
        R, "at ≤ 100 features scores 0.351 / {}.", KR, (*RP, "budgets", "100", "completeness_score_removed"), "{:.3f}"
    ),
    Figure(R, "at both budgets ({} against", KR, (*RP, "budgets", "100", "faithfulness"), "{:.3f}"),
    Figure(R, "against {} at 100 features,", KR, (*RP, "sae_graph", "budgets", "100", "faithfulness"), "{:.3f}"),
    Figure(R, "features,\n{} against", KR, (*RP, "budgets", "60", "faithfulness"), "{:.3f}"),
    Figure(R, "against {} at 60)", KR, (*RP, "sae_graph", "budgets", "60", "faithfulness"), "{:.3f}"),
    Figure(R, "| 100 | {} | 0.259 |", KR, (*RP, "budgets", "100", "errors")),
    Figure(R, "| 60 | {} | 0.250 |", KR, (*RP, "budgets", "60", "errors")),
    Figure(R, "at {} nodes, 2 of them kept", KR, (*RP, "groups", "California", "nodes")),
    Figure(R, "nodes, {} of them kept", KR, (*RP, "groups", "California", "kept")),
    Figure(R, "changes the metric by {} (of", KR, (*RP, "groups", "California", "ablation"), signed(".3f")),
    Figure(R, "` Sacramento` by\n  {}, from", KR, (*RP, "groups", "California", "swap", "change"), signed(".3f")),
    Figure(R, "from {} (the top answer", KR, (*RP, "groups", "California", "swap", "before"), signed(".3f")),
    Figure(R, "Ours trains {}× faster (median of three", SPARSIFY, ("summary", "paired_speed_ratio"), "{:.2f}"),
    Figure(R, "| sparsify 1.3.3 `Trainer`, signum | {} |", SPARSIFY, (*ROWS, 1, "tokens_per_s"), "{:,.0f}"),
    Figure(R, "per-dimension normalisation | {} | 0.740", SPARSIFY, (*ROWS, 0, "tokens_per_s"), "{:,.0f}"),
    Figure(
        R, "trains at **{} tokens/s**", FITPEAK, (*B, "sae_train_topk[steady]", "extra_info", "tokens_per_s"), "{:,.0f}"
    ),
    Figure(R, "**{} of peak, short", FITPEAK, ("ratios", "fit_vs_peak", "ratio"), "{:.2f}"),
    Figure(R, "matmul peak of {} GFLOP/s", FITPEAK, (*B, "matmul_peak", "extra_info", "gflop_per_s"), "{:,.0f}"),
    Figure(R, "**cold {} min**", FIRST, ("cold_s",), lambda v: f"{v / 60:.1f}"),
    Figure(R, "**warm {} s**", FIRST, ("warm_s",), lambda v: f"{v:.0f}"),
    Figure(R, "built all ten v3 SAEs in {} min", QUALITY, ("build", "seconds"), lambda v: f"{v / 60:.1f}"),
    # --- README, Benchmarks: the ratio table, from summary.json (each row found by its label) -------------
    Figure(R, "(one run, {} threads", SUMMARY, ("machine", "torch_threads")),
    *(fig for row in RATIO_ROWS for fig in _ratio_figures(*row)),
    Figure(R, "CPU capability {}, bf16 native", SUMMARY, ("machine", "cpu_capability")),
    Figure(R, "bf16 native\n({}), so SAE", SUMMARY, ("machine", "bf16_evidence"), lambda v: v.replace(",", ", ")),
    # --- README, Benchmarks: the medians and the notes under the table ----------------------------------
    Figure(R, "Medians: plain forward {} ms", SUMMARY, (*B, "plain_forward", "median_s"), ms),
    Figure(R, "attribution {} ms, atp", SUMMARY, (*B, "grad_x_act_18_layers", "median_s"), ms),
    Figure(R, "atp {} ms, IG", SUMMARY, (*B, "atp_18_layers", "median_s"), ms),
    Figure(R, "IG {} s, 256 ablations", SUMMARY, (*B, "ig_18_layers_10_steps", "median_s"), "{:.1f}"),
    Figure(R, "256 ablations {} s.", SUMMARY, (*B, "ablate_256_nodes", "median_s"), "{:.1f}"),
    Figure(R, "Graph construction ({} SAE layers", SUMMARY, (*B, "build_graph_10_layers", "extra_info", "sae_layers")),
    Figure(R, "SAE layers, {} candidate nodes)", SUMMARY, (*B, "build_graph_10_layers", "extra_info", "nodes"), "{:,}"),
    Figure(R, "candidate nodes): {} s (target", SUMMARY, (*B, "build_graph_10_layers", "median_s"), "{:.1f}"),
    Figure(R, "s (target\n≤ {} s), peak memory", SUMMARY, (*B, "build_graph_10_layers", "target_s"), "{:g}"),
    Figure(
        R,
        "peak memory {} GB",
        SUMMARY,
        (*B, "build_graph_10_layers", "extra_info", "peak_rss_mb"),
        lambda v: f"{v / 1000:.1f}",
    ),
    Figure(
        R,
        "4,096 tokens: {} tokens/s in\nfloat32",
        SUMMARY,
        (*B, "sae_encode_decode[fp32]", "extra_info", "tokens_per_s"),
        hundreds,
    ),
    Figure(
        R, "float32, {} in bfloat16", SUMMARY, (*B, "sae_encode_decode[bf16]", "extra_info", "tokens_per_s"), hundreds
    ),
    Figure(
        R,
        "(batch 4,096, k 32): {} tokens/s",
        SUMMARY,
        (*B, "sae_train_topk[steady]", "extra_info", "tokens_per_s"),
        hundreds,
    ),
    Figure(
        R,
        "tokens/s; {} once the AuxK",
        SUMMARY,
        (*B, "sae_train_topk[auxk_every_step]", "extra_info", "tokens_per_s"),
        hundreds,
    ),
    # --- docs/benchmarks.md, circuit-tracer's half on random transcoders ------------------------------------------
    Figure(R, "k 16: {} active features;", CT, ("layout", "n_active_features"), "{:,}"),
    Figure(R, "it takes {} s for 1,024 feature", CT, ("timings", "attribute_s"), "{:.0f}"),
    Figure(R, "nodes (batch 32, peak RSS {} GB)", CT, ("memory", "peak_rss_attribute_mb"), lambda v: f"{v / 1024:.1f}"),
    Figure(R, "and {} s for all of them", CT_ALL, ("timings", "attribute_s"), "{:.0f}"),
    Figure(R, "(batch 64, peak RSS {} GB;", CT_ALL, ("memory", "peak_rss_attribute_mb"), lambda v: f"{v / 1024:.1f}"),
    Figure(R, "(load average {} and", CT, ("load_average", 0), "{:.1f}"),
    Figure(R, "and {} at the", CT_ALL, ("load_average", 0), "{:.1f}"),
    Figure(R, "logit difference {}, as ours", CT, ("target", "model_logit_diff"), signed(".4f")),
    # --- README, against SAELens: bench/results/saelens.json (and the earlier scalar run) ----------------------
    Figure(R, "**Against SAELens {}**", SAELENS, (*ROWS, 1, "trainer"), version),
    Figure(R, "code on {} held-out activations", SAELENS, ("inputs", "held_out_tokens"), "{:,}"),
    Figure(R, "| trainer ({} steps x", SAELENS, ("summary", "steps")),
    Figure(R, "steps x {} tokens) |", SAELENS, ("summary", "batch_size"), "{:,}"),
    Figure(
        R, "per-dimension normalisation (as the default SAEs) | {} |", SAELENS, (*ROWS, 0, "tokens_per_s"), "{:,.0f}"
    ),
    Figure(R, "| 8,382 | {} |", SAELENS, (*ROWS, 0, "explained_variance"), "{:.3f}"),
    Figure(R, "| 0.626 | {} |", SAELENS, (*ROWS, 0, "dead_fraction"), "{:.1%}"),
    Figure(R, "| 0.0% | **{}** |", SAELENS, (*ROWS, 0, "ce_loss_recovered"), "{:.3f}"),
    Figure(R, "| SAELens defaults | {} |", SAELENS, (*ROWS, 1, "tokens_per_s"), "{:,.0f}"),
    Figure(R, "| 3,471 | {} |", SAELENS, (*ROWS, 1, "explained_variance"), minus(".3g")),
    Figure(R, "| −5.97 | {} |", SAELENS, (*ROWS, 1, "dead_fraction"), "{:.1%}"),
    Figure(R, "| 96.1% | {} |", SAELENS, (*ROWS, 1, "ce_loss_recovered"), "{:.3f}"),
    Figure(R, "| SAELens, b_dec set to the data mean | {} |", SAELENS, (*ROWS, 2, "tokens_per_s"), "{:,.0f}"),
    Figure(R, "| 3,578 | {} |", SAELENS, (*ROWS, 2, "explained_variance"), "{:.3f}"),
    Figure(R, "| 0.441 | {} |", SAELENS, (*ROWS, 2, "dead_fraction"), "{:.1%}"),
    Figure(R, "| 50.6% | {} |", SAELENS, (*ROWS, 2, "ce_loss_recovered"), "{:.3f}"),
    Figure(R, "Ours trains {}x faster", SAELENS, ("summary", "paired_speed_ratio"), "{:.1f}"),
    Figure(R, "(median of {} paired 12-step rounds", SAELENS, ("paired_speed",), len),
    Figure(R, "rounds; {}x on the wall times above)", SAELENS, ("summary", "speed_ratio_ours_over_saelens"), "{:.1f}"),
    Figure(R, "ours had EV {} but CE loss", SAELENS_SCALAR, (*ROWS, 0, "explained_variance"), "{:.3f}"),
    Figure(R, "recovered {} against SAELens's", SAELENS_SCALAR, (*ROWS, 0, "ce_loss_recovered"), "{:.3f}"),
    Figure(R, "against SAELens's {}: EV there", SAELENS_SCALAR, (*ROWS, 2, "ce_loss_recovered"), "{:.3f}"),
    # --- README, Measured on the default model: python -m attribution run, from run.json --------------------
    Figure(R, "metric = {} (corrupt:", RUN, ("metric",), "{:+.3f}"),
    Figure(R, "(corrupt: {})\n", RUN, ("baseline",), "{:+.3f}"),
    Figure(R, AGREE + r"Pearson r = ([\d.]+),", RUN, ("agreement", "pearson"), "{:.3f}", regex=True),
    Figure(
        R, AGREE + r"Pearson r = [\d.]+, Spearman rho = ([\d.]+),", RUN, ("agreement", "spearman"), "{:.3f}", regex=True
    ),
    *(
        Figure(R, rf"\ntop-10 {pre}(\d+)%", RUN, ("agreement", "top_k", k), percent, regex=True)
        for k, pre in (("10", ""), ("20", r"\d+%, top-20 "), ("50", r"\d+%, top-20 \d+%, top-50 "))
    ),
    Figure(
        R, r"top-50 \d+%, same sign (\d+)%, relative error", RUN, ("agreement", "sign_agreement"), percent, regex=True
    ),
    Figure(R, r"same sign \d+%, relative error ([\d.]+)\n", RUN, ("agreement", "relative_error"), "{:.2f}", regex=True),
    Figure(R, "time: load {}s, attribution", RUN, ("seconds", "load"), "{:.1f}"),
    Figure(R, "s, attribution {}s (", RUN, ("seconds", "attribution"), "{:.2f}"),
    Figure(R, "s ({} nodes), 100 ablations", RUN, ("n_nodes",)),
    Figure(R, "nodes), 100 ablations {}s\n", RUN, ("seconds", "ablation"), "{:.2f}"),
    # --- README, Reliability: the long-prompt table, from long_prompt.json ------------------------------------
    *(
        Figure(R, f"| `{name}`: {what} | {{}} s |", LONG, ("runs", i, "seconds"), "{:.0f}")
        for i, (name, what) in enumerate(LONG_ROWS)
    ),
    *(
        Figure(R, f" s | {{}} GiB |\n{nxt}", LONG, ("runs", i, "peak_gib"), "{:.1f}")
        for i, nxt in enumerate(("| `ablate`", "| `build_graph`", "\nMeasured on a"))
    ),
    # --- README, Case studies: from the committed reports ----------------------------------------------------
    Figure(R, "` sad` − ` happy` = {} |", EMOTION, ("metric",), signed(".3f")),
    Figure(R, "` Sacramento` − ` Albany` = {} |", MULTIHOP, ("metric",), signed(".3f")),
    Figure(R, "Pearson / Spearman | {} / ", EMOTION, ("agreement", "pearson"), "{:.3f}"),
    Figure(R, r"Pearson / Spearman \| [\d.]+ / ([\d.]+) \|", EMOTION, ("agreement", "spearman"), "{:.3f}", regex=True),
    Figure(
        R,
        r"Pearson / Spearman \| [\d.]+ / [\d.]+ \| ([\d.]+) /",
        MULTIHOP,
        ("agreement", "pearson"),
        "{:.3f}",
        regex=True,
    ),
    Figure(
        R,
        r"Pearson / Spearman \| [\d.]+ / [\d.]+ \| [\d.]+ / ([\d.]+) \|",
        MULTIHOP,
        ("agreement", "spearman"),
        "{:.3f}",
        regex=True,
    ),
    Figure(R, r"\| same sign \| (\d+)% \|", EMOTION, ("agreement", "sign_agreement"), percent, regex=True),
    Figure(R, r"\| same sign \| \d+% \| (\d+)% \|", MULTIHOP, ("agreement", "sign_agreement"), percent, regex=True),
    Figure(R, r"by attribution / by activation \| (\d+)% /", EMOTION, CAPTURED_ATTR, percent, regex=True),
    Figure(R, r"by attribution / by activation \| \d+% / (\d+)% \|", EMOTION, CAPTURED_ACT, percent, regex=True),
    Figure(
        R, r"by attribution / by activation \| \d+% / \d+% \| (\d+)% /", MULTIHOP, CAPTURED_ATTR, percent, regex=True
    ),
    Figure(
        R,
        r"by attribution / by activation \| \d+% / \d+% \| \d+% / (\d+)% \|",
        MULTIHOP,
        CAPTURED_ACT,
        percent,
        regex=True,
    ),
    Figure(R, r"model load included\) \| ([\d.]+) s \|", EMOTION, ("timings", "total"), "{:.1f}", regex=True),
    Figure(
        R, r"model load included\) \| [\d.]+ s \| ([\d.]+) s \(", MULTIHOP, ("timings", "total"), "{:.1f}", regex=True
    ),
    Figure(R, "`resid_post.9` carries {} of the attribution", EMOTION, ("error_attribution",), signed(".2f")),
    Figure(R, "and the\nfeatures {}. The top", EMOTION, ("feature_attribution",), signed(".2f")),
    Figure(R, "The top feature, f{} at ` feels`", EMOTION, ("top_attribution", 0, "feature")),
    Figure(R, "is estimated\nat {} and really", EMOTION, ("top_attribution", 0, "attribution"), signed(".3f")),
    Figure(R, "really moves the metric by {}. Clamped", EMOTION, ("top_attribution", 0, "effect"), signed(".3f")),
    Figure(R, "Clamped to 0 the metric falls to\n{};", EMOTION, ("steering", "clamps", 1, "metric"), signed(".2f")),
    Figure(R, "5× its maximum it rises to {}. Labels", EMOTION, ("steering", "clamps", 2, "metric"), signed(".2f")),
    Figure(R, "The top node is `resid_post.16` f{} at ` is`", MULTIHOP, ("top_attribution", 0, "feature")),
    Figure(R, "`, {} estimated /", MULTIHOP, ("top_attribution", 0, "attribution"), signed(".3f")),
    Figure(R, "estimated /\n{} real); place", MULTIHOP, ("top_attribution", 0, "effect"), signed(".3f")),
    Figure(R, "(≤ 60 feature nodes, {} error nodes)", MULTIHOP, ("graph", "error nodes")),
    Figure(R, "scores faithfulness {} and completeness", MULTIHOP, ("graph", "faithfulness"), "{:.3f}"),
    Figure(R, "and completeness\n{} (zero ablation", MULTIHOP, ("graph", "completeness"), "{:.3f}"),
    Figure(R, "the features' attributions sum to {} and", MULTIHOP, ("feature_attribution",), signed(".2f")),
    Figure(R, "and the error nodes' to\n{}. But by", MULTIHOP, ("error_attribution",), signed(".2f")),
    Figure(R, "kept) the metric is {} of +1.707", MULTIHOP, ("graph", "check"), empty),
    *(  # docs/graphs.md's v3 layer table, cell by cell
        Figure(
            R,
            rf"\| v3: {re.escape(label)} \|" + r" [^|]+ \|" * i + r" ([−+][\d.]+) \|",
            MULTIHOP,
            ("graph", "layers", i, key),
            signed(".2f"),
            regex=True,
        )
        for label, key in (("the layer's features carry", "carried"), ("the graph keeps there", "graph"))
        for i in range(10)
    ),
    # --- README, the front page's headline figures ---------------------------------------------------------------
    Figure(FRONT, "Pearson r | emotion **{}**, multi-hop", EMOTION, ("agreement", "pearson"), "{:.3f}"),
    Figure(FRONT, "multi-hop **{}** | [case studies]", MULTIHOP, ("agreement", "pearson"), "{:.3f}"),
    Figure(FRONT, "| **{}** over 100 nodes |", RUN, ("agreement", "pearson"), "{:.3f}"),
    Figure(
        FRONT,
        "all 18 layers, against one plain forward | **{}** (target",
        SUMMARY,
        ("ratios", "grad_x_act", "local_ratio"),
        "{:.3g}",
    ),
    Figure(
        FRONT,
        r"all 18 layers, against one plain forward \| \*\*[\d.]+\*\* \(target ≤ ([\d.]+)\)",
        SUMMARY,
        ("ratios", "grad_x_act", "target"),
        target,
        regex=True,
    ),
    Figure(
        FRONT, "against 256 plain forwards | **{}** (target", SUMMARY, ("ratios", "ablations", "local_ratio"), "{:#.2g}"
    ),
    Figure(
        FRONT,
        r"against 256 plain forwards \| \*\*[\d.]+\*\* \(target ≤ ([\d.]+)\)",
        SUMMARY,
        ("ratios", "ablations", "target"),
        target,
        regex=True,
    ),
    Figure(FRONT, "empty cache / warm | **{} min** /", FIRST, ("cold_s",), lambda v: f"{v / 60:.1f}"),
    Figure(FRONT, "min** / **{} s** | [first run]", FIRST, ("warm_s",), lambda v: f"{v:.0f}"),
    Figure(
        FRONT,
        r"EV / CE loss recovered \| \*\*([\d.]+)\*\* /",
        QUALITY,
        ("resid_post.9", "reference_text", "explained_variance"),
        "{:.3f}",
        regex=True,
    ),
    Figure(
        FRONT,
        r"EV / CE loss recovered \| \*\*[\d.]+\*\* / \*\*([\d.]+)\*\* \|",
        QUALITY,
        ("resid_post.9", "reference_text", "ce_loss_recovered"),
        "{:.3f}",
        regex=True,
    ),
    Figure(FRONT, "speed against SAELens {} / sparsify", SAELENS, (*ROWS, 1, "trainer"), version),
    Figure(
        FRONT, "/ sparsify {} |", SPARSIFY, (*ROWS, 1, "trainer"), lambda v: re.search(r"sparsify (\S+)", v).group(1)
    ),
    Figure(FRONT, "| **{}x** / **", SAELENS, ("summary", "paired_speed_ratio"), "{:.1f}"),
    Figure(FRONT, "x** / **{}×** faster |", SPARSIFY, ("summary", "paired_speed_ratio"), "{:.2f}"),
    Figure(FRONT, "the Kobe graph at ≤ {} features", MULTIHOP, ("graph", "feature nodes")),
    Figure(FRONT, "not met, and why) | **{}** |", MULTIHOP, ("graph", "faithfulness"), "{:.3f}"),
    # --- docstrings ---------------------------------------------------------------------------------------------
    Figure(
        "bench/peers/saelens_side_by_side.py",
        r"Measured with sae-lens (\S+) \(",
        SAELENS,
        (*ROWS, 1, "trainer"),
        version,
        regex=True,
    ),
]


@cache
def _read(path: str) -> str:
    return (ROOT / path).read_text(encoding="utf-8")


def _docs(doc: str) -> list[str]:
    """The files a figure's row may find it in: DOCS is the README and every docs/ page, else the one file."""
    if doc != DOCS:
        return [doc]
    return ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("**/*.md"))]


def _quoting(text: str, doc: str = DOCS) -> list[str]:
    """The files (of doc's) that quote text."""
    return [d for d in _docs(doc) if text in _read(d)]


def _lookup(data, key: tuple):
    for k in key:
        data = data[k]
    return data


FIGURES += SUITE_FIGURES + TSUITE_FIGURES

TCG = "bench/results/transcoder_graphs_v2.json"  # python -m studies.transcoder_graphs
TC_FIGURES = [
    Figure(R, "replacement score {} →", WHY, ("full_graph", "replacement_score"), "{:.3f}"),
    Figure(R, "→\n**{}**, completeness", WHY2, ("full_graph", "replacement_score"), "{:.3f}"),
    Figure(R, "completeness {} → **", WHY, ("full_graph", "completeness_score"), "{:.3f}"),
    Figure(R, "→ **{}**; error nodes carry", WHY2, ("full_graph", "completeness_score"), "{:.3f}"),
    Figure(R, "error nodes carry {} of the influence on the metric\n(v1", WHY2, ("error_influence",), "{:.3f}"),
    Figure(R, "(v1: {}). Over the two-hop", WHY, ("error_influence",), "{:.3f}"),
    Figure(R, "Over the two-hop suite's {} prompts", TCG, ("prompts",), len),
    Figure(FRONT, "completeness, v1 → v2 | {} →", WHY, ("full_graph", "replacement_score"), "{:.3f}"),
    Figure(FRONT, "v1 → v2 | 0.399 → **{}** /", WHY2, ("full_graph", "replacement_score"), "{:.3f}"),
    Figure(FRONT, "/ {} → **", WHY, ("full_graph", "completeness_score"), "{:.3f}"),
    Figure(FRONT, "0.792 → **{}** |", WHY2, ("full_graph", "completeness_score"), "{:.3f}"),
    Figure(FRONT, "≥ 0.8) | **{}** / **", TCG, ("median", "pruned_replacement"), "{:.3f}"),
    Figure(FRONT, "two-hop prompts, ≤ {} features: median", TCG, ("max_features",), "{}"),
]
TCQ, TCQ1 = "bench/results/default_transcoders_quality.json", "bench/results/default_transcoders_quality_v1.json"
TCR = "bench/results/default_transcoders_reference.json"
LP = "bench/results/replacement_longest.json"  # bench.peers.replacement_length_curve (its commands inside)


def _fitting(fits: bool, pick: Callable) -> Callable:
    return lambda tried: f"{pick(t['tokens'] for t in tried if t['fits'] == fits):,}"


# python -m attribution transcoders --evaluate --report


def spread(field: str) -> Callable:
    """'lo-hi' of a field over the quality report's layers, to 2 decimals (the range the prose quotes)."""
    return lambda rows: f"{min(r[field] for r in rows):.2f}-{max(r[field] for r in rows):.2f}"


TC_FIGURES += [
    Figure(R, "at every layer\n({} to 0.65", TCQ1, ("transcoders",), spread("explained_variance")),
    Figure(R, "0.45-0.97 to {}) and CE", TCQ, ("transcoders",), spread("explained_variance")),
    Figure(R, "recovered too ({} to", TCQ1, ("transcoders",), spread("ce_loss_recovered")),
    Figure(R, "0.37-0.90 to {}). Issue", TCQ, ("transcoders",), spread("ce_loss_recovered")),
    Figure(R, "at every layer ({} here)", TCQ, ("transcoders",), spread("features_on_rest")),
    Figure(
        R,
        "On Debian's text every\nfigure is lower (EV {},",
        TCR,
        ("transcoders",),
        lambda rows: spread("x")([{"x": r["reference"]["explained_variance"]} for r in rows]),
    ),
    Figure(
        R,
        "features on rest {}, CE",
        TCR,
        ("transcoders",),
        lambda rows: spread("x")([{"x": r["reference"]["features_on_rest"]} for r in rows]),
    ),
    Figure(
        R,
        "CE rec. {}): the transcoders",
        TCR,
        ("transcoders",),
        lambda rows: spread("x")([{"x": r["reference"]["ce_loss_recovered"]} for r in rows]),
    ),
    Figure(
        R,
        "is dead ({} at every layer)",
        TCR,
        ("transcoders",),
        lambda rows: f"{max(r['dead_reference'] for r in rows):.2%}",
    ),
    Figure(
        R, "the up to {} of the", TCQ, ("transcoders",), lambda rows: f"{max(r['dead_fraction'] for r in rows):.0%}"
    ),
    Figure(R, "v2 transcoders explain {} of the variance", TCQ, ("transcoders",), spread("explained_variance")),
]
TC_FIGURES.append(
    Figure(R, "held-out documents, {} tokens;", "bench/results/transcoder_recipe.json", ("eval_tokens",), "{:,}")
)
TCC = "bench/results/transcoder_curve.json"  # python -m studies.transcoder_curve
TCC4 = "bench/results/transcoder_curve_t4M.json"  # ... --tokens 4000000 --forward bench/results/transcoder_curve.json


def curve_spread(get: Callable, rows: Callable = lambda d: d["layers"], fmt: str = "{:.2f}") -> Callable:
    """'lo-hi' of get(layer row) over the curve study's rows (rows(data) picks them), as the prose quotes it."""
    return lambda d: "-".join(fmt.format(f(get(r) for r in rows(d))) for f in (min, max))


def _below(d: dict) -> list:
    return [r for r in d["layers"] if r["train_ev_last10_mean"] < d["target"]]


TC_FIGURES += [
    Figure(R, "with b = {} (r²", TCC, (), curve_spread(lambda r: r["fit"]["b"])),
    Figure(R, "(r² {}). Fitted", TCC, (), curve_spread(lambda r: r["fit"]["r2"])),
    Figure(R, "mean to within {} (median", TCC, ("summary", "median_backtest_error"), "{:.3f}"),
    Figure(R, "the {} layers below 0.5 now", TCC, (), lambda d: str(len(_below(d)))),
    Figure(R, "(all from layer {} on)", TCC, (), lambda d: _below(d)[0]["hook"].split(".")[1]),
    Figure(
        R, "reach it between {}M and", TCC, (), lambda d: f"{min(r['tokens_for_target'] for r in _below(d)) / 1e6:.0f}"
    ),
    Figure(
        R,
        "and {}M\ntokens (layer 16 last",
        TCC,
        (),
        lambda d: f"{max(r['tokens_for_target'] for r in _below(d)) / 1e6:.0f}",
    ),
    Figure(R, "at 8M they stand at {}), about", TCC, (), curve_spread(lambda r: r["projected"]["8000000"], _below)),
    Figure(R, "about {} h more", TCC, (), lambda d: f"{max(r['hours_for_target'] for r in d['layers']):.0f}"),
    Figure(FRONT, "fresh batches to {}, erring high)", TCC4, ("summary", "median_forward_error"), "{:.3f}"),
    Figure(
        FRONT, "erring high) | **~{}M** (fitted", TCC4, ("summary", "max_tokens_for_target"), lambda v: f"{v / 1e6:.0f}"
    ),
    Figure(R, "build's rate of {}\ntokens/s", TCC, ("build_rate_tokens_per_s",), "{:.0f}"),
    Figure(
        R,
        "sits {} below the training",
        TCC,
        (),
        curve_spread(lambda r: r["train_ev_last10_mean"] - r["heldout_features_on_rest"], lambda d: d["layers"][5:]),
    ),
]
TC_FIGURES += [
    Figure(R, "accepts the document at {} tokens and refuses", LP, ("bisect", "tried"), _fitting(True, max)),
    Figure(R, "and refuses it at {} (bisected", LP, ("bisect", "tried"), _fitting(False, min)),
    Figure(R, "The largest built and measured: {} tokens", LP, ("build", "prompt_tokens"), "{:,}"),
    Figure(R, "8 feature rows, {} s, peak", LP, ("build", "timings", "build_graph_s"), "{:.0f}"),
    Figure(R, "peak resident {} GiB (8.5", LP, ("build", "memory", "peak_rss_build_mb"), lambda v: f"{v / 1024:.1f}"),
    Figure(R, "(8.5 GiB added; planned {} GiB)", LP, ("build", "plan", "estimate_bytes"), lambda v: f"{v / 2**30:.1f}"),
    Figure(R, "replacement / completeness {} / 0.68. Its", LP, ("build", "scores", "replacement"), "{:.2f}"),
    Figure(R, "replacement / completeness 0.35 / {}. Its", LP, ("build", "scores", "completeness"), "{:.2f}"),
]
FIGURES += TC_FIGURES
TCL = "bench/results/transcoder_labels.json"  # python -m studies.transcoder_labels (docs/explanations.md)
KS, ES = ("prompts", "kobe", "summary"), ("prompts", "eiffel_language", "summary")
FIGURES += [
    Figure(R, "It is evidence for {}% of the", TCL, ("layers", "resid_mid.0", "input"), percent),
    Figure(R, "`resid_mid.0`, {}% at `resid_mid.3`", TCL, ("layers", "resid_mid.3", "input"), percent),
    Figure(R, "and {}% from `resid_mid.4` on", TCL, ("layers", "resid_mid.4", "input"), percent),
    Figure(R, "0.98): labels with evidence {}% →", TCL, (*KS, "old_with_evidence"), percent),
    Figure(R, "labels with evidence 70% → {}%;", TCL, (*KS, "with_evidence"), percent),
    Figure(R, "the {}% that had none", TCL, (*KS, "old_unmarked_soup"), percent),
    Figure(R, "and now {}% are marked", TCL, (*KS, "mixed"), percent),
    Figure(R, "French prompt: {}% →", TCL, (*ES, "old_with_evidence"), percent),
    Figure(R, "→\n{}%, and 27% marked", TCL, (*ES, "with_evidence"), percent),
    Figure(R, "and {}% marked. On both", TCL, (*ES, "mixed"), percent),
    Figure(R, "evidence for {}% and 0% of the top nodes", TCL, (*KS, "promoted_evidence"), percent),
    Figure(R, "and {}% of the top nodes: their", TCL, (*ES, "promoted_evidence"), percent),
    Figure(R, "carries a median {} of the effect", TCL, (*ES, "median_direct_share_early"), "{:.2f}"),
    Figure(R, "Eiffel graph ({} on Kobe's)", TCL, (*KS, "median_direct_share_early"), "{:.2f}"),
    Figure(R, "and {} at layers 9-17", TCL, (*ES, "median_direct_share_late"), "{:.2f}"),
    Figure(R, "9-17 ({} on Kobe's)", TCL, (*KS, "median_direct_share_late"), "{:.2f}"),
    Figure(R, "top 5 for {}% of the Kobe", TCL, (*KS, "lens_top_in_frozen_top5_late"), percent),
    Figure(R, "late nodes ({}% on the", TCL, (*ES, "lens_top_in_frozen_top5_late"), percent),
]

HS = "bench/results/heads_suite.json"  # python -m studies.heads_suite
G = "docs/graphs.md"
CHECKED = ("checked_by_intervention", "max_rel_diff")
EIFFEL, TOKYO = ("prompts", 0), ("prompts", 1)
HEADS_FIGURES = [
    Figure(G, "every kept edge split: {} and", HS, (*EIFFEL, "edges_split"), "{:,}"),
    Figure(G, "split: 4,876 and {} edges", HS, (*TOKYO, "edges_split"), "{:,}"),
    Figure(G, "edges, in {} s and", HS, (*EIFFEL, "seconds_heads"), "{:.0f}"),
    Figure(G, "s and {} s (the graphs", HS, (*TOKYO, "seconds_heads"), "{:.0f}"),
    Figure(G, "the graphs took {} s and", HS, (*EIFFEL, "seconds_graph"), "{:.0f}"),
    Figure(G, "s and {} s); the", HS, (*TOKYO, "seconds_graph"), "{:.0f}"),
    Figure(G, "float32 edges within {} and", HS, (*EIFFEL, "gap"), "{:.1e}"),
    Figure(G, "and {} of the largest edge", HS, (*TOKYO, "gap"), "{:.1e}"),
    Figure(G, "(`intervened`) to {} and", HS, (*EIFFEL, *CHECKED), "{:.1e}"),
    Figure(G, "and {} of the edge;", HS, (*TOKYO, *CHECKED), "{:.1e}"),
    Figure(G, "(layer 3) → metric, weight {},", HS, (*EIFFEL, "into_metric", 0, "weight"), signed(".3f")),
    Figure(G, "weight +1.686, is {} through", HS, (*EIFFEL, "into_metric", 0, "heads", 0, 2), signed(".3f")),
    Figure(G, "layer 11 head 1, {} through layer 12", HS, (*EIFFEL, "into_metric", 0, "heads", 1, 2), signed(".3f")),
    Figure(G, "head 2 and {} through layer 11 head 3", HS, (*EIFFEL, "into_metric", 0, "heads", 2, 2), signed(".3f")),
    Figure(G, "` Tokyo` → metric, {}, is", HS, (*TOKYO, "into_metric", 0, "weight"), signed(".3f")),
    Figure(G, "+1.785, is {} through layer 12", HS, (*TOKYO, "into_metric", 0, "heads", 0, 2), signed(".3f")),
    Figure(G, "head 2, {} through layer 11 head 1", HS, (*TOKYO, "into_metric", 0, "heads", 1, 2), signed(".3f")),
    Figure(G, "head 1 and {} through layer 12 head 1", HS, (*TOKYO, "into_metric", 0, "heads", 2, 2), signed(".3f")),
    Figure(G, "no direct part ({} of", HS, (*EIFFEL, "edges_with_no_direct_part"), "{:,}"),
    Figure(G, "3,355 of {} and", HS, (*EIFFEL, "edges_counted"), "{:,}"),
    Figure(G, "{} of 5,718)", HS, (*TOKYO, "edges_with_no_direct_part"), "{:,}"),
    Figure(G, "3,931 of {})", HS, (*TOKYO, "edges_counted"), "{:,}"),
    Figure(G, "carry a median {} and", HS, (*EIFFEL, "median_top3_of_heads_abs"), "{:.3f}"),
    Figure(G, "and {} of its heads'", HS, (*TOKYO, "median_top3_of_heads_abs"), "{:.3f}"),
    Figure(G, "no head carries more\n  than {} of", HS, (*TOKYO, "heads_by_mass", 0, 2), "{:.3f}"),
    Figure(G, "on Eiffel the most is {}, layer", HS, (*EIFFEL, "heads_by_mass", 0, 2), "{:.3f}"),
]
HEADS_FIGURES += [
    Figure(FRONT, "within **{}** /", HS, (*EIFFEL, *CHECKED), "{:.1e}"),
    Figure(FRONT, "/ **{}** of the edge |", HS, (*TOKYO, *CHECKED), "{:.1e}"),
]
FIGURES += HEADS_FIGURES
SPTC = "bench/results/sparsify_transcoder.json"  # python -m bench.peers.sparsify_transcoder_side_by_side (docs)
SR = ("summary", "rows")
FIGURES += [
    Figure(
        R, "Ours trains {}× faster (median of three paired 48-step", SPTC, ("summary", "paired_speed_ratio"), "{:.2f}"
    ),
    Figure(R, "rounds; {}× on the whole runs' wall", SPTC, ("summary", "speed_ratio_ours_over_sparsify"), "{:.2f}"),
    Figure(R, "of the MLP's output (EV {} against", SPTC, (*SR, 0, "explained_variance"), "{:.3f}"),
    Figure(R, "against {} with its skip connection,", SPTC, (*SR, 1, "explained_variance"), "{:.3f}"),
    Figure(R, "with its skip connection,\n{} without)", SPTC, (*SR, 2, "explained_variance"), "{:.3f}"),
    Figure(R, "dead on the held-out text ({} with", SPTC, (*SR, 1, "dead_fraction"), "{:.1%}"),
    Figure(R, "the skip connection, {} without), and", SPTC, (*SR, 2, "dead_fraction"), "{:.1%}"),
    Figure(R, "MLP does (CE rec. {}). The diagnostic", SPTC, (*SR, 1, "ce_loss_recovered"), "{:.3f}"),
    Figure(R, "the same trainer reaches EV {} with", SPTC, (*SR, 3, "explained_variance"), "{:.3f}"),
    Figure(R, "reaches EV 0.742 with\n{} dead", SPTC, (*SR, 3, "dead_fraction"), "{:.1%}"),
]


def test_heads_suite_names_the_heads_it_quotes():
    """The heads the prose names (layer, head) are the result file's, in its order."""
    data = json.loads(_read(HS))["prompts"]
    assert [h[:2] for h in data[0]["into_metric"][0]["heads"]] == [[11, 1], [12, 2], [11, 3]]
    assert [h[:2] for h in data[1]["into_metric"][0]["heads"]] == [[12, 2], [11, 1], [12, 1]]
    assert (
        data[0]["into_metric"][0]["source"] == "resid_mid.3:11:err" and data[1]["into_metric"][0]["source"] == "tok:11"
    )
    assert data[1]["heads_by_mass"][0][:2] == [1, 2] and data[0]["heads_by_mass"][0][:2] == [11, 1]
    assert data[0]["into_metric"][0]["direct"] == 0 and data[1]["into_metric"][0]["direct"] == 0


def _qk(name: str) -> Callable:
    """A figure studies.qk_suite computes from the whole result (its function `name`)."""

    def shown(result: dict) -> str:
        import studies.qk_suite

        return str(getattr(studies.qk_suite, name)(result))

    return shown


QKS, G = "bench/results/qk_suite.json", "docs/graphs.md"  # python -m studies.qk_suite
FIGURES += [
    Figure(G, "(`bench/results/qk_suite.json`: AMX CPU, {} s with", QKS, ("seconds",), "{:.0f}"),
    Figure(G, "removing each of the {} nodes", QKS, ("summary", "removals"), "{}"),
    Figure(G, "drop to within {} of the largest", QKS, ("summary", "frozen_max_error"), "{:.0e}"),
    Figure(G, "for {} of the 9 heads the top node pair", QKS, (), _qk("bos_tops")),
    Figure(G, "of the {} heads the top node pair", QKS, ("summary", "heads"), "{}"),
    Figure(G, "with the predicted sign for {} heads", QKS, (), _qk("away_agree")),
    Figure(G, "Over all {} nodes predicted", QKS, ("summary", "predicted_over_0_1"), "{}"),
    Figure(G, "for {} (median measured", QKS, ("summary", "real_sign_agrees"), "{}"),
    Figure(G, "measured / predicted {})", QKS, ("summary", "real_median_ratio"), "{:.2f}"),
    Figure(G, "for {} only: removing a whole node", QKS, ("summary", "first_order_sign_agrees"), "{}"),
    Figure(G, "median {}% of |score|", QKS, ("summary", "median_bias_bias_share"), percent),
]


@pytest.mark.parametrize("fig", FIGURES, ids=lambda f: f"{f.doc}:{f.text[:40]}")
def test_quoted_figure_equals_its_source(fig):
    value = _lookup(json.loads(_read(fig.source)), fig.key)
    shown = fig.shown(value)
    where = f"{fig.source} {'/'.join(map(str, fig.key))} = {value!r}"
    if fig.regex:  # every match, in every file the row covers, must show the source's figure
        found = [(doc, m.group(1)) for doc in _docs(fig.doc) for m in re.finditer(fig.text, _read(doc))]
        assert found, f"{fig.doc} no longer quotes {fig.text!r}: remove or fix its row in FIGURES"
        for doc, quoted in found:
            assert quoted == shown, f"{doc} quotes {quoted!r}, but {where} reads {shown!r}"
    else:
        quoted = fig.text.replace("{}", shown)
        assert _quoting(quoted, fig.doc), f"{fig.doc} should quote {quoted!r} ({where}); fix the text or the table row"


def test_every_figure_is_quoted_once_where_the_table_says():
    """A quoted text that appears twice would let a stale copy pass; one {} per row keeps rows simple."""
    for fig in FIGURES:
        assert fig.text.count("{}") == (0 if fig.regex else 1), fig
        if not fig.regex:
            quoted = fig.text.replace("{}", fig.shown(_lookup(json.loads(_read(fig.source)), fig.key)))
            assert sum(_read(doc).count(quoted) for doc in _docs(fig.doc)) == 1, quoted


@pytest.mark.parametrize("path", [QUALITY, QUALITY_V2])
def test_readme_quality_table_is_the_committed_quality_report(path):
    """The default SAEs' tables (v3, and v2 beside it) are quality_table() of the committed reports."""
    from attribution.training.quality import quality_table

    assert _quoting(quality_table(json.loads(_read(path))))


def test_readme_run_rows_are_those_of_run_json():
    """The node rows the README shows from `python -m attribution run` are run.json's, as the CLI prints them."""
    nodes = {(n["hook"], n["position"]): n for n in json.loads(_read(RUN))["nodes"]}
    row = r"^ *(resid_post\.\d+) +(\d+) +'.*?' +whole +([+-][\d.]+) +([+-][\d.]+)$"
    shown = [found for doc in _docs(DOCS) for found in re.findall(row, _read(doc), re.M)]
    assert len(shown) >= 5
    for hook, pos, estimate, effect in shown:
        n = nodes[(hook, int(pos))]
        assert (estimate, effect) == (f"{n['attribution']:+.3f}", f"{n['effect']:+.3f}"), (hook, pos)


def test_readme_california_table_is_the_committed_search():
    """The contrast-search table (v2 beside v3) is studies.california.table() of the committed results."""
    from studies.california import table

    assert _quoting(table(json.loads(_read("bench/results/california.json"))))


def test_readme_curve_table_is_the_committed_curve():
    """The middle SAE's quality-against-tokens table is studies.sae_curve.table() of the committed curve."""
    from studies.sae_curve import table

    assert _quoting(table(json.loads(_read("bench/results/default_saes_curve.json"))))


def test_readme_label_tables_are_the_committed_measurement():
    """The label-evidence table (v2 beside v3) and the emotion features' labels come from label_evidence.json."""
    from studies.label_evidence import emotion_table, table

    results = json.loads(_read("bench/results/label_evidence.json"))
    assert _quoting(table(results)) and _quoting(emotion_table(results, "v3"))


def test_every_docs_page_is_linked_from_the_front_page_and_every_link_resolves():
    """The README is the front page: each docs/ page is one link away, and no relative link (page or image) in
    the README or the docs points at a file that is not there; the screenshots stay small PNGs."""
    links = {doc: re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", _read(doc)) for doc in _docs(DOCS)}
    front = {(ROOT / link).resolve() for link in links[FRONT]}
    for page in _docs(DOCS)[1:]:
        assert (ROOT / page).resolve() in front, f"README.md does not link {page}"
    for doc, targets in links.items():
        for link in targets:
            if not re.match(r"[a-z]+:", link):  # http:, mailto: ... are not files
                assert ((ROOT / doc).parent / link).is_file(), f"{doc} links {link}, which does not exist"
    for image in ("docs/img/report.png", "docs/img/graph.png"):
        assert image in links[FRONT]
        data = (ROOT / image).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) < 300_000, image


def test_transcoder_recipe_and_graph_tables_are_the_committed_studies():
    """The recipe table (issue 21, part 1) and the suite's median graph scores with the v2 transcoders."""
    from studies.transcoder_graphs import layer_shares
    from studies.transcoder_graphs import table as graph_table
    from studies.transcoder_recipe import table as recipe_table

    doc = _read("docs/replacement.md")
    assert recipe_table(json.loads(_read("bench/results/transcoder_recipe.json"))) in doc
    graphs = json.loads(_read(TCG))
    assert graph_table(graphs) in doc and layer_shares(graphs) in doc
    from studies.transcoder_graphs import compare

    longer = json.loads(_read(TCG4))  # the same recipe on 4M tokens
    assert compare(graphs, longer) in doc and layer_shares(longer) in doc


def test_qk_suite_table_is_the_committed_study():
    """The QK table of docs/graphs.md is studies.qk_suite.table() of the committed result."""
    from studies.qk_suite import table

    assert table(json.loads(_read(QKS))) in _read(G)


def test_transcoder_quality_table_is_the_committed_report():
    from attribution.training.transcoder_defaults import quality_table

    rows = json.loads(_read(TCR))["transcoders"]  # the quality report's rows, with the Debian columns added
    assert quality_table(rows) in _read("docs/replacement.md")
    held = json.loads(_read(TCQ))["transcoders"]
    assert [
        {k: v for k, v in r.items() if k not in ("reference", "dead_reference", "dead_tokens")} for r in rows
    ] == held


def test_transcoder_label_tables_are_the_committed_study():
    """The per-layer evidence table and the two graphs' top nodes come from transcoder_labels.json."""
    from studies.transcoder_labels import nodes_table, table

    result, doc = json.loads(_read(TCL)), _read("docs/explanations.md")
    assert table(result) in doc
    assert nodes_table(result, "kobe", 8) in doc and nodes_table(result, "eiffel_language", 8) in doc


def test_sparsify_transcoder_table_is_the_result_file():
    """docs/replacement.md's transcoder side by side with sparsify: every row of the committed result, as
    bench.peers.sparsify_transcoder_side_by_side.table() prints it (tests do not import bench/)."""
    doc = _read("docs/replacement.md")

    def f(v, spec):
        return "n/a" if v is None else format(v, spec)

    for r in json.loads(_read(SPTC))["summary"]["rows"]:
        row = (
            f"| {r['trainer']} | {r['tokens_per_s']:,.0f} | {r['median_step_tokens_per_s']:,.0f} | "
            f"{f(r['explained_variance'], '.3f')} | {f(r['features_on_rest'], '.3f')} | "
            f"{f(r['ce_loss_recovered'], '.3f')} | {f(r['l0'], '.1f')} | {f(r['dead_fraction'], '.1%')} |"
        )
        assert row in doc, row


CURVE = "bench/results/replacement_length_curve.json"  # bench.peers.replacement_length_curve (its commands inside)


def test_length_curve_table_is_the_result_file():
    """docs/replacement.md's long-prompt table, row by row, from replacement_length_curve.json."""
    r = json.loads((ROOT / CURVE).read_text())
    doc = (ROOT / "docs" / "replacement.md").read_text()
    for c in r["curve"]:
        t = c["target"]
        ours = f"{c['time_s']['ours']:.1f} s, {c['added']['ours']:.2f} GiB"
        if c.get("theirs_failed"):
            assert "out of memory" in c["theirs_failed"]["how"]
            theirs, ratio = "killed by the kernel: out of memory", "—"
        else:
            theirs = f"{c['time_s']['theirs']:.1f} s, {c['added']['theirs']:.2f} GiB"
            ratio = f"{c['ratios']['time_ours_over_theirs']:.2f}, {c['ratios']['added_rss_ours_over_theirs']:.2f}"
        said = f"`{t['answer']}` ({t['answer_p']:.3f}), `{t['counterfactual']}`"
        row = f"| {c['tokens']:,} | {said} | {ours} | {theirs} | {ratio} |"
        assert row in doc, row
    a = r["alone"][0]
    added = (a["memory"]["peak_rss_build_mb"] - a["memory"]["rss_before_mb"]) / 1024
    assert f"| {a['prompt_tokens']:,} | `{a['target']['answer']}`" in doc
    assert f"{a['timings']['build_graph_s']:.1f} s, {added:.2f} GiB (batch {a['plan']['batch_size']}, chosen)" in doc
    assert f"adding {added:.1f} GiB" in doc and f"the build added {added:.1f} GiB" in doc
    assert f"planned {a['plan']['estimate_bytes'] / 2**30:.1f} GiB for the build" in doc
    # the length curve's first try of the largest length (3,070 tokens, refused) is superseded by the bisection
    # of replacement_longest.json, whose figures are rows of TC_FIGURES
    ratios = [c["ratios"] for c in r["curve"] if "ratios" in c]
    assert "0.46 at 128 tokens, 0.21 at 508" in doc
    assert [round(x["added_rss_ours_over_theirs"], 2) for x in ratios] == [0.46, 0.21]
    assert [round(1 / x["time_ours_over_theirs"], 1) for x in ratios] == [2.9, 2.1]
    assert "2.9× at 128\ntokens, 2.1× at 508, 2.8× on the Kobe prompt" in doc
    sbs = json.loads((ROOT / SBS_ALL).read_text())
    assert round(1 / sbs["ratios"]["time_ours_over_theirs"], 1) == 2.8
    readme = (ROOT / "README.md").read_text()
    first_fail = next(c["tokens"] for c in r["curve"] if c.get("theirs_failed"))
    at_508 = next(c for c in r["curve"] if c["tokens"] == 508)["ratios"]["added_rss_ours_over_theirs"]
    built = f"(ours builds {a['prompt_tokens']:,} adding **{added:.1f} GiB**) |"
    assert f"| **{at_508:.2f}**; from **{first_fail:,}** tokens {built}" in readme


TS = "bench/results/text_sources.json"  # python -m studies.text_sources
_G = ("sources", "gutenberg")


def _millions(v: float) -> str:
    return f"{v / 1e6:.2f}"


FIGURES += [
    Figure(
        R,
        "Moby-Dick, which `moby-dick` already holds: {} documents",
        TS,
        _G,
        lambda g: str(g["train"]["documents"] + g["heldout"]["documents"]),
    ),
    Figure(R, "documents ({} held out)", TS, (*_G, "heldout", "documents"), "{}"),
    Figure(R, "held out), {}M words", TS, _G, lambda g: _millions(g["train"]["words"] + g["heldout"]["words"])),
    Figure(R, "words, {}M training and", TS, (*_G, "train", "tokens"), _millions),
    Figure(R, "training and\n{}k held-out tokens", TS, (*_G, "heldout", "tokens"), lambda v: f"{v / 1e3:.0f}"),
    Figure(R, "With it, {}M training tokens", TS, ("train_tokens", "all"), _millions),
    Figure(R, "({}M of\nthem the default", TS, ("train_tokens", "default"), _millions),
]

# the default recipe on 4M tokens (docs/replacement.md "Twice the tokens")
TC4, TCB4 = "bench/results/default_transcoders_t4M.json", "bench/results/default_transcoders_t4M_build.json"
TCG4 = "bench/results/transcoder_graphs_v2_t4M.json"  # python -m studies.transcoder_graphs --tokens 4000000
_FWD = ("layers",)


def _forward(get: Callable, agg: Callable = statistics.median, fmt: str = "{:.3f}") -> Callable:
    """agg over the layers' forward checks of get(check), formatted."""
    return lambda layers: fmt.format(agg(get(r["forward_check"]) for r in layers))


def _at_least(rows: list, x: float = 0.5) -> str:
    return str(sum(r["features_on_rest"] >= x for r in rows))


FIGURES += [
    Figure(R, "the same recipe on\n{} tokens", TC4, ("transcoders", 0, "tokens_seen"), "{:,}"),
    Figure(R, "its training stream ran {} min", TCB4, ("training_seconds",), lambda v: f"{v / 60:.0f}"),
    Figure(R, "min, {} tokens/s on the 2-core", TCB4, ("tokens_per_s",), "{:.0f}"),
    Figure(R, "by a median of {} (", TCC4, _FWD, _forward(lambda c: c["heldout_gain"])),
    Figure(R, "median of 0.045 ({}-", TCC4, _FWD, _forward(lambda c: c["heldout_gain"], min)),
    Figure(R, "-{}), to", TCC4, _FWD, _forward(lambda c: c["heldout_gain"], max)),
    Figure(R, "), to {}; ", TC4, ("transcoders",), spread("features_on_rest")),
    Figure(R, "; {} of the 18 layers are now", TC4, ("transcoders",), _at_least),
    Figure(R, "above 0.5\n({} at 2M)", TCQ, ("transcoders",), _at_least),
    Figure(R, "EV of the MLP output {}, CE", TC4, ("transcoders",), spread("explained_variance")),
    Figure(R, "CE loss recovered {}. The 2M", TC4, ("transcoders",), spread("ce_loss_recovered")),
    Figure(R, "predicted them to within {} (median", TCC4, ("summary", "median_forward_error"), "{:.3f}"),
    Figure(
        R, "below its prediction\n({}-", TCC4, _FWD, _forward(lambda c: c["predicted_mean"] - c["measured_mean"], min)
    ),
    Figure(R, "-{}), so extrapolated", TCC4, _FWD, _forward(lambda c: c["predicted_mean"] - c["measured_mean"], max)),
    Figure(R, "text) was {} against the law", TCC4, _FWD, _forward(lambda c: c["heldout_gain"], fmt="{:+.3f}")),
    Figure(R, "against the law's {} (medians)", TCC4, _FWD, _forward(lambda c: c["predicted_gain"], fmt="{:+.3f}")),
    Figure(R, "every layer are ~{}M (the 2M", TCC4, ("summary", "max_tokens_for_target"), lambda v: f"{v / 1e6:.0f}"),
]
FIGURES += [
    Figure(FRONT, "2M → 4M | **{}**;", TCC4, _FWD, _forward(lambda c: c["heldout_gain"], fmt="{:+.3f}")),
    Figure(FRONT, "**+0.045**; {} →", TCG, ("median", "pruned_replacement"), "{:.3f}"),
    Figure(FRONT, "→ **{}** /", TCG4, ("median", "pruned_replacement"), "{:.3f}"),
    Figure(FRONT, "/ {} → **", TCG, ("median", "pruned_completeness"), "{:.3f}"),
    Figure(
        FRONT,
        "→ **{}** | [replacement graphs](docs/replacement.md) |\n| tokens the",
        TCG4,
        ("median", "pruned_completeness"),
        "{:.3f}",
    ),
]


def _gain(part: str, key: str) -> Callable:
    """The 4M set's median score minus the 2M set's (TCG), signed, as the prose quotes it."""
    before = json.loads((ROOT / TCG).read_text())["median"]
    return lambda m: f"{m[part + '_' + key] - before[part + '_' + key]:+.3f}"


def _fell(after: list) -> str:
    before = json.loads((ROOT / TCG).read_text())["median_error_share_by_layer"]
    return str(sum(b < a for a, b in zip(before, after, strict=True)))


FIGURES += [
    Figure(R, "replacement score most ({})", TCG4, ("median",), _gain("full", "replacement")),
    Figure(R, "the pruned\ngraphs {} /", TCG4, ("median",), _gain("pruned", "replacement")),
    Figure(R, "graphs +0.014 / {}, far", TCG4, ("median",), _gain("pruned", "completeness")),
    Figure(R, "influence fell at {} of 18", TCG4, ("median_error_share_by_layer",), _fell),
]

# cross-layer vs per-layer transcoders at equal tokens (docs/replacement.md "Cross-layer transcoders")
CLT = "bench/results/clt_experiment_t0.3M.json"  # python -m studies.clt_experiment --tokens 300000 --limit 12
CLT_STEP = "bench/results/transcoder_set_step.json"  # pytest bench/test_sae.py -k transcoder_set_step
_HELD = ("held_out",)


def _rest_gains(rows: list) -> list[float]:
    return [r["clt"]["features_on_rest"] - r["per_layer"]["features_on_rest"] for r in rows]


def _clt_wins(prompts: dict) -> str:
    """On how many prompts the CLT's graph beats the per-layer one on every one of the four scores."""
    keys = [(p, k) for p in ("full", "pruned") for k in ("replacement", "completeness")]
    pairs = zip(prompts["per_layer"], prompts["clt"], strict=True)
    return str(sum(all(c[p][k] > a[p][k] for p, k in keys) for a, c in pairs))


def _shares(median: dict) -> str:
    a, b = median["per_layer"]["error_share_by_layer"], median["clt"]["error_share_by_layer"]
    return ", ".join(f"L{i} {x:.2f}→{y:.2f}" for i, (x, y) in enumerate(zip(a, b)))


def _hours_for(tokens: float) -> Callable:
    """Hours the stream would take for `tokens` at the rate it ran (its batches' tokens over its seconds)."""
    return lambda b: f"{tokens / (-(-b['tokens'] // 4064) * 4064 / b['train_s']) / 3600:.1f}"


FIGURES += [
    Figure(R, "it costs {}x the 18 per-layer", CLT_STEP, ("clt_over_per_layer",), "{:.2f}"),
    Figure("attribution/training/clt_fit.py", "a step costs {}x the 18", CLT_STEP, ("clt_over_per_layer",), "{:.2f}"),
    Figure(R, "ran both at once in {} min", CLT, ("build", "train_s"), lambda v: f"{v / 60:.0f}"),
    Figure(R, "min after {} min of skip fitting", CLT, ("build", "skip_fit_s"), lambda v: f"{v / 60:.0f}"),
    Figure(
        R,
        "held-out text: {} per-layer",
        CLT,
        _HELD,
        lambda rows: f"{statistics.median(r['per_layer']['l0'] for r in rows):.1f}",
    ),
    Figure(
        R, "per-layer, {} CLT. On", CLT, _HELD, lambda rows: f"{statistics.median(r['clt']['l0'] for r in rows):.1f}"
    ),
    Figure(R, "leaves at {} of 18 layers", CLT, _HELD, lambda rows: str(sum(g > 0 for g in _rest_gains(rows)))),
    Figure(R, "(median gain {}; layers", CLT, _HELD, lambda rows: f"{statistics.median(_rest_gains(rows)):.3f}"),
    Figure(R, "layers 5-17 gain {}-", CLT, _HELD, lambda rows: f"{min(_rest_gains(rows)[5:]):.3f}"),
    Figure(R, "gain 0.024-{}; layers 0", CLT, _HELD, lambda rows: f"{max(_rest_gains(rows)[5:]):.3f}"),
    Figure(R, "On the first {} two-hop prompts", CLT, ("prompts", "clt"), len),
    Figure(R, "| full | {} → 0.484 |", CLT, ("median", "per_layer", "full_replacement"), "{:.3f}"),
    Figure(R, "| full | 0.449 → {} |", CLT, ("median", "clt", "full_replacement"), "{:.3f}"),
    Figure(R, "| {} → 0.833 |", CLT, ("median", "per_layer", "full_completeness"), "{:.3f}"),
    Figure(R, "| 0.828 → {} |", CLT, ("median", "clt", "full_completeness"), "{:.3f}"),
    Figure(R, "features | {} → 0.254 |", CLT, ("median", "per_layer", "pruned_replacement"), "{:.3f}"),
    Figure(R, "features | 0.230 → {} |", CLT, ("median", "clt", "pruned_replacement"), "{:.3f}"),
    Figure(R, "| {} → 0.542 |", CLT, ("median", "per_layer", "pruned_completeness"), "{:.3f}"),
    Figure(R, "| 0.525 → {} |", CLT, ("median", "clt", "pruned_completeness"), "{:.3f}"),
    Figure(R, "higher with the CLT on {} of the", CLT, ("prompts",), _clt_wins),
    Figure(R, "is not lower: {} per-layer", CLT, ("median", "per_layer", "error_share"), "{:.3f}"),
    Figure(R, "per-layer, {} CLT (median over", CLT, ("median", "clt", "error_share"), "{:.3f}"),
    Figure(
        R,
        "lower at {} of the 18 layers",
        CLT,
        ("median",),
        lambda m: str(
            sum(b < a for a, b in zip(m["per_layer"]["error_share_by_layer"], m["clt"]["error_share_by_layer"]))
        ),
    ),
    Figure(R, "per-layer → CLT):\n\n{}\n", CLT, ("median",), _shares),
    Figure(R, "would take ~{} h on this CPU", CLT, ("build",), _hours_for(2e6)),
]
FIGURES += [
    Figure(
        FRONT,
        "(not lower: not shipped as a default) | {} →",
        CLT,
        ("median", "per_layer", "pruned_replacement"),
        "{:.3f}",
    ),
    Figure(FRONT, "| 0.230 → **{}** / 0.525", CLT, ("median", "clt", "pruned_replacement"), "{:.3f}"),
    Figure(FRONT, "** / {} → **0.542**;", CLT, ("median", "per_layer", "pruned_completeness"), "{:.3f}"),
    Figure(FRONT, "0.525 → **{}**; 0.317", CLT, ("median", "clt", "pruned_completeness"), "{:.3f}"),
    Figure(FRONT, "**0.542**; {} → **0.318**", CLT, ("median", "per_layer", "error_share"), "{:.3f}"),
    Figure(
        FRONT,
        "0.317 → **{}** | [replacement graphs](docs/replacement.md#cross",
        CLT,
        ("median", "clt", "error_share"),
        "{:.3f}",
    ),
]
