"""The intervention engine on tiny random float64 models: every group of rows riding one forward pass equals
its own separate forward; batch edits touch the batch's rows only; keep_batch=False computes the same rows;
leaves give each row's own gradient; groups starting inside a block see the clean value there."""

import pytest
import torch

from attribution.engine import Add, Group, Set, trace
from tests.conftest import PROMPTS, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def m():
    return tiny_model("gemma3")


def _bump(scale: float, pos: int = 3):
    return lambda x: x + scale * torch.ones_like(x) * (torch.arange(x.shape[1])[None, :, None] == pos)


def test_groups_equal_separate_forwards(m):
    batch = m.tokenize(PROMPTS[0])
    groups = [
        Group({"mlp_out.1": _bump(0.5)}, n=2),  # joins at resid_pre.1, edited inside the block
        Group({"resid_post.0": Add(torch.tensor([2, 4]), torch.randn(2, m.d_model, dtype=torch.float64))}, n=2),
        Group({"resid_pre.1": _bump(-1.0), "resid_post.2": _bump(2.0, pos=5)}),
    ]
    tr = trace(m, batch, groups=groups, capture=["resid_post.2"])
    assert torch.equal(tr.hidden[:1], trace(m, batch).hidden)  # row 0 stays clean
    for g, span in zip(groups, tr.groups):
        one = m.tokenize([PROMPTS[0]] * g.n)
        alone = trace(m, one, edits=g.edits, capture=["resid_post.2"])
        torch.testing.assert_close(tr.hidden[span], alone.hidden, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(tr.acts["resid_post.2"][span], alone.acts["resid_post.2"], rtol=1e-12, atol=1e-12)
    order = [s.start for s in tr.groups]
    assert order == [3, 1, 5]  # rows in the order groups join: resid_post.0, resid_pre.1 (two groups, as listed)


def test_batch_edits_touch_the_batch_rows_and_groups_copy_the_edited_source(m):
    batch = m.tokenize(PROMPTS[0])
    zero = Set(torch.zeros(1, batch.width, m.d_model, dtype=torch.float64))
    tr = trace(
        m,
        batch,
        edits={"resid_post.0": _bump(1.0), "resid_post.1": zero},
        groups=[Group({"resid_post.0": lambda x: x}), Group({"resid_pre.2": lambda x: x})],
        capture=["resid_post.1", "resid_pre.2"],
    )
    first, second = tr.groups
    edited = trace(m, batch, edits={"resid_post.0": _bump(1.0)}, capture=["resid_post.1"])
    assert torch.equal(tr.acts["resid_post.1"][:1], torch.zeros_like(tr.acts["resid_post.1"][:1]))
    torch.testing.assert_close(tr.acts["resid_post.1"][first], edited.acts["resid_post.1"])  # not zeroed
    assert torch.equal(tr.acts["resid_pre.2"][second], tr.acts["resid_pre.2"][:1])  # a copy of the zeroed row


def test_keep_batch_false_computes_the_same_rows(m):
    batch = m.tokenize(PROMPTS[1])
    group = Group({"resid_post.0": _bump(0.3), "resid_post.2": _bump(-0.7, pos=2)}, n=3)
    kept = trace(m, batch, groups=[group])
    only = trace(m, batch, groups=[group], keep_batch=False)
    assert only.hidden.shape[0] == 3 and only.groups[0] == slice(0, 3)
    torch.testing.assert_close(only.hidden, kept.hidden[kept.groups[0]], rtol=1e-12, atol=1e-12)
    with pytest.raises(Exception, match="join at one hook"):
        trace(m, batch, groups=[group, Group({"resid_post.1": _bump(1.0)})], keep_batch=False)


def test_leaves_give_each_rows_own_gradient(m):
    batch = m.tokenize(PROMPTS[0])
    scales = torch.tensor([0.0, 0.5, -1.0], dtype=torch.float64)
    group = Group({"resid_post.0": lambda x: x * (1 + scales[:, None, None])}, n=3, leaves=("resid_post.0",))
    tr = trace(m, batch, groups=[group], grad=True)
    out = tr.hidden[tr.groups[0]][:, -1].sum(-1)  # one objective per row
    (g,) = torch.autograd.grad(out.sum(), tr.leaves[(0, "resid_post.0")])
    for r in range(3):
        x = trace(m, batch, capture=["resid_post.0"]).acts["resid_post.0"] * (1 + scales[r])
        leaf = x.detach().requires_grad_(True)
        alone = trace(m, batch, edits={"resid_post.0": lambda _, leaf=leaf: leaf}, grad=True)
        (ref,) = torch.autograd.grad(alone.hidden[:, -1].sum(), leaf)
        torch.testing.assert_close(g[r : r + 1], ref, rtol=1e-10, atol=1e-12)
