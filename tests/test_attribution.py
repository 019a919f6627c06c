"""Attribution checked against interventions: exact where the model after the SAE is linear, a
finite-difference derivative elsewhere, completeness for integrated gradients, batching invariance."""

import numpy as np
import pytest
import torch

from attribution import AttributionError, LogitDiff, SAEError, TokenizationError, ablate, attribute, compare, trace
from attribution.compare import rank
from attribution.metrics import Rows, evaluate
from tests.conftest import PROMPTS, random_sae, tiny_model
from tests.test_splice import _metric_with

CORRUPT = "mary says i want to be home right now john feels"  # same length as PROMPTS[0]


@pytest.fixture(scope="module")
def linear():
    """Final norm replaced by the identity: after resid_post.2 the metric is linear in the activation."""
    m = tiny_model("gemma3", linear_head=True)
    return m, {"resid_post.2": random_sae(m, "resid_post.2", d_sae=48)}, LogitDiff(m, "sad", "happy")


def test_grad_x_act_is_exact_when_downstream_is_linear(linear):
    m, saes, metric = linear
    attr = attribute(m, saes, PROMPTS[0], metric)
    assert (attr.feature >= 0).sum() > 50 and (attr.feature < 0).sum() == 11  # 11 non-<bos> error nodes
    abl = ablate(m, saes, PROMPTS[0], metric, attr.top(None))
    torch.testing.assert_close(abl.effect, attr.top_values(None), rtol=1e-9, atol=1e-9)
    agreement = compare(attr, abl)
    assert agreement.pearson == pytest.approx(1.0) and agreement.spearman == pytest.approx(1.0)
    assert all(v == 1.0 for v in agreement.top_k.values())


def test_atp_and_ig_are_exact_when_downstream_is_linear(linear):
    m, saes, metric = linear
    atp = attribute(m, saes, PROMPTS[0], metric, method="atp", corrupt=CORRUPT)
    patch = ablate(m, saes, PROMPTS[0], metric, atp.top(None), mode="patch", corrupt=CORRUPT)
    torch.testing.assert_close(patch.effect, atp.top_values(None), rtol=1e-9, atol=1e-9)
    gxa = attribute(m, saes, PROMPTS[0], metric)
    ig = attribute(m, saes, PROMPTS[0], metric, method="ig", steps=3)
    torch.testing.assert_close(ig.value, gxa.value)
    # summed over every node, the linear estimate is the whole metric minus its value at b_dec
    assert atp.total() == pytest.approx(float(atp.metric[0] - atp.baseline[0]), abs=1e-9)


# GPT-2 computes wholly in float64 here; Gemma's RMSNorm and rotary upcast to float32 internally, so its
# finite differences need a larger step and a looser tolerance.
@pytest.mark.parametrize(("family", "eps", "rel"), [("gpt2", 1e-5, 1e-6), ("gemma3", 1e-3, 2e-3)])
@pytest.mark.parametrize("hook", ["resid_post.0", "mlp_out.1"])
def test_grad_x_act_matches_finite_differences(family, eps, rel, hook):
    """Nonlinear downstream: attribution = d(metric)/d(scale) at scale 1, checked by a central difference."""
    m = tiny_model(family)
    sae = random_sae(m, hook)
    metric = LogitDiff(m, "sad", "happy")
    attr = attribute(m, {hook: sae}, PROMPTS[0], metric)
    from attribution.splice import decompose

    d = decompose(sae, trace(m, m.tokenize(PROMPTS[0]), capture=[hook]).acts[hook])
    for node in attr.top(6) + [n for n in attr.top(None) if n.is_error][:2]:
        v = (
            d.error[0, node.position]
            if node.is_error
            else d.features[0, node.position, node.feature] * sae.W_dec[node.feature]
        )
        up = _metric_with(m, PROMPTS[0], metric, hook, node.position, eps * v)
        down = _metric_with(m, PROMPTS[0], metric, hook, node.position, -eps * v)
        assert node.attribution == pytest.approx((up - down) / (2 * eps), rel=rel, abs=1e-7), node


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_integrated_gradients_are_complete(family):
    """Per hook, IG attributions add up to metric(clean) - metric(hook's non-<bos> activations patched from
    the corrupt prompt). (A zero baseline passes near x = 0, where the norms are nearly singular, so the
    midpoint rule needs far more steps there; the corrupt baseline keeps the path smooth.)"""
    m = tiny_model(family)
    hook = "resid_post.0"
    sae = random_sae(m, hook)
    metric = LogitDiff(m, "sad", "happy")
    ig = attribute(m, {hook: sae}, PROMPTS[0], metric, method="ig", corrupt=CORRUPT, steps=32)
    corrupt_x = trace(m, m.tokenize(CORRUPT), capture=[hook]).acts[hook]

    def patch(x):
        x = x.clone()
        x[0, 1:] = corrupt_x[0, 1:]
        return x

    tr = trace(m, m.tokenize(PROMPTS[0]), edits={hook: patch})
    rows = Rows.copies(0, 1)
    target = float(ig.metric[0] - evaluate(metric, m, tr.hidden, rows))
    assert abs(target) > 0.02  # a non-trivial effect, far above the tolerance
    assert ig.total() == pytest.approx(target, rel=2e-3, abs=5e-4)  # abs: llama's float32 internals
    atp = attribute(m, {hook: sae}, PROMPTS[0], metric, method="atp", corrupt=CORRUPT)
    assert abs(atp.total() - target) > abs(ig.total() - target)  # IG beats the one-step linear estimate


