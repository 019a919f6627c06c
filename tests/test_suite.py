"""The multi-hop suite on tiny models: prompts as data, supernodes found by contrast (a planted feature is
found, and only it), suppression and swaps equal the interventions they describe, the aggregate graph counts
prompts, and the suite command writes the report its schema promises."""

from __future__ import annotations

import json

import pytest
import torch

import graphs.supernodes
from attribution import LogitDiff
from attribution.engine import trace
from cases import command
from cases.suite import SuiteOptions, contrasts, run_suite
from cases.suite_prompts import TWO_HOP, SuiteError, SuitePrompt, check, load_suite
from graphs import build_graph
from graphs.aggregate import aggregate
from graphs.hop import suppress, swap
from graphs.interventions import ablate_group, steer_group
from graphs.supernodes import Contrast, supernodes
from tests.conftest import random_sae, random_transcoders, tiny_model

HOOKS = ("resid_post.0", "resid_post.1")
MARK = "kobe"  # the word the planted feature stands for
WITH = ["the capital of state where kobe played basketball is", "kobe bryant played basketball", "john says kobe"]
WITHOUT = ["the capital of state where mary went home is", "mary went home and felt tired", "john says i want"]
PLANTED = 7  # the feature index at resid_post.0 that fires on MARK and nowhere else


@pytest.fixture(scope="module")
def setup():
    """A tiny model and SAEs at two layers, with feature PLANTED at resid_post.0 firing on MARK's token only."""
    m = tiny_model("gemma3")
    saes = {h: random_sae(m, h, seed=i) for i, h in enumerate(HOOKS)}
    batch = m.tokenize(WITH + WITHOUT)
    x = trace(m, batch, capture=[HOOKS[0]], stop_early=True).acts[HOOKS[0]]  # [prompts, pos, d]
    ids = batch.input_ids
    on = x[ids == m.tokenizer.convert_tokens_to_ids(MARK)]
    off = x[(ids != m.tokenizer.convert_tokens_to_ids(MARK)) & batch.node_mask()]
    d = on.mean(0) - off.mean(0)
    d = d / d.norm()
    lo, hi = float((off @ d).max()), float((on @ d).min())
    assert hi > lo, "the word's residual must be separable for the test to mean anything"
    sae = saes[HOOKS[0]]
    with torch.no_grad():
        sae.W_enc[:, PLANTED] = d
        sae.b_enc[PLANTED] = -(lo + hi) / 2
    return m, saes


def _graph(m, saes, prompt=WITH[0]):
    metric = LogitDiff(m, "sad", "happy")
    return build_graph(m, saes, prompt, metric, candidates=None, labels=False, progress=False)


def test_the_planted_feature_is_the_group_found_and_nothing_else(setup, monkeypatch):
    m, saes = setup
    g = _graph(m, saes)
    found = supernodes(m, saes, g, {"Kobe": Contrast(WITH, WITHOUT, "any")}, min_score=1.0, kept_only=False)
    assert [s.name for s in found] == ["Kobe"]
    members = [g.node(i) for i in found[0].members]
    position = g.tokens.index(MARK)
    assert {(x.hook, x.feature, x.position) for x in members} == {(HOOKS[0], PLANTED, position)}
    assert g.groups["Kobe"] == found[0].members and "100% of 3 prompt(s)" in found[0].label
    # a cache shared by calls runs each contrast's prompts once and gives the same groups
    cache, calls = {}, []
    real = graphs.supernodes.contrast
    monkeypatch.setattr(graphs.supernodes, "contrast", lambda *a, **k: calls.append(1) or real(*a, **k))
    twice = [supernodes(m, saes, g, {"Kobe": Contrast(WITH, WITHOUT, "any")}, min_score=1.0, kept_only=False,
                        cache=cache) for _ in range(2)]  # fmt: skip
    assert len(calls) == 1 and twice[0][0].members == twice[1][0].members == found[0].members
    # where= picks the prompt's positions: the word is not the last token, so "last" finds no node of it
    assert supernodes(m, saes, g, {"K": Contrast(WITH, WITHOUT, "any", where="not_last")}, min_score=1.0)
    assert supernodes(m, saes, g, {"K2": Contrast(WITH, WITHOUT, "any", where="last")}, min_score=1.0) == []
    # no feature separates a set of prompts from itself: no group, not an empty one
    none = supernodes(m, saes, g, {"nothing": Contrast(WITH, WITH, "any")}, min_score=0.5)
    assert none == [] and "nothing" not in g.groups


