"""Memory planning on tiny models: with a small fake budget (memory.limit) a request that cannot fit fails
before any forward pass with a message naming what lowers it; one that fits only in pieces is chunked, and
the chunked results equal the one-shot ones."""

import importlib

import pytest
import torch

from attribution import LogitDiff, ablate, attribute, memory
from graphs import build as build_mod
from graphs import build_graph
from graphs import edges as edges_mod
from tests.conftest import PROMPTS, random_sae, tiny_model

attribute_mod = importlib.import_module("attribution.attribute")  # the package's names are the functions
ablate_mod = importlib.import_module("attribution.ablate")
pytestmark = pytest.mark.usefixtures("one_thread")

HOOKS = ["resid_post.0", "resid_post.2"]


@pytest.fixture(scope="module")
def setup():
    m = tiny_model("gemma3")
    saes = {h: random_sae(m, h, seed=i) for i, h in enumerate(HOOKS)}
    return m, saes, LogitDiff(m, "sad", "happy")


@pytest.fixture
def no_forward(monkeypatch):
    """Any forward pass fails the test: errors must come before any work."""

    def forbidden(*a, **k):
        raise AssertionError("a forward pass ran before the memory check")

    for mod in (attribute_mod, ablate_mod, edges_mod):
        monkeypatch.setattr(mod, "trace", forbidden)


@pytest.fixture
def counted(monkeypatch):
    """Counts forward passes (trace calls) in ablate and the graph's edges."""
    calls = {"ablate": 0, "edges": 0}

    def wrap(mod, key):
        real = mod.trace

        def fn(*a, **k):
            calls[key] += 1
            return real(*a, **k)

        monkeypatch.setattr(mod, "trace", fn)

    wrap(ablate_mod, "ablate")
    wrap(edges_mod, "edges")
    return calls


def _budget_for(bytes_: int) -> float:
    """The limit (GiB) whose budget is `bytes_`."""
    return bytes_ / memory.HEADROOM / memory.GiB


def _record_past_starts(monkeypatch, module) -> list[int]:
    """The start positions of every cached clean prefix `module` builds (filled as it runs)."""
    starts, real = [], module.Past

    def past(model, batch, start):
        starts.append(start)
        return real(model, batch, start)

    monkeypatch.setattr(module, "Past", past)
    return starts


def _edges_by_id(graph) -> dict[tuple[str, str], float]:
    """{(source id, target id): weight} of a graph's edges, comparable across graphs of other node sets."""
    ids = [x.id for x in graph.full_nodes]
    return {(ids[s], ids[d]): w for s, d, w in zip(graph.src.tolist(), graph.dst.tolist(), graph.weight.tolist())}


def test_budget_override_and_available(monkeypatch):
    assert memory.available() > 0
    with memory.limit(2):
        assert memory.available() == 2 * memory.GiB
        assert memory.budget() == int(2 * memory.GiB * memory.HEADROOM)
    monkeypatch.setenv(memory.ENV, "0.5")
    assert memory.available() == memory.GiB // 2


def test_attribute_too_large_fails_before_work(setup, no_forward):
    m, saes, metric = setup
    with memory.limit(1e-6), pytest.raises(memory.OutOfMemoryError) as err:
        attribute(m, saes, PROMPTS[0], metric)
    msg = str(err.value)
    assert "needs ~" in msg and "available" in msg and "shorter prompt" in msg
    with memory.limit(1e-6), pytest.raises(memory.OutOfMemoryError, match="max_rows"):
        attribute(m, saes, PROMPTS[0], metric, method="ig", max_rows=40)
    with memory.limit(1e-6), pytest.raises(memory.OutOfMemoryError, match=r"lower `steps=`"):
        attribute(m, saes, PROMPTS[0], metric, method="ig")


def test_ablate_too_large_fails_before_work(setup, no_forward):
    m, saes, metric = setup
    nodes = [(h, p, None) for h in HOOKS for p in range(1, 8)]
    batch = m.tokenize(PROMPTS[0])
    per_row, fixed = ablate_mod.pass_bytes(m, saes, [(0, h, p, -1) for h, p, _ in nodes], batch, patch=False)
    small = memory.limit(_budget_for(fixed + 3.5 * per_row))
    with small, pytest.raises(memory.OutOfMemoryError, match=r"lower `batch_size=` \(~3 fit\)"):
        ablate(m, saes, PROMPTS[0], metric, nodes, batch_size=14, progress=False)
    with memory.limit(1e-7), pytest.raises(memory.OutOfMemoryError, match=r"needs ~\d+ KiB, \d+ KiB available"):
        ablate(m, saes, PROMPTS[0], metric, nodes, progress=False)