@pytest.mark.parametrize("method", ["grad_x_act", "atp", "ig"])
def test_batched_equals_one_at_a_time(method):
    m = tiny_model("gemma3")
    saes = {h: random_sae(m, h, seed=i) for i, h in enumerate(["resid_post.0", "attn_out.1", "resid_post.2"])}
    prompts = [PROMPTS[0], PROMPTS[1]]
    corrupts = [CORRUPT, "mary went home and ran"] if method != "grad_x_act" else None
    metric = LogitDiff(m, ["sad", "tired"], ["happy", "home"])
    batched = attribute(m, saes, prompts, metric, method=method, corrupt=corrupts, steps=4)
    for b in range(2):
        one = attribute(
            m,
            saes,
            prompts[b],
            LogitDiff(m, metric.good[b], metric.bad[b]),
            method=method,
            corrupt=corrupts[b] if corrupts else None,
            steps=4,
        )
        mine = batched.prompt == b
        assert mine.sum() == len(one)
        got = {k[1:]: v for k, v in zip(batched.node_keys(), batched.value.tolist()) if k[0] == b}
        want = {k[1:]: v for k, v in zip(one.node_keys(), one.value.tolist())}
        assert got.keys() == want.keys()
        np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=1e-7, atol=1e-10)


def test_bos_excluded_by_default_and_records():
    m = tiny_model("gpt2")
    sae = random_sae(m, "resid_post.1")
    metric = LogitDiff(m, "sad", "happy")
    attr = attribute(m, {sae.hook: sae}, PROMPTS[1], metric)
    assert int(attr.position.min()) == 1
    with_bos = attribute(m, {sae.hook: sae}, PROMPTS[1], metric, include_bos=True)
    assert int(with_bos.position.min()) == 0 and len(with_bos) > len(attr)
    top = attr.top(5)
    assert [abs(n.attribution) for n in top] == sorted((abs(n.attribution) for n in top), reverse=True)
    assert top[0].token == attr.tokens[0][top[0].position]
    rec = attr.records()[0]
    assert set(rec) == {
        "hook",
        "position",
        "token",
        "feature",
        "activation",
        "gradient",
        "attribution",
        "prompt",
    }
    for n in attr.top(None):
        if not n.is_error:
            assert n.activation * n.gradient == pytest.approx(n.attribution)
    dense = attr.dense("resid_post.1")
    assert dense.shape == (6, 64) and dense.sum().item() == pytest.approx(float(attr.value[attr.feature >= 0].sum()))


def test_attribution_errors():
    m = tiny_model("gemma3")
    sae = random_sae(m, "resid_post.1")
    metric = LogitDiff(m, "sad", "happy")
    with pytest.raises(AttributionError, match="pass corrupt"):
        attribute(m, {sae.hook: sae}, PROMPTS[0], metric, method="atp")
    with pytest.raises(TokenizationError, match="same number of tokens"):
        attribute(m, {sae.hook: sae}, PROMPTS[0], metric, method="atp", corrupt="the cat")
    with pytest.raises(AttributionError, match="unknown method"):
        attribute(m, {sae.hook: sae}, PROMPTS[0], metric, method="shap")
    with pytest.raises(AttributionError, match="no SAEs"):
        attribute(m, {}, PROMPTS[0], metric)


def test_compare_statistics():
    assert rank(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [2.5, 0.0, 2.5, 1.0]


def test_nan_weights_are_caught_after_a_successful_run():
    m = tiny_model("gemma3")
    sae = random_sae(m, "resid_post.1")
    metric = LogitDiff(m, "sad", "happy")
    attribute(m, {sae.hook: sae}, PROMPTS[0], metric)  # checked once, then cached ...
    with torch.no_grad():
        sae.W_dec[3, 3] = float("nan")  # ... until the weights change
    with pytest.raises(SAEError, match="W_dec contains NaN"):
        attribute(m, {sae.hook: sae}, PROMPTS[0], metric)


def test_any_callable_on_logits_is_a_metric():
    """A plain function of full logits gives the same attributions as LogitDiff's two-column shortcut."""
    m = tiny_model("llama")
    sae = random_sae(m, "resid_post.1")
    sad, happy = m.token_id("sad"), m.token_id("happy")
    fast = attribute(m, {sae.hook: sae}, PROMPTS[0], LogitDiff(m, "sad", "happy"))
    slow = attribute(m, {sae.hook: sae}, PROMPTS[0], lambda logits: logits[:, -1, sad] - logits[:, -1, happy])
    torch.testing.assert_close(slow.value, fast.value)
    abl = ablate(m, {sae.hook: sae}, PROMPTS[0], lambda lg: lg[:, -1, sad] - lg[:, -1, happy], fast.top(5))
    torch.testing.assert_close(
        abl.effect, ablate(m, {sae.hook: sae}, PROMPTS[0], LogitDiff(m, "sad", "happy"), fast.top(5)).effect
    )