def test_an_attribution_ranked_group_is_the_graphs_credited_features_that_pass_the_contrast(setup):
    m, saes = setup
    g = _graph(m, saes)
    c = Contrast(WITH, WITHOUT, "any", where="not_last", rank="attribution", min_score=0.3)
    (found,) = supernodes(m, saes, g, {"carried": c}, min_score=1.0, kept_only=False)
    passed = {(x.hook, x.feature): x for x in graphs.supernodes.contrast_features(m, saes, c)}
    assert passed and all(x.score >= 0.3 for x in passed.values())  # the contrast's own threshold, not 1.0
    last = len(g.tokens) - 1
    credit: dict = {}
    for x in g.full_nodes:
        if x.kind == "feature" and x.position != last and (x.hook, x.feature) in passed:
            credit[(x.hook, x.feature)] = credit.get((x.hook, x.feature), 0.0) + x.attribution
    expected = sorted((k for k, v in credit.items() if v > 0), key=lambda k: -credit[k])[:12]
    assert [(f["hook"], f["feature"]) for f in found.features] == expected
    assert [f["attribution"] for f in found.features] == pytest.approx([credit[k] for k in expected])
    assert {(x.hook, x.feature) for x in map(g.node, found.members)} == set(expected)
    assert all(g.node(i).position != last for i in found.members) and "of the metric's attribution" in found.label
    # within=: only at the tokens where an earlier group sits (the planted word's), and nothing if it is absent
    placed = {"Kobe": Contrast(WITH, WITHOUT, "any"), "carried here": Contrast(
        WITH, WITHOUT, "any", where="not_last", rank="attribution", min_score=0.3, within="Kobe")}  # fmt: skip
    found = {s.name: s for s in supernodes(m, saes, g, placed, min_score=1.0, kept_only=False)}
    position = g.tokens.index(MARK)
    assert {g.node(i).position for i in found["carried here"].members} == {position}
    at_word: dict = {}
    for x in g.full_nodes:
        if x.kind == "feature" and x.position == position and (x.hook, x.feature) in passed:
            at_word[(x.hook, x.feature)] = at_word.get((x.hook, x.feature), 0.0) + x.attribution
    best_here = sorted((k for k, v in at_word.items() if v > 0), key=lambda k: -at_word[k])[:12]
    assert [(f["hook"], f["feature"]) for f in found["carried here"].features] == best_here
    orphan = {"alone": Contrast(WITH, WITHOUT, "any", rank="attribution", min_score=0.3, within="absent")}
    assert supernodes(m, saes, g, orphan, kept_only=False) == []
    with pytest.raises(graphs.supernodes.GraphError, match="rank must be one of"):
        Contrast(WITH, WITHOUT, rank="influence")


def test_a_pruned_group_can_be_drawn_with_its_edges(setup):
    m, saes = setup
    full = _graph(m, saes)
    pruned = full.prune(0.5, 0.9, max_feature_nodes=1)
    hidden = [x.id for x in full.full_nodes if x.kind == "feature" and not pruned.kept(x.id)][:3]
    drawn = pruned.with_nodes(hidden)
    assert all(drawn.kept(i) for i in hidden) and not any(pruned.kept(i) for i in hidden)
    kept = {x.id for x in drawn.nodes}
    edges = {(e.source, e.target) for e in drawn.edges}
    expected = {(e.source, e.target) for e in full.edges if e.source in kept and e.target in kept}
    assert {(s, t) for s, t in expected if s in hidden or t in hidden} <= edges <= expected
    assert drawn.pruning == pruned.pruning and pruned.edge_mask.sum() <= drawn.edge_mask.sum()