def test_graph_too_large_fails_before_work(setup, no_forward):
    m, saes, metric = setup
    width = m.tokenize(PROMPTS[0]).width
    kept = build_mod.kept_bytes(m, saes, width)
    clean = memory.forward_bytes(m, 1, width, m.n_layers, grad=True) + kept
    small = memory.limit(_budget_for(max(clean, kept + 3.5 * edges_mod.row_bytes(m, width, 2))))
    with small, pytest.raises(memory.OutOfMemoryError, match=r"lower `max_rows=` \(~\d+ fit\)"):
        build_graph(m, saes, PROMPTS[0], metric, labels=False, max_rows=200)
    with memory.limit(1e-7), pytest.raises(memory.OutOfMemoryError, match="shorter prompt"):
        build_graph(m, saes, PROMPTS[0], metric, labels=False)


def test_ablate_chunked_by_budget_equals_one_pass(setup, counted):
    m, saes, metric = setup
    nodes = attribute(m, saes, PROMPTS[0], metric).top(40)
    one = ablate(m, saes, PROMPTS[0], metric, nodes, batch_size=64, progress=False)
    assert counted["ablate"] == 2  # the clean capture and one growing-batch pass
    batch = m.tokenize(PROMPTS[0])
    keys = [ablate_mod._check_key(n.key, m, saes, batch) for n in nodes]
    per_row, fixed = ablate_mod.pass_bytes(m, saes, keys, batch, patch=False)
    with memory.limit(_budget_for(fixed + 7.5 * per_row)):
        rows = ablate_mod._rows_per_pass(m, saes, keys, batch, None, False)
        counted["ablate"] = 0
        chunked = ablate(m, saes, PROMPTS[0], metric, nodes, progress=False)
    assert rows == 7
    assert counted["ablate"] == 1 + -(-40 // rows)
    torch.testing.assert_close(chunked.effect, one.effect, rtol=0, atol=1e-12)


def test_attribute_groups_prompts_by_budget(setup):
    m, saes, metric = setup
    one = attribute(m, saes, PROMPTS, metric)
    per_prompt = attribute_mod._prompt_bytes(m, saes, m.tokenize(PROMPTS).width, corrupt=False)
    with memory.limit(_budget_for(int(1.5 * per_prompt))):  # one prompt per group
        grouped = attribute(m, saes, PROMPTS, metric)
    assert grouped.node_keys() == one.node_keys()  # same nodes in the same order
    for col in ("activation", "gradient", "value"):
        torch.testing.assert_close(getattr(grouped, col), getattr(one, col), rtol=0, atol=1e-12)
    torch.testing.assert_close(grouped.metric, one.metric, rtol=0, atol=1e-12)


def test_graph_rows_by_budget_equal_one_pass(setup, counted):
    """Auto-sized chunks (rows in position order, the prompt cut after each chunk's last position) give the
    edges of one pass over every row."""
    m, saes, metric = setup
    whole = build_graph(m, saes, PROMPTS[0], metric, candidates=None, labels=False, max_rows=10_000)
    passes = counted["edges"]
    width = m.tokenize(PROMPTS[0]).width
    per_row = edges_mod.row_bytes(m, width, 2)
    kept = build_mod.kept_bytes(m, saes, width)
    with memory.limit(_budget_for(kept + 6 * per_row)):
        counted["edges"] = 0
        chunked = build_graph(m, saes, PROMPTS[0], metric, candidates=None, labels=False)
    assert counted["edges"] > passes  # more, smaller passes
    a = {(s, d): w for s, d, w in zip(chunked.src.tolist(), chunked.dst.tolist(), chunked.weight.tolist())}
    b = {(s, d): w for s, d, w in zip(whole.src.tolist(), whole.dst.tolist(), whole.weight.tolist())}
    assert a.keys() == b.keys() and len(a) > 500
    assert all(a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-12) for k in a)


