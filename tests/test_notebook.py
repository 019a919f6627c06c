"""Results render in a notebook: `_repr_html_` of Attribution, Ablation, Agreement, FeatureCard, Graph and a
graph check gives escaped HTML holding the numbers the result holds."""

import html
import re

import pytest
import torch
from markupsafe import escape

from attribution import LogitDiff, ablate, attribute, compare, explain, feature_indexes
from graphs import build_graph, check
from pages import notebook
from tests.conftest import PROMPTS, random_sae, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")
HOOKS = ["resid_post.0", "resid_post.1"]


@pytest.fixture(scope="module")
def run():
    m = tiny_model("gemma3")
    saes = {h: random_sae(m, h, seed=i) for i, h in enumerate(HOOKS)}
    metric = LogitDiff(m, "sad", "happy")
    attr = attribute(m, saes, PROMPTS[0], metric)
    abl = ablate(m, saes, PROMPTS[0], metric, attr.top(12), progress=False)
    return m, saes, metric, attr, abl


def _text(page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def test_node_tables_show_their_top_nodes(run):
    _, _, _, attr, abl = run
    for table, column in ((attr, "attribution"), (abl, "effect")):
        page = table._repr_html_()
        assert "<table" in page and f">{column}<" in page and str(table).splitlines()[0] in _text(page)
        for n in table.top(10, prompt=None):
            assert f"{n.attribution:+.4g}" in page and str(escape(repr(n.token))) in page
        assert f"{len(table) - 10} more node(s)" in page


def test_agreement_and_check_tables(run):
    m, saes, metric, attr, abl = run
    agreement = compare(attr, abl)
    page = agreement._repr_html_()
    assert f"{agreement.pearson:.3f}" in page and f"{agreement.spearman:.3f}" in page
    g = build_graph(m, saes, PROMPTS[0], metric, labels=False, progress=False)
    result = check(m, saes, g.prune(0.6, 0.9))
    assert f"{result.graph:+.4f}" in result._repr_html_() and "faithfulness" in result._repr_html_()


def test_graph_is_its_offline_page_in_an_iframe(run):
    m, saes, metric, _, _ = run
    g = build_graph(m, saes, PROMPTS[0], metric, labels=lambda h, f: f"<f{f} & co>", progress=False).prune(0.6, 0.9)
    page = g._repr_html_()
    assert page.startswith("<iframe srcdoc=") and "vis.Network" in html.unescape(page)
    assert "<f" not in page.split("srcdoc=", 1)[1].split('"', 2)[1]  # the page is escaped inside the attribute
    assert all(x.id in html.unescape(page) for x in g.nodes)
    too_big = notebook.graph(g, max_edges=0)  # more edges than a page can draw: the summary instead
    assert "prune it to draw it" in too_big and "iframe" not in too_big


def test_feature_card_renders_escaped(run, tmp_path, monkeypatch):
    m, saes, _, _, _ = run
    monkeypatch.setenv("ATTRIBUTION_CACHE", str(tmp_path / "cache"))
    ids = torch.randint(4, m.hf.config.vocab_size, (8, 12), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = m.tokenizer.bos_token_id
    idx = feature_indexes(m, saes, tokens=ids, progress=False)[HOOKS[0]]
    alive = int(idx.t["count"].argmax())
    card = explain(m, saes[HOOKS[0]], alive, index=idx)
    page = card._repr_html_()
    assert f"{HOOKS[0]} #{alive}" in page and "Top contexts" in page
    for c in card.contexts:
        assert all(str(escape(t)) in page for t in c.tokens)


def test_case_report_renders_in_an_iframe(run):
    import cases

    m, saes, _, _, _ = run
    report = cases.run(PROMPTS[0], "sad", "happy", model=m, saes=saes, explain=False, graph=False, progress=False)
    page = report._repr_html_()
    assert page.startswith("<iframe srcdoc=") and report.prompt in html.unescape(page)
    assert f"= <b>{report.metric:+.3f}</b>" in html.unescape(page)