def test_suppression_and_swap_are_the_interventions_they_describe(setup):
    m, saes = setup
    g = _graph(m, saes)
    g.group("Kobe", [(HOOKS[0], PLANTED)])
    out = suppress(m, saes, g, "Kobe", answers=["sad", "happy"])
    assert out.metric_after - out.metric_before == pytest.approx(ablate_group(m, saes, g, "Kobe"), abs=1e-9)
    assert out.replacement_before == pytest.approx(out.metric_before, rel=1e-6)  # frozen at the clean values
    same = suppress(m, saes, g, "Kobe", factor=1.0, answers=["sad"])  # each member at its own activation
    assert same.metric_after == pytest.approx(same.metric_before, abs=1e-9)
    assert same.replacement_after == pytest.approx(same.replacement_before, rel=1e-6)
    assert same.answers["sad"]["rank_after"] == same.answers["sad"]["rank_before"]
    # the group swapped for itself (one member, its own activation at its own position) changes nothing
    back = swap(m, saes, g, "Kobe", g, "Kobe", answers=["sad"])
    assert back.metric_after == pytest.approx(back.metric_before, abs=1e-9) and back.positions == [g.tokens.index(MARK)]
    # scaled up, the injected feature moves the metric by what clamping the member to 3x does (steer_group)
    big = swap(m, saes, g, "Kobe", g, "Kobe", scale=3.0)
    assert big.metric_after != pytest.approx(big.metric_before, abs=1e-6)
    assert big.metric_after - big.metric_before == pytest.approx(steer_group(m, saes, g, "Kobe", 3.0), abs=1e-9)


def test_the_aggregate_counts_the_prompts_that_share_each_node(setup):
    m, saes = setup
    graphs = {i: _graph(m, saes, p).prune(0.8, 0.98) for i, p in enumerate(WITH[:2])}
    agg = aggregate(graphs)
    for key, node in agg.nodes.items():
        if key == "metric":
            continue
        holders = [i for i, g in graphs.items() if any(f"{x.hook} f{x.feature}" == key for x in g.nodes)]
        assert node.prompts == holders
    shared = agg.shared(2)
    assert all(len(n.prompts) == 2 for k, n in shared.nodes.items() if k != "metric")
    assert all(len(e.prompts) == 2 for e in shared.edges)


def test_suite_files_are_checked_line_by_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    for text, message in (
        ('{"id": "a", "prompt": "p"}', r"\['answer', 'counterfactual'\] missing"),
        ('{"id": "a", "prompt": "p", "answer": " x", "counterfactual": " y", "colour": 1}', "unknown field"),
        ('{"id": "a", "prompt": "p", "answer": " x", "counterfactual": " y", "swap": {"from": "zz"}}', "swap must"),
        (
            '{"id": "a", "prompt": "p", "answer": " x", "counterfactual": " y", "swap": {"from": "b", "expect": " y"}}',
            "no id of this suite",
        ),
        ("not json", "is not JSON"),
    ):
        bad.write_text(text + "\n")
        with pytest.raises(SuiteError, match=message):
            load_suite(bad)
    shipped = load_suite(TWO_HOP)
    assert len([p for p in shipped if p.hops >= 2]) >= 20 and len({p.relation for p in shipped if p.hops >= 2}) >= 3
    assert sum(p.swap is not None for p in shipped) >= 10


