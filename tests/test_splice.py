"""Splicing SAEs with error terms, and batched ablation, checked against direct interventions."""

import pytest
import torch

from attribution import AttributionError, LogitDiff, SAEError, ablate, run_with_saes, trace
from attribution.engine import Splice
from attribution.metrics import Rows, evaluate
from attribution.splice import decompose
from tests.conftest import PROMPTS, random_sae, tiny_model

HOOKS = ["resid_pre.0", "attn_out.1", "mlp_out.1", "resid_post.1", "resid_post.2"]


def _metric_with(m, prompt, metric, hook=None, pos=None, delta=None):
    """Metric after adding `delta` to the activation at (hook, pos): a direct single intervention."""
    edits = {}
    if hook is not None:

        def edit(x):
            x = x.clone()
            x[0, pos] += delta
            return x

        edits[hook] = edit
    tr = trace(m, m.tokenize(prompt), edits=edits)
    return float(evaluate(metric, m, tr.hidden, Rows.copies(0, 1)))


def test_spliced_model_equals_original(family):
    m = tiny_model(family, dtype=torch.float32)
    saes = {h: random_sae(m, h, seed=i) for i, h in enumerate(HOOKS)}
    run = run_with_saes(m, saes, PROMPTS)
    plain = m.logits(PROMPTS)
    assert (run.logits - plain).abs().max() <= 1e-4
    assert set(run.features) == set(HOOKS)
    assert run.features["resid_post.1"].shape == (3, 12, 64)


def test_engine_splice_edit_equals_a_reference_splice():
    """The engine's Splice (x + (f' - f) W_dec) equals splicing by hand (decode(f') + e) with one feature
    zeroed, changes the output, and with nothing replaced returns the activation exactly."""
    m = tiny_model("gemma3")
    sae = random_sae(m, "resid_post.0")
    batch = m.tokenize(PROMPTS[0])
    clean = run_with_saes(m, {sae.hook: sae}, PROMPTS[0])
    f = clean.features["resid_post.0"][0]
    pos, feat = divmod(int(f.argmax()), f.shape[-1])
    keep = torch.ones(1, batch.width, sae.d_sae, dtype=torch.bool)
    keep[0, pos, feat] = False
    zeros = torch.zeros(1, batch.width, sae.d_sae, dtype=sae.W_dec.dtype)

    def by_hand(x):
        g = sae.encode(x)
        return sae.decode(torch.where(keep, g, zeros)) + (x - sae.decode(g))

    edited = m.unembed(trace(m, batch, edits={sae.hook: Splice(sae, keep, zeros)}).hidden)
    reference = m.unembed(trace(m, batch, edits={sae.hook: by_hand}).hidden)
    torch.testing.assert_close(edited, reference, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(edited, clean.logits)
    nothing = trace(m, batch, edits={sae.hook: Splice(sae, torch.ones_like(keep), zeros)}, capture=[sae.hook])
    assert torch.equal(nothing.acts["resid_post.0"], trace(m, batch, capture=[sae.hook]).acts["resid_post.0"])


def test_batched_ablation_equals_single_interventions(family):
    """Ablations riding the batch (rows joining at each hook) equal one forward per ablation."""
    m = tiny_model(family)
    saes = {h: random_sae(m, h, seed=i) for i, h in enumerate(HOOKS)}
    metric = LogitDiff(m, "sad", "happy")
    nodes = []
    for h, sae in saes.items():
        d = decompose(sae, trace(m, m.tokenize(PROMPTS[0]), capture=[h]).acts[h])
        active = (d.features[0] != 0).nonzero()
        nodes += [(h, int(p), int(f)) for p, f in active[:: max(1, len(active) // 4)][:4]]
        nodes.append((h, 5, None))  # the error node
    abl = ablate(m, saes, PROMPTS[0], metric, nodes, batch_size=7)  # several chunks
    clean = _metric_with(m, PROMPTS[0], metric)
    assert torch.allclose(abl.metric, torch.tensor([clean], dtype=abl.metric.dtype))
    for i, (h, pos, feat) in enumerate(nodes):
        d = decompose(saes[h], trace(m, m.tokenize(PROMPTS[0]), capture=[h]).acts[h])
        delta = -d.error[0, pos] if feat is None else -d.features[0, pos, feat] * saes[h].W_dec[feat]
        expected = clean - _metric_with(m, PROMPTS[0], metric, h, pos, delta)
        assert abl.effect[i] == pytest.approx(expected, abs=1e-9), (h, pos, feat)


def test_ablating_inactive_feature_changes_nothing():
    m = tiny_model("llama")
    sae = random_sae(m, "resid_post.1")
    d = decompose(sae, trace(m, m.tokenize(PROMPTS[0]), capture=["resid_post.1"]).acts["resid_post.1"])
    pos, feat = (d.features[0] == 0).nonzero()[0].tolist()
    abl = ablate(m, {sae.hook: sae}, PROMPTS[0], LogitDiff(m, "sad", "happy"), [("resid_post.1", pos, feat)])
    assert abl.effect[0] == 0.0


def test_mean_and_patch_modes():
    m = tiny_model("gpt2")
    sae = random_sae(m, "resid_post.1")
    metric = LogitDiff(m, "sad", "happy")
    prompt, corrupt = "the cat ran fast", "the dog ran home"
    h = "resid_post.1"
    d = decompose(sae, trace(m, m.tokenize(prompt), capture=[h]).acts[h])
    dc = decompose(sae, trace(m, m.tokenize(corrupt), capture=[h]).acts[h])
    pos, feat = (d.features[0, 1:] != 0).nonzero()[0].tolist()
    pos += 1
    clean = _metric_with(m, prompt, metric)
    patch = ablate(m, {h: sae}, prompt, metric, [(h, pos, feat)], mode="patch", corrupt=corrupt)
    delta = (dc.features[0, pos, feat] - d.features[0, pos, feat]) * sae.W_dec[feat]
    assert patch.effect[0] == pytest.approx(clean - _metric_with(m, prompt, metric, h, pos, delta), abs=1e-9)
    mean = ablate(m, {h: sae}, prompt, metric, [(h, pos, feat)], mode="mean")
    mu = d.features[0, 1:, feat].mean()  # over non-<bos> positions
    delta = (mu - d.features[0, pos, feat]) * sae.W_dec[feat]
    assert mean.effect[0] == pytest.approx(clean - _metric_with(m, prompt, metric, h, pos, delta), abs=1e-9)


def test_ablation_errors():
    m = tiny_model("gemma3")
    sae = random_sae(m, "resid_post.1")
    metric = LogitDiff(m, "sad", "happy")
    with pytest.raises(AttributionError, match="no SAE is spliced there"):
        ablate(m, {sae.hook: sae}, PROMPTS[0], metric, [("resid_post.0", 1, 0)])
    with pytest.raises(AttributionError, match="outside prompt"):
        ablate(m, {sae.hook: sae}, PROMPTS[0], metric, [("resid_post.1", 99, 0)])
    with pytest.raises(AttributionError, match="does not exist"):
        ablate(m, {sae.hook: sae}, PROMPTS[0], metric, [("resid_post.1", 1, 640)])
    with pytest.raises(AttributionError, match="needs corrupt"):
        ablate(m, {sae.hook: sae}, PROMPTS[0], metric, [("resid_post.1", 1, 0)], mode="patch")
    with pytest.raises(SAEError, match="key it by its own hook"):
        ablate(m, {"resid_post.0": sae}, PROMPTS[0], metric, [("resid_post.0", 1, 0)])