def test_error_nodes_keep_the_largest_and_their_edges(setup):
    m, saes, metric = setup
    full = build_graph(m, saes, PROMPTS[0], metric, candidates=None, labels=False)
    few = build_graph(m, saes, PROMPTS[0], metric, candidates=None, error_nodes=3, labels=False)
    for h in HOOKS:
        errs = [x for x in full.full_nodes if x.kind == "error" and x.hook == h]
        kept = {x.id for x in few.full_nodes if x.kind == "error" and x.hook == h}
        want = sorted(errs, key=lambda x: -abs(x.attribution))[:3]
        assert kept == {x.id for x in want}

    a, b = _edges_by_id(few), _edges_by_id(full)
    assert a and all(k in b and a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-12) for k in a)


def test_edges_over_a_cached_prefix_equal_the_whole_prompt(setup, monkeypatch):
    """With few nodes per layer the first upstream node sits late: edges then run from it on over the clean
    prefix's keys and values, and equal the same edges of the full graph."""
    m, saes, metric = setup
    starts = _record_past_starts(monkeypatch, edges_mod)
    few = build_graph(m, saes, PROMPTS[0], metric, candidates=2, error_nodes=1, labels=False)
    assert max(starts) > 3
    full = build_graph(m, saes, PROMPTS[0], metric, candidates=None, labels=False)

    a, b = _edges_by_id(few), _edges_by_id(full)
    inner = [k for k in a if not k[0].startswith("tok:") and k[1] != "metric"]
    assert inner and all(k in b and a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-12) for k in a)


@pytest.mark.parametrize("family", ["gemma3", "gpt2"])
def test_ablation_over_the_cached_prefix_equals_the_whole_prompt(family, monkeypatch):
    """Chunks run from their earliest node on, over the clean prefix's keys and values (gemma3: sliding
    window 4, shorter than the prompt); a metric on full logits needs every position and runs them all."""
    m = tiny_model(family)
    saes = {h: random_sae(m, h, seed=i) for i, h in enumerate(HOOKS)}
    metric = LogitDiff(m, "sad", "happy")
    nodes = attribute(m, saes, PROMPTS[0], metric).top(30)
    assert len({n.position for n in nodes}) > 3
    starts = _record_past_starts(monkeypatch, ablate_mod)
    cached = ablate(m, saes, PROMPTS[0], metric, nodes, batch_size=8, progress=False)
    assert len(starts) == 4 and max(starts) > 5  # latest positions first
    whole = ablate(m, saes, PROMPTS[0], lambda logits: metric(logits), nodes, batch_size=8, progress=False)
    assert len(starts) == 4  # full logits: no prefix reused
    torch.testing.assert_close(cached.effect, whole.effect, rtol=0, atol=1e-10)
    torch.testing.assert_close(cached.metric, whole.metric, rtol=0, atol=1e-10)


def test_direct_edges_skip_nodes_before_the_first_upstream_node(setup):
    """Downstream nodes earlier than every upstream node get no edge (and no row), and starting from the
    first upstream node gives the edges of a run over the whole prompt."""
    m = setup[0]
    batch = m.tokenize(PROMPTS[0])
    g = torch.Generator().manual_seed(0)
    vec = torch.randn(5, m.d_model, generator=g, dtype=torch.float64)
    up = edges_mod.Side(torch.tensor([0, 1]), torch.tensor([8, 9]), vec[:2])
    down = edges_mod.Side(torch.tensor([2, 3, 4]), torch.tensor([3, 9, 11]), vec[2:])
    late = edges_mod.direct_edges(m, batch, "resid_post.0", up, "resid_post.2", down, 1)  # one row per pass
    # a zero-valued upstream node at position 1 makes every row run from position 1: same nonzero edges
    up1 = edges_mod.Side(torch.tensor([0, 1, 5]), torch.tensor([8, 9, 1]), torch.cat([vec[:2], vec[:1] * 0]))
    early = edges_mod.direct_edges(m, batch, "resid_post.0", up1, "resid_post.2", down, None)
    a = {(s, d): w for s, d, w in zip(*(x.tolist() for x in late))}
    b = {(s, d): w for s, d, w in zip(*(x.tolist() for x in early))}
    assert a.keys() == b.keys() == {(0, 3), (1, 3), (0, 4), (1, 4)}
    assert all(a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-12) for k in a)