def test_the_suite_writes_its_report_and_the_command_checks_prompts(setup, tmp_path, capsys):
    m, saes = setup
    swap_to = {"from": "mary", "expect": " happy"}
    suite = [
        SuitePrompt("kobe_sad", WITH[0] + " john feels", " sad", " happy", "Kobe", None, "a -> b -> mood"),
        SuitePrompt("kobe_two", WITH[1] + " john feels", " sad", " happy", "Kobe", swap_to, "a -> b -> mood"),
        SuitePrompt("mary", WITHOUT[1] + " john feels", " happy", " sad", "Mary", None, "a -> b -> mood"),
        SuitePrompt("control", "john feels", " sad", " happy", None, None, "b -> mood", hops=1),
    ]
    # every answer here is a mood: no prompt of another kind to contrast "says a mood" with, so no such group
    assert set(contrasts(suite[0], suite)) == {"Kobe", "Kobe (this prompt)", "says sad"}
    options = SuiteOptions(labels=False, progress=False, require_top1=False, min_score=0.6)
    report = run_suite(m, saes, suite, tmp_path, options)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["summary"] == report["summary"] and set(saved) >= {"prompts", "aggregate", "summary"}
    rows = {r["id"]: r for r in saved["prompts"]}
    for key in ("id", "answer_p", "metric", "graph", "supernodes", "suppress"):
        assert key in rows["kobe_sad"], key
    assert set(rows["kobe_sad"]["graph"]) >= {"features", "replacement_score", "completeness_score", "faithfulness"}
    assert rows["kobe_sad"]["intermediate_found"] and rows["kobe_sad"]["suppress"]["group"] == "Kobe (this prompt)"
    assert rows["kobe_sad"]["suppress_shared"]["group"] == "Kobe"
    control, carried = rows["kobe_sad"]["suppress_control"], rows["kobe_sad"]["supernodes"]
    group = next(s for s in carried if s["name"] == "Kobe (this prompt)")
    assert "metric_after" in control or "error" in control
    if "features" in control:  # as many features as the group, none of them passing the entity's contrast
        entity = contrasts(suite[0], suite)["Kobe (this prompt)"]
        passed = {f"{x.hook} f{x.feature}" for x in graphs.supernodes.contrast_features(m, saes, entity)}
        assert control["features"] == len(control["members"]) <= len(group["features"])
        assert passed and not passed & set(control["members"])
    assert "graph" not in rows["control"]  # one-hop controls are checked, not graphed
    swap_row = rows["kobe_two"]["swap"]
    assert swap_row["from"] == "mary" and swap_row["expect"] == " happy"
    assert swap_row["group"] == "Kobe" and swap_row["with"] == "Mary (this prompt)"  # options.swap's default
    variants = rows["kobe_two"]["swap_variants"]
    assert set(variants) == {"shared->shared", "shared->entity", "entity->shared", "entity->entity"}
    assert variants["shared->entity"]["expect_rank_after"] == swap_row["expect_rank_after"]
    assert set(saved["summary"]["swap_top1_by_variant"]) == set(variants)
    with pytest.raises(SuiteError, match="swap must be two of"):
        SuiteOptions(swap=("shared", "landmark"))
    assert (tmp_path / "graphs" / "kobe_sad.html").is_file()
    assert "Multi-hop suite" in (tmp_path / "report.html").read_text()
    answered = check(m, suite)
    assert [a.id for a in answered] == [p.id for p in suite] and all(0 <= a.answer_p <= 1 for a in answered)
    jsonl = tmp_path / "suite.jsonl"
    jsonl.write_text("\n".join(json.dumps(p.to_dict()) for p in suite) + "\n")
    assert command.main(["suite", "--prompts", str(jsonl), "--check", "--quiet"], model=m) == 0
    out = capsys.readouterr().out
    assert "of 3 two-hop prompts and" in out and "of 1 one-hop controls are answered top-1" in out


def test_the_suite_runs_on_transcoders_as_replacement_graphs(setup, tmp_path):
    m, _ = setup
    tcs = random_transcoders(m, "topk")
    suite = [
        SuitePrompt("kobe_sad", WITH[0] + " john feels", " sad", " happy", "Kobe", None, "a -> b -> mood"),
        SuitePrompt("kobe_two", WITH[1] + " john feels", " sad", " happy", "Kobe", None, "a -> b -> mood"),
        SuitePrompt("mary", WITHOUT[1] + " john feels", " happy", " sad", "Mary", None, "a -> b -> mood"),
    ]
    options = SuiteOptions(labels=False, progress=False, require_top1=False, min_score=0.3, candidates=None)
    report = run_suite(m, tcs, suite, tmp_path, options)
    row = report["prompts"][0]
    assert row["graph"]["features"] > 0 and set(report["dictionaries"]) == set(tcs)
    assert json.loads((tmp_path / "graphs" / "kobe_sad.json").read_text())["nodes"]
    assert {s["name"] for s in row["supernodes"]} >= {"Kobe", "Kobe (this prompt)"}
    for key in ("suppress", "suppress_shared", "suppress_control"):  # the interventions run on transcoders too
        assert row[key]["metric_after"] != row[key]["metric_before"], key
