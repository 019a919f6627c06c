"""The replacement graph's memory plan: with default arguments a build takes the feature rows and the batch
that fit the memory it has (and says so in graph.info["plan"]); a request that cannot fit fails before any
work, naming the value that would; a batch of rows sharing one forward gives the rows one at a time do."""

from __future__ import annotations

import pytest
import torch

from attribution import LogitDiff, memory
from graphs import GraphError
from graphs.replacement import build_replacement_graph
from tests.conftest import PROMPTS, tiny_model
from tests.conftest import random_transcoders as transcoders

pytestmark = pytest.mark.usefixtures("one_thread")


def _setup():
    m = tiny_model("gemma3")
    return m, transcoders(m, "relu"), LogitDiff(m, "sad", "happy")


def _build(m, tcs, metric, **kw):
    return build_replacement_graph(m, tcs, PROMPTS[0], metric, labels=False, progress=False, **kw)


def test_default_build_takes_every_row_when_it_fits():
    m, tcs, metric = _setup()
    g = _build(m, tcs, metric)
    plan = g.info["plan"]
    assert plan["feature_rows"] == g.info["active_features"]
    assert 1 <= plan["batch_size"] <= 64
    assert sum(x.kind == "feature" for x in g.full_nodes) == g.info["active_features"]


def test_default_build_caps_rows_to_the_memory_it_has_most_influential_first():
    from graphs.replacement import plan_replacement_graph

    m, tcs, metric = _setup()
    full = _build(m, tcs, metric)
    n = full.info["active_features"]
    p = plan_replacement_graph(m, tcs, PROMPTS[0], metric, max_feature_nodes=n, batch_size=8)
    # a budget that holds about a third of the rows' entries: HEADROOM of the limit is what a build may plan to use
    need = p.fixed_bytes + p.batch_bytes + 0.34 * p.entries * p.entry_bytes
    with memory.limit(need / memory.HEADROOM / memory.GiB):
        capped = _build(m, tcs, metric, batch_size=8)
    rows = capped.info["plan"]["feature_rows"]
    assert 0 < rows < n and capped.info["plan"]["chosen"]
    assert sum(x.kind == "feature" for x in capped.full_nodes) == rows
    # the same rows as asking for that many (the influence ranking decides both), edges equal to the full graph's
    asked = _build(m, tcs, metric, max_feature_nodes=rows, batch_size=capped.info["plan"]["batch_size"])
    assert [x.id for x in asked.full_nodes] == [x.id for x in capped.full_nodes]
    full_w = {(e.source, e.target): e.weight for e in full.edges}
    for e in capped.edges:
        assert e.weight == pytest.approx(full_w[(e.source, e.target)], rel=1e-6, abs=1e-9)


def test_an_explicit_cap_that_cannot_fit_names_what_fits():
    from graphs.replacement import plan_replacement_graph

    m, tcs, metric = _setup()
    n = _build(m, tcs, metric).info["active_features"]
    p = plan_replacement_graph(m, tcs, PROMPTS[0], metric, max_feature_nodes=n, batch_size=8)
    half = (p.fixed_bytes + p.batch_bytes + p.entries * p.entry_bytes / 2) / memory.HEADROOM / memory.GiB
    with memory.limit(half), pytest.raises(memory.OutOfMemoryError) as err:
        _build(m, tcs, metric, max_feature_nodes=n, batch_size=8)
    assert "max_feature_nodes" in str(err.value) and "fit" in str(err.value)


def test_nothing_fits_asks_for_a_shorter_prompt():
    m, tcs, metric = _setup()
    with memory.limit(1e-6), pytest.raises(memory.OutOfMemoryError, match="shorter prompt"):
        _build(m, tcs, metric)


@pytest.mark.parametrize("bad", [{"batch_size": 0}, {"batch_size": 2.5}, {"max_feature_nodes": -1}])
def test_bad_sizes_are_refused(bad):
    m, tcs, metric = _setup()
    with pytest.raises(GraphError, match="None: the build takes what"):
        _build(m, tcs, metric, **bad)


def test_rows_sharing_one_forward_equal_rows_one_at_a_time():
    m, tcs, metric = _setup()
    one = _build(m, tcs, metric, batch_size=1)  # every row (a cap would re-rank at batch-dependent points)
    many = _build(m, tcs, metric, batch_size=13)
    assert [x.id for x in one.full_nodes] == [x.id for x in many.full_nodes]
    a = torch.tensor([e.weight for e in one.edges], dtype=torch.float64)
    b = torch.tensor([e.weight for e in many.edges], dtype=torch.float64)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9 * float(a.abs().max()))


def test_plan_says_what_a_build_would_compute():
    from graphs.replacement import plan_replacement_graph

    m, tcs, metric = _setup()
    p = plan_replacement_graph(m, tcs, PROMPTS[0], metric, max_feature_nodes=25, batch_size=5)
    g = _build(m, tcs, metric, max_feature_nodes=25, batch_size=5)
    assert (p.rows, p.batch, p.features) == (25, 5, g.info["active_features"])
    with memory.limit(1e-6), pytest.raises(memory.OutOfMemoryError, match="shorter prompt"):
        plan_replacement_graph(m, tcs, PROMPTS[0], metric)


def test_eager_attention_gives_the_rows_sdpa_does(monkeypatch):
    """The build runs attention eagerly (engine.eager_attention: the frozen pattern's backward is a matmul);
    in float32 its edges equal SDPA's to float32 precision (float64 models keep SDPA: eager's softmax is float32)."""
    import contextlib

    import graphs.replacement as R

    m = tiny_model("gemma3", dtype=torch.float32)
    if m.hf.config._attn_implementation == "eager":
        pytest.skip("the tiny model already runs eager attention")
    tcs = transcoders(m, "relu")
    metric = LogitDiff(m, "sad", "happy")
    eager = _build(m, tcs, metric)
    monkeypatch.setattr(R, "eager_attention", lambda model: contextlib.nullcontext())
    sdpa = _build(m, tcs, metric)
    a = torch.tensor([e.weight for e in eager.edges], dtype=torch.float64)
    b = torch.tensor([e.weight for e in sdpa.edges], dtype=torch.float64)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def test_the_build_never_holds_dense_rows_for_every_target():
    """The rows are kept sparse batch by batch (graphs.replacement_rows.SparseRows): no tensor the build makes is
    even half a dense [1 + rows, sources] matrix (the old layout held all of it, then laid the edges out beside
    it); the largest is the rows' entry arrays, at the plan's bound on the nonzeros."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    self.numel = max(self.numel, t.numel())
            return out

    m, tcs, metric = _setup()
    with Largest() as seen:
        g = _build(m, tcs, metric, batch_size=8)
    rows, sources = g.info["plan"]["feature_rows"], len(g.full_nodes) - 1  # every source is a node here
    assert rows == g.info["active_features"] and len(g.src) < seen.numel
    assert seen.numel < (rows + 1) * sources / 2
