"""Bad input, tried on purpose: every public entry point answers with an AttributionError subclass whose
message says what is wrong and what to do; never a raw torch/transformers/nnsight traceback, and never a
silently wrong number (several rows below once returned one: an unknown answer read as <unk>, top(-1)
dropping the last node, a negative feature taken for the error node, position 1.5 truncated to 1, an index
built for another SAE, TrainConfig(steps=0) returning an untrained SAE).

Each case is (call, expected class, words the message must contain: what is wrong, then what to do).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import cases
from attribution import (
    AttributionError,
    HookError,
    LogitDiff,
    NumericalError,
    SAEError,
    TokenizationError,
    TrainConfig,
    WholeActivation,
    ablate,
    attribute,
    compare,
    contrast,
    explain,
    feature_index,
    run_with_saes,
    trace,
)
from attribution.engine import Group
from attribution.saes import build
from attribution.training import fit
from graphs import (
    GraphError,
    ablate_group,
    build_graph,
    check,
    check_layers,
    group_by_contrast,
    load_graph_json,
    steer_group,
)
from tests.conftest import PROMPTS, WORDS, random_sae, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

P = PROMPTS[0]  # 12 tokens with <bos>
SHORT = PROMPTS[2]  # 4 tokens
HOOKS = ["resid_post.0", "resid_post.2"]
H = HOOKS[0]
LONG = " ".join(["the"] * 100)  # the tiny models' context is 64


@pytest.fixture(scope="module")
def s(tmp_path_factory):
    """A tiny GPT-2 (float64) with SAEs at two residual layers, and results to misuse."""
    m = tiny_model("gpt2")
    saes = {h: random_sae(m, h, seed=i) for i, h in enumerate(HOOKS)}
    metric = LogitDiff(m, "sad", "happy")
    attr = attribute(m, saes, P, metric)
    nan_sae = random_sae(m, H)
    with torch.no_grad():
        nan_sae.W_dec[3, 0] = float("nan")  # corrupted after loading: load_sae's own check has passed
    inf_model = tiny_model("gpt2")
    with torch.no_grad():
        inf_model.hf.transformer.h[0].mlp.c_proj.weight.fill_(math.inf)  # inf/NaN from the first block on
    tokens = torch.randint(4, m.W_U.shape[0], (8, 10), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = m.tokenizer.bos_token_id
    graph = build_graph(m, saes, P, metric, candidates=16, labels=False, progress=False)
    tmp = tmp_path_factory.mktemp("bad")
    good_json = tmp / "graph.json"
    graph.to_json(good_json)
    return SimpleNamespace(
        m=m,
        saes=saes,
        metric=metric,
        attr=attr,
        abl=ablate(m, saes, P, metric, attr.top(5), progress=False),
        nan_sae=nan_sae,
        inf_model=inf_model,
        tokens=tokens,
        index=feature_index(m, saes[H], tokens=tokens, progress=False),
        graph=graph,
        tmp=tmp,
        graph_json=json.loads(good_json.read_text()),
    )


def _attr(s, prompt=P, **kw):
    return attribute(s.m, s.saes, prompt, s.metric, **kw)


def _ablate(s, nodes, prompt=P, **kw):
    return ablate(s.m, s.saes, prompt, s.metric, nodes, progress=False, **kw)


def _metric(s, fn):
    return attribute(s.m, s.saes, P, fn)


def _json(s, edit, name="bad.json"):
    """A copy of the good graph JSON with `edit` applied, written to a file and loaded back."""
    data = json.loads(json.dumps(s.graph_json))
    edit(data)
    path = s.tmp / name
    path.write_text(json.dumps(data))
    return load_graph_json(path)


def _other_vocabulary():
    """A tiny model whose tokenizer numbers the same words the other way round."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    other = tiny_model("gpt2")
    words = ["<pad>", "<eos>", "<bos>", "<unk>", *reversed(WORDS)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    other.tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    return other


def _case(s, prompt=P, **kw):
    kw = {"model": s.m, "saes": s.saes, "out": s.tmp / "case", "explain": False, "progress": False} | kw
    return cases.run(prompt, "sad", "happy", **kw)


def _fit(x, **cfg):
    return fit(build("relu", 32, 8, H), x, TrainConfig(progress=False, **cfg))


def _fit_mutated(x, **changes):
    cfg = TrainConfig(steps=2, batch_size=64, progress=False)
    for k, v in changes.items():
        setattr(cfg, k, v)
    return fit(build("relu", 32, 8, H), x, cfg)


X = torch.randn(256, 32, dtype=torch.float64)


# (id, error class, words the message must hold, call); the classes shortened so that a case fits a line
def _on_graph(fn, *args, **kwargs):
    """A case calling fn(model, saes, graph, *args, **kwargs) on the setup's graph."""
    return lambda s: fn(s.m, s.saes, s.graph, *args, **kwargs)


Tok, Att, Gra, Num, Sae, Hoo = TokenizationError, AttributionError, GraphError, NumericalError, SAEError, HookError
CASES = [
    # --- prompts: empty, over-long, not text -----------------------------------------------------------
    ("empty-prompt", Tok, ["empty prompt", "give some text"], lambda s: _attr(s, "")),
    ("blank-prompt", Tok, ["empty prompt", "give some text"], lambda s: _attr(s, "   ")),
    ("no-prompts", Tok, ["no prompts", "non-empty list"], lambda s: _attr(s, [])),
    ("over-long", Tok, ["101 tokens", "context of 64", "shorten"], lambda s: _attr(s, LONG)),
    ("over-long-in-batch", Tok, ["context of 64", "shorten"], lambda s: _attr(s, [P, LONG])),
    ("tensor-prompt", Tok, ["string", "not token ids"], lambda s: _attr(s, torch.tensor([2, 5, 6]))),
    ("int-in-prompt-list", Tok, ["must be a string", "int"], lambda s: _attr(s, [P, 3])),
    ("ablate-over-long", Tok, ["context of 64"], lambda s: _ablate(s, [(H, 1, 1)], LONG)),
    ("contrast-over-long", Tok, ["context of 64"], lambda s: contrast(s.m, s.saes, [LONG], [P])),
    ("run_with_saes-empty", Tok, ["empty prompt"], lambda s: run_with_saes(s.m, s.saes, "")),
    # --- answers (LogitDiff) --------------------------------------------------------------------------
    ("answer-2-tokens", Tok, ["2 tokens", "single-token"], lambda s: LogitDiff(s.m, "sad happy", "happy")),
    ("answer-unknown", Tok, ["not in the model's vocabulary", "pick a word"], lambda s: LogitDiff(s.m, "sad", "zebra")),
    (
        "metric-of-another-model",
        Tok,
        ["vocabulary differs", r"LogitDiff\(model, \.\.\.\) for the model you attribute"],
        lambda s: _metric(s, LogitDiff(_other_vocabulary(), "sad", "happy")),
    ),
    ("answer-empty", Tok, ["non-empty string"], lambda s: LogitDiff(s.m, "", "happy")),
    ("answer-tensor", Tok, ["non-empty string"], lambda s: LogitDiff(s.m, torch.tensor(5), "happy")),
    ("answer-pairs", Tok, ["2 good answers but 1", "one of each"], lambda s: LogitDiff(s.m, ["sad", "tired"], "happy")),
    (
        "answer-pairs-per-prompt",
        Tok,
        ["2 answer pairs", "one per prompt"],
        lambda s: attribute(s.m, s.saes, PROMPTS, LogitDiff(s.m, ["sad", "sad"], ["happy", "happy"])),
    ),
    (
        "metric-position-past-end",
        Att,
        ["position 12 is outside", "12 tokens", "-1"],
        lambda s: _metric(s, LogitDiff(s.m, "sad", "happy", position=12)),
    ),
    (
        "metric-position-before-start",
        Att,
        ["outside the prompt", "-12..11"],
        lambda s: _metric(s, LogitDiff(s.m, "sad", "happy", position=-13)),
    ),
    ("metric-position-str", Att, ["position must be", "-1"], lambda s: LogitDiff(s.m, "sad", "happy", position="last")),
    # --- hooks ----------------------------------------------------------------------------------------
    ("hook-unknown-kind", Hoo, ["unknown hook point 'attn_in.1'", "resid_post.1"], lambda s: s.m.hook("attn_in.1")),
    ("hook-layer-out-of-range", Hoo, ["unknown hook point", r"layer in 0\.\.2"], lambda s: s.m.hook("resid_post.3")),
    ("hook-tl-unknown-kind", Hoo, ["unknown hook point", "resid_post"], lambda s: s.m.hook("blocks.1.hook_attn_in")),
    (
        "hook-tl-layer-out-of-range",
        Hoo,
        ["unknown hook point", r"0\.\.2"],
        lambda s: s.m.hook("blocks.7.hook_resid_post"),
    ),
    ("hook-tl-not-supported", Hoo, ["unknown hook point", "resid_post"], lambda s: s.m.hook("blocks.1.attn.hook_v")),
    ("hook-int", Hoo, ["must be a string", "resid_post.3"], lambda s: s.m.hook(3)),
    (
        "attribute-unknown-hook",
        Hoo,
        ["unknown hook point 'attn_in.1'"],
        lambda s: attribute(s.m, {"attn_in.1": s.saes[H]}, P, s.metric),
    ),
    ("group-without-edit", Att, ["at least one edit"], lambda s: trace(s.m, s.m.tokenize(P), groups=[Group({})])),
    (
        "group-leaf-unedited",
        Att,
        ["leaves at", "resid_post.1", "edits nothing"],
        lambda s: trace(s.m, s.m.tokenize(P), groups=[Group({H: lambda x: x}, leaves=("resid_post.1",))]),
    ),
    ("dense-unknown-hook", Att, ["no SAE at 'resid_post.1'", "resid_post.0"], lambda s: s.attr.dense("resid_post.1")),
    ("total-unknown-hook", Att, ["no SAE at", "resid_post.2"], lambda s: s.attr.total(hook="blocks.1.hook_resid_post")),
    # --- SAEs that do not fit -------------------------------------------------------------------------
    (
        "sae-width",
        Sae,
        ["d_in=16", "32 wide", "load one for this model"],
        lambda s: attribute(s.m, {H: build("relu", 16, 8, H, dtype=torch.float64)}, P, s.metric),
    ),
    (
        "sae-under-other-hook",
        Sae,
        ["trained at 'resid_post.0'", "key it by its own hook"],
        lambda s: attribute(s.m, {"resid_post.1": s.saes[H]}, P, s.metric),
    ),
    (
        "sae-not-in-dict",
        Sae,
        ["one TopKSAE|one ReLUSAE", r"\{sae\.hook: sae\}"],
        lambda s: attribute(s.m, s.saes[H], P, s.metric),
    ),
    ("saes-none", Sae, [r"\{hook: SAE\}", "NoneType"], lambda s: attribute(s.m, None, P, s.metric)),
    ("sae-is-a-path", Sae, ["not an SAE", "load_sae"], lambda s: attribute(s.m, {H: "saes/l0"}, P, s.metric)),
    ("saes-empty", Att, ["no SAEs given", r"\{hook: SAE\}"], lambda s: attribute(s.m, {}, P, s.metric)),
    # --- NaN / inf --------------------------------------------------------------------------------------
    (
        "sae-nan-after-load",
        Sae,
        ["W_dec contains NaN", "reload"],
        lambda s: attribute(s.m, {H: s.nan_sae}, P, s.metric),
    ),
    ("ablate-sae-nan", Sae, ["W_dec contains NaN"], lambda s: ablate(s.m, {H: s.nan_sae}, P, s.metric, [(H, 1, None)])),
    ("contrast-sae-nan", Sae, ["W_dec contains NaN"], lambda s: contrast(s.m, {H: s.nan_sae}, [P], [SHORT])),
    (
        "model-inf",
        Num,
        ["NaN/inf", "model and SAE weights"],
        lambda s: attribute(s.inf_model, {H: random_sae(s.inf_model, H)}, P, s.metric),
    ),
    (
        "ablate-model-inf",
        Num,
        ["NaN/inf"],
        lambda s: ablate(s.inf_model, {H: random_sae(s.inf_model, H)}, P, s.metric, [(H, 1, None)], progress=False),
    ),
    ("splice-model-inf", Num, ["NaN/inf"], lambda s: run_with_saes(s.inf_model, {H: random_sae(s.inf_model, H)}, P)),
    (
        "contrast-model-inf",
        Att,
        ["non-finite", "NaN"],
        lambda s: contrast(s.inf_model, {H: random_sae(s.inf_model, H)}, [P], [SHORT]),
    ),
    (
        "metric-nan",
        Num,
        ["the metric contains", "NaN"],
        lambda s: _metric(s, lambda logits: logits[:, -1, 5] * math.nan),
    ),
    (
        "metric-inf",
        Num,
        ["the metric contains", "NaN/inf"],
        lambda s: _metric(s, lambda logits: logits[:, -1, 5] * math.inf),
    ),
    (
        "gradient-nan",
        Num,
        ["gradient at resid_post", "NaN/inf"],
        lambda s: _metric(s, lambda logits: (logits[:, -1, 5] - logits[:, -1, 5]).abs().sqrt()),
    ),
    (
        "metric-float",
        Att,
        ["no gradient", "return a torch tensor"],
        lambda s: _metric(s, lambda logits: logits[:, -1, 5].detach()),
    ),
    (
        "metric-shape",
        Att,
        [r"shape \(1, 2\)", "one value per batch row"],
        lambda s: _metric(s, lambda logits: logits[:, -1, :2]),
    ),
    ("metric-not-callable", Att, ["metric must be", "callable"], lambda s: _metric(s, 3)),
    # --- corrupt prompts of another length ----------------------------------------------------------------
    (
        "atp-corrupt-length",
        Tok,
        [r"\[4\] tokens", "same number of tokens"],
        lambda s: _attr(s, method="atp", corrupt=SHORT),
    ),
    ("ig-corrupt-length", Tok, ["same number of tokens"], lambda s: _attr(s, method="ig", corrupt=SHORT)),
    (
        "patch-corrupt-length",
        Tok,
        ["same number of tokens"],
        lambda s: _ablate(s, [(H, 1, 1)], mode="patch", corrupt=SHORT),
    ),
    ("atp-without-corrupt", Att, ["corrupted prompt", "corrupt="], lambda s: _attr(s, method="atp")),
    ("patch-without-corrupt", Att, ["needs corrupt="], lambda s: _ablate(s, [(H, 1, 1)], mode="patch")),
    # --- counts, types and options ------------------------------------------------------------------------
    ("top-0", Att, ["k must be a whole number >= 1", "None for all"], lambda s: s.attr.top(0)),
    ("top-negative", Att, ["k must be"], lambda s: s.attr.top(-1)),
    ("top-float", Att, ["k must be a whole number"], lambda s: s.attr.top(2.5)),
    ("top-by", Att, ["by='size'", "'abs'"], lambda s: s.attr.top(3, by="size")),
    ("top-prompt", Att, ["1 prompt", "prompt=None"], lambda s: s.attr.top(3, prompt=1)),
    ("dense-prompt", Att, ["prompt=2 is not a prompt"], lambda s: s.attr.dense(H, prompt=2)),
    ("ig-steps-0", Att, ["steps must be a whole number >= 1", "got 0"], lambda s: _attr(s, method="ig", steps=0)),
    ("ig-steps-float", Att, ["steps must be a whole number"], lambda s: _attr(s, method="ig", steps=2.5)),
    ("method", Att, ["unknown method 'shap'", "grad_x_act"], lambda s: _attr(s, method="shap")),
    ("ablate-mode", Att, ["unknown ablation mode", "'zero'"], lambda s: _ablate(s, [(H, 1, 1)], mode="resample")),
    ("ablate-batch-size", Att, ["batch_size must be >= 1"], lambda s: _ablate(s, [(H, 1, 1)], batch_size=0)),
    ("mean-reference-empty", Tok, ["no prompts"], lambda s: _ablate(s, [(H, 1, 1)], mode="mean", reference=[])),
    # --- nodes that do not belong to the prompt or the SAE ----------------------------------------------
    ("nodes-empty", Att, ["no nodes to ablate"], lambda s: _ablate(s, [])),
    ("nodes-str", Att, ["list of nodes", "wrap a single node"], lambda s: _ablate(s, H)),
    ("nodes-single-node", Att, ["wrap a single node in a list"], lambda s: _ablate(s, s.attr.top(1)[0])),
    ("nodes-single-tuple", Att, ["wrap a single node in a list"], lambda s: _ablate(s, (H, 1, 3))),
    ("node-short-tuple", Att, ["cannot read node", r"\(hook, position, feature"], lambda s: _ablate(s, [(H, 1)])),
    ("node-position-float", Att, ["position must be an integer", "1.5"], lambda s: _ablate(s, [(H, 1.5, 3)])),
    (
        "node-feature-negative",
        Att,
        ["feature -5 is negative", "None for the error term"],
        lambda s: _ablate(s, [(H, 3, -5)]),
    ),
    ("node-feature-out-of-range", Att, ["feature 64 does not exist", "has 64"], lambda s: _ablate(s, [(H, 3, 64)])),
    (
        "node-position-out-of-range",
        Att,
        ["position 12 is outside prompt 0", "12 tokens"],
        lambda s: _ablate(s, [(H, 12, 1)]),
    ),
    ("node-position-negative", Att, ["position -1 is outside"], lambda s: _ablate(s, [(H, -1, 1)])),
    ("node-prompt-out-of-range", Att, ["prompt 1", "only 1 prompt"], lambda s: _ablate(s, [(H, 1, 1, 1)])),
    (
        "node-hook-without-sae",
        Att,
        ["no SAE is spliced there", "resid_post.0"],
        lambda s: _ablate(s, [("resid_post.1", 1, 1)]),
    ),
    ("nodes-of-another-prompt", Att, ["outside prompt 0", "4 tokens"], lambda s: _ablate(s, s.attr.top(5), SHORT)),
    (
        "compare-other-prompt",
        Att,
        ["no attribution", "same attribution run"],
        lambda s: compare(_attr(s, SHORT), s.abl),
    ),
    ("compare-k-0", Att, ["ks must be whole numbers >= 1"], lambda s: compare(s.attr, s.abl, ks=(0, 10))),
    ("compare-one-node", Att, ["at least two ablated nodes"], lambda s: compare(s.attr, _ablate(s, s.attr.top(1)))),
    # --- find: contrast ---------------------------------------------------------------------------------
    ("contrast-top-0", Att, ["top must be >= 1 or None"], lambda s: contrast(s.m, s.saes, [P], [SHORT], top=0)),
    ("contrast-str", Att, ["positive must be a non-empty list"], lambda s: contrast(s.m, s.saes, P, [SHORT])),
    ("contrast-empty", Att, ["negative must be a non-empty list"], lambda s: contrast(s.m, s.saes, [P], [])),
    (
        "contrast-position",
        Att,
        ["unknown position", "'last'"],
        lambda s: contrast(s.m, s.saes, [P], [SHORT], position="first"),
    ),
    (
        "contrast-batch-size",
        Att,
        ["batch_size must be >= 1"],
        lambda s: contrast(s.m, s.saes, [P], [SHORT], batch_size=0),
    ),
    # --- explain / feature_index ------------------------------------------------------------------------
    (
        "explain-out-of-range",
        Att,
        ["feature 64 does not exist", "has 64"],
        lambda s: explain(s.m, s.saes[H], 64, index=s.index),
    ),
    ("explain-negative", Att, ["feature -1 does not exist"], lambda s: explain(s.m, s.saes[H], -1, index=s.index)),
    ("explain-float", Att, ["integer index", "2.7"], lambda s: explain(s.m, s.saes[H], 2.7, index=s.index)),
    ("explain-str", Att, ["integer index", "'f3'"], lambda s: explain(s.m, s.saes[H], "f3", index=s.index)),
    (
        "explain-n-contexts",
        Att,
        ["n_contexts must be"],
        lambda s: explain(s.m, s.saes[H], 3, index=s.index, n_contexts=-1),
    ),
    (
        "explain-other-sae-index",
        Att,
        ["index given is for", r"feature_index\(model, sae\)"],
        lambda s: explain(s.m, s.saes["resid_post.2"], 3, index=s.index),
    ),
    ("explain-whole", Sae, ["no features to explain"], lambda s: explain(s.m, WholeActivation.at(s.m, [H])[H], 1)),
    ("label-out-of-range", Att, ["feature 64 does not exist"], lambda s: s.index.label(64)),
    (
        "index-tokens-1d",
        Att,
        [r"\[n_seq, seq\]", r"\(10,\)"],
        lambda s: feature_index(s.m, s.saes[H], tokens=s.tokens[0], progress=False),
    ),
    (
        "index-tokens-float",
        Att,
        ["integer tensor", "float32"],
        lambda s: feature_index(s.m, s.saes[H], tokens=s.tokens.float(), progress=False),
    ),
    (
        "index-tokens-vocab",
        Att,
        ["outside the model's vocabulary", "this model's tokenizer"],
        lambda s: feature_index(s.m, s.saes[H], tokens=s.tokens + 100, progress=False),
    ),
    (
        "index-tokens-empty",
        Att,
        ["no text to index"],
        lambda s: feature_index(s.m, s.saes[H], tokens=s.tokens[:0], progress=False),
    ),
    # --- graphs: build, prune, check, groups, exports -----------------------------------------------------
    (
        "graph-prompt-list",
        Gra,
        ["one prompt", "list"],
        lambda s: build_graph(s.m, s.saes, PROMPTS, s.metric, labels=False),
    ),
    ("graph-prompt-empty", Tok, ["empty prompt"], lambda s: build_graph(s.m, s.saes, "", s.metric, labels=False)),
    ("graph-prompt-long", Tok, ["context of 64"], lambda s: build_graph(s.m, s.saes, LONG, s.metric, labels=False)),
    (
        "graph-mlp-hook",
        Gra,
        ["residual stream", "mlp_out"],
        lambda s: build_graph(s.m, {"mlp_out.1": random_sae(s.m, "mlp_out.1")}, P, s.metric, labels=False),
    ),
    (
        "graph-same-layer",
        Gra,
        ["two graph SAEs at layer 1", "keep one per layer"],
        lambda s: build_graph(
            s.m,
            {"resid_pre.1": random_sae(s.m, "resid_pre.1"), "resid_post.1": random_sae(s.m, "resid_post.1")},
            P,
            s.metric,
            labels=False,
        ),
    ),
    (
        "graph-candidates-0",
        Gra,
        ["candidates must be >= 1"],
        lambda s: build_graph(s.m, s.saes, P, s.metric, candidates=0, labels=False),
    ),
    ("graph-labels", Gra, ["labels must be"], lambda s: build_graph(s.m, s.saes, P, s.metric, labels=3)),
    ("prune-threshold", Gra, ["node_threshold must be a share between 0 and 1"], lambda s: s.graph.copy().prune(1.5)),
    ("prune-threshold-nan", Gra, ["edge_threshold must be a share"], lambda s: s.graph.copy().prune(0.8, math.nan)),
    (
        "prune-cap-negative",
        Gra,
        ["max_feature_nodes must be >= 0"],
        lambda s: s.graph.copy().prune(max_feature_nodes=-1),
    ),
    ("prune-cap-float", Gra, ["max_nodes must be a whole number"], lambda s: s.graph.copy().prune(max_nodes=2.5)),
    ("prune-rank", Gra, ["unknown rank", "'influence'"], lambda s: s.graph.copy().prune(rank="size")),
    ("check-mode", Gra, ["unknown ablation mode", "'zero'"], _on_graph(check, mode="resample")),
    ("check-errors", Gra, ["errors must be one of", "'keep'"], _on_graph(check, errors="drop")),
    ("check-layers-mode", Gra, ["unknown ablation mode"], _on_graph(check_layers, mode="patch")),
    ("graph-top-0", Gra, ["k must be a whole number >= 1"], lambda s: s.graph.top(0)),
    ("graph-top-kind", Gra, ["unknown node kind", "'feature'"], lambda s: s.graph.top(3, kind="features")),
    ("graph-node-unknown", Gra, ["no node", "node_ids"], lambda s: s.graph.node("resid_post.0:1:f9999")),
    (
        "group-feature-absent",
        Gra,
        ["feature 9999 at resid_post.0 is not a node"],
        lambda s: s.graph.copy().group("x", [(H, 9999)]),
    ),
    (
        "group-position-out-of-range",
        Gra,
        ["no node 'resid_post.0:99:f1'"],
        lambda s: s.graph.copy().group("x", [(H, 99, 1)]),
    ),
    ("group-empty", Gra, ["at least one feature node"], lambda s: s.graph.copy().group("x", [])),
    ("group-token-node", Gra, ["token node", "feature nodes only"], lambda s: s.graph.copy().group("x", "tok:1")),
    ("group-name", Gra, ["non-empty name"], lambda s: s.graph.copy().group("", [(H, 1)])),
    (
        "group-tensor",
        Gra,
        ["cannot read group member", "(hook, feature)"],
        lambda s: s.graph.copy().group("x", torch.tensor([1])),
    ),
    (
        "group-unknown",
        Gra,
        ["no group 'California'", "graph.group"],
        _on_graph(ablate_group, "California"),
    ),
    ("steer-group-unknown", Gra, ["no group 'x'"], _on_graph(steer_group, "x", 5)),
    (
        "steer-factor-nan",
        Gra,
        ["factor must be a finite number"],
        _on_graph(steer_group, "x", math.nan),
    ),
    (
        "steer-factor-str",
        Gra,
        ["factor must be a finite number"],
        _on_graph(steer_group, "x", "5x"),
    ),
    ("group-by-label-unlabelled", Gra, ["no feature has a label", "labels=True"], lambda s: s.graph.group_by_label()),
    (
        "group-by-contrast-empty",
        Att,
        ["positive must be a non-empty list"],
        _on_graph(group_by_contrast, "c", [], [SHORT]),
    ),
    (
        "html-missing-folder",
        Gra,
        ["does not exist", "create it first"],
        lambda s: s.graph.to_html(s.tmp / "no" / "such" / "g.html"),
    ),
    ("html-into-folder", Gra, ["is a folder", "graph.html"], lambda s: s.graph.to_html(s.tmp)),
    (
        "html-max-edges",
        Gra,
        ["more than max_edges=0", "prune it first"],
        lambda s: s.graph.to_html(s.tmp / "g.html", max_edges=0),
    ),
    (
        "json-missing-folder",
        Gra,
        ["does not exist", "create it first"],
        lambda s: s.graph.to_json(s.tmp / "no" / "g.json"),
    ),
    # --- graph JSON that does not validate -----------------------------------------------------------------
    ("json-file-missing", Gra, ["does not exist", "graph.to_json"], lambda s: load_graph_json(s.tmp / "missing.json")),
    (
        "json-not-json",
        Gra,
        ["is not JSON", "graph.to_json"],
        lambda s: (s.tmp / "t.json").write_text("{nodes: [") and load_graph_json(s.tmp / "t.json"),
    ),
    ("json-list", Gra, ["metadata, qParams, nodes and links"], lambda s: load_graph_json([1, 2])),
    (
        "json-missing-field",
        Gra,
        ["'metadata.prompt'", "Field required", "Fix that field"],
        lambda s: _json(s, lambda d: d["metadata"].pop("prompt")),
    ),
    (
        "json-wrong-type",
        Gra,
        [r"'nodes\[1\]\.feature'", "valid integer"],
        lambda s: _json(s, lambda d: d["nodes"][1].update(feature="f12")),
    ),
    (
        "json-null-weight",
        Gra,
        [r"'links\[0\]\.weight'"],
        lambda s: _json(s, lambda d: d["links"][0].update(weight=None)),
    ),
    (
        "json-dangling-link",
        Gra,
        [r"'links\[0\]\.target'", "not in 'nodes'"],
        lambda s: _json(s, lambda d: d["links"][0].update(target="7_1_1")),
    ),
    (
        "json-duplicate-node",
        Gra,
        ["node_id values repeat"],
        lambda s: _json(s, lambda d: d["nodes"].append(dict(d["nodes"][0]))),
    ),
    # --- case studies --------------------------------------------------------------------------------------
    ("case-empty-prompt", Tok, ["empty prompt", "--prompt"], lambda s: _case(s, "")),
    ("case-tensor-prompt", Tok, ["must be a string", "Tensor"], lambda s: _case(s, torch.tensor([2, 5]))),
    ("case-long-prompt", Tok, ["context of 64"], lambda s: _case(s, LONG)),
    ("case-n-ablate", Att, ["n_ablate >= 2", "n_ablate=1"], lambda s: _case(s, n_ablate=1)),
    ("case-top-0", Att, ["top >= 1", "top=0"], lambda s: _case(s, top=0)),
    ("case-clamp-nan", Att, ["multiples of the maximum activation"], lambda s: _case(s, clamps=(0, math.nan))),
    ("case-clamp-str", Att, ["multiples of the maximum activation", "0,5,10"], lambda s: _case(s, clamps="5x")),
    ("case-hooks", Sae, ["no SAE at", "resid_post.0"], lambda s: _case(s, hooks="resid_post.1")),
    ("case-corrupt-length", Tok, ["same number of tokens"], lambda s: _case(s, method="atp", corrupt=SHORT)),
    ("case-steer-out-of-range", Sae, ["feature 64 does not exist"], lambda s: _case(s, steer=(H, 64))),
    ("case-out-is-file", Att, ["is a file", "folder"], lambda s: _case(s, out=s.tmp / "graph.json")),
    # --- training: bad TrainConfig values and activations -----------------------------------------------------
    ("train-steps-0", Att, ["TrainConfig.steps must be a whole number >= 1"], lambda s: TrainConfig(steps=0)),
    ("train-steps-float", Att, ["TrainConfig.steps must be a whole number"], lambda s: TrainConfig(steps=100.5)),
    ("train-batch-size-0", Att, ["TrainConfig.batch_size must be"], lambda s: TrainConfig(batch_size=0)),
    ("train-lr-negative", Att, ["TrainConfig.lr must be a finite number > 0", "4e-4"], lambda s: TrainConfig(lr=-1e-4)),
    ("train-lr-nan", Att, ["TrainConfig.lr must be"], lambda s: TrainConfig(lr=math.nan)),
    ("train-normalize", Att, ["TrainConfig.normalize must be one of", "'dim'"], lambda s: TrainConfig(normalize="l2")),
    ("train-warmup", Att, ["TrainConfig.lr_warmup is a share", "between 0 and 1"], lambda s: TrainConfig(lr_warmup=5)),
    ("train-l1-negative", Att, ["TrainConfig.l1_coefficient must be"], lambda s: TrainConfig(l1_coefficient=-1)),
    ("train-aux-k", Att, ["TrainConfig.aux_k must be"], lambda s: TrainConfig(aux_k=-1)),
    ("train-steps-set-to-0", Att, ["TrainConfig.steps"], lambda s: _fit_mutated(X, steps=0)),
    (
        "train-nan-activations",
        Num,
        ["NaN/inf activations", "float32"],
        lambda s: _fit(X * math.nan, steps=2, batch_size=64),
    ),
    ("train-width", Att, ["16 wide", "d_in=32"], lambda s: _fit(X[:, :16], steps=2, batch_size=64)),
    ("train-no-activations", Att, ["corpus is empty"], lambda s: _fit([], steps=2)),
]


@pytest.mark.parametrize(("error", "words", "call"), [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_bad_input_is_an_attribution_error_that_says_what_to_do(s, error, words, call):
    with pytest.raises(AttributionError) as info:  # anything else propagates and fails the test
        call(s)
    _says(info.value, error, words)


def _says(exc, error, words):
    assert isinstance(exc, error), f"{type(exc).__name__} is not a {error.__name__}: {exc}"
    msg = str(exc)
    for w in words:
        assert re.search(w, msg, re.IGNORECASE), f"{w!r} is not in the message: {msg}"


def test_a_valid_graph_json_loads_and_round_trips(s):
    """The validator accepts what to_json writes (so the bad-JSON cases fail for their edit alone)."""
    graph = load_graph_json(s.tmp / "graph.json")
    assert len(graph.nodes) == len(s.graph.nodes) and len(graph.links) == len(s.graph.edges)
    assert load_graph_json(s.graph_json).model_dump() == graph.model_dump()


def test_valid_edge_values_still_work(s):
    """The new checks reject only what is wrong: explain with no contexts, a LogitDiff at the first token
    or the last by index, prompt=None, an integer tensor position, a node tuple with an error term."""
    card = explain(s.m, s.saes[H], int(s.index.t["count"].argmax()), index=s.index, n_contexts=0)
    assert card.contexts == []
    first = _metric(s, LogitDiff(s.m, "sad", "happy", position=-12)).metric
    last = _metric(s, LogitDiff(s.m, "sad", "happy", position=11)).metric
    assert torch.equal(last, s.attr.metric) and not torch.equal(first, last)
    assert len(s.attr.top(None, prompt=None)) == len(s.attr)
    abl = _ablate(s, [(H, torch.tensor(3), None), (H, 3, None, 0)])
    # the same ablation in two rows of one batch: equal up to the matmul's rounding across rows (float64)
    assert float(abl.effect[0]) == pytest.approx(float(abl.effect[1]), rel=1e-12)


# --- the two CLIs: exit code 2 and one line on stderr, checked before any model loads -------------------
@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--prompt", "  "], ["empty prompt", "--prompt"]),
        (["--steps", "0"], ["--steps must be >= 1"]),
        (["--ablate", "-3"], ["--ablate must be >= 0", "0: all"]),
        (["--ablate", "1"], ["--ablate 1", ">= 2 nodes"]),
        (["--top", "0"], ["--top must be >= 1"]),
    ],
)
def test_attribution_cli_bad_input_exits_2_before_loading(capsys, argv, words):
    from attribution.cli import main

    assert main(["run", "--model", "/no/such/model", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "/no/such/model" not in err
    for w in words:
        assert w in err


def test_transcoders_cli_bad_tokens_exits_2_before_loading(capsys):
    from attribution.cli import main

    assert main(["transcoders", "--model", "/no/such/model", "--tokens", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --tokens must be a whole number >= 1") and "/no/such/model" not in err
    assert main(["transcoders", "--model", "/no/such/model", "--evaluate", "--dead-tokens", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --dead-tokens must be a whole number >= 1") and "/no/such/model" not in err


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--top", "0"], ["top >= 1"]),
        (["--steer-tokens", "-1"], ["steer_tokens >= 0"]),
        (["--clamp", "0,nan"], ["multiples"]),
        (["--corrupt", SHORT, "--method", "atp"], ["same number of tokens"]),
        (["--hooks", "resid_post.1"], ["no SAE at"]),
    ],
)
def test_cases_cli_bad_input_exits_2(s, capsys, argv, words):
    from cases.command import main

    args = ["run", "--prompt", P, "--good", "sad", "--bad", "happy", "--out", str(s.tmp / "cli"), "--quiet"]
    assert main([*args, "--no-explain", *argv], model=s.m, saes=s.saes) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    for w in words:
        assert w in err


@pytest.mark.parametrize(
    "argv",
    [
        ["attribution", "run", "--prompt", "", "--model", "/no/such/model"],
        ["cases", "run", "--prompt", " ", "--good", " sad", "--bad", " happy", "--model", "/no/such/model"],
    ],
    ids=["attribution", "cases"],
)
def test_cli_from_a_shell_prints_one_line_not_a_traceback(argv):
    done = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: empty prompt") and done.stderr.count("\n") == 1
