"""explain / FeatureIndex on a tiny model: every statistic checked against a direct computation."""

import sys

import pytest
import torch

from attribution import SAEError, WholeActivation, explain, feature_index, trace
from attribution.errors import AttributionError
from attribution.models.model import Batch
from tests.conftest import random_sae, tiny_model


@pytest.fixture(scope="module")
def parts():
    model = tiny_model("gemma3", dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, model.tokenizer.vocab_size, (64, 16), generator=g)
    tokens[:, 0] = model.tokenizer.bos_token_id
    return model, tokens


@pytest.fixture
def setup(parts, tmp_path, monkeypatch):
    monkeypatch.setenv("ATTRIBUTION_CACHE", str(tmp_path / "cache"))
    model, tokens = parts
    return model, random_sae(model, "resid_post.1", d_sae=48, arch="topk", k=6), tokens


def _direct(model, sae, tokens):
    from attribution.explain import feature_activations

    return feature_activations(model, {"resid_post.1": sae}, tokens, outliers=False)["resid_post.1"][:, 1:]


def test_index_statistics_match_a_direct_pass(setup):
    model, sae, tokens = setup
    idx = feature_index(model, sae, tokens=tokens, progress=False)
    f = _direct(model, sae, tokens).reshape(-1, sae.d_sae)
    assert idx.n_tokens == f.shape[0]
    counts = (f > 0).sum(0)
    alive = [i for i in range(sae.d_sae) if counts[i] > 0]
    assert len(alive) > 10
    for i in alive:
        assert idx.frequency(i) == pytest.approx(float(counts[i]) / f.shape[0])
        assert idx.max_activation(i) == pytest.approx(float(f[:, i].max()), rel=1e-5)
        assert float(idx.t["hist"][i].sum()) == counts[i]
    for i in alive[:6]:
        card = explain(model, sae, i, index=idx, n_contexts=4)
        assert sum(b.count for b in card.histogram) == counts[i] and 1 <= len(card.contexts) <= 4
        assert sum(b.share for b in card.histogram) == pytest.approx(1.0)
        assert card.histogram[-1].hi == pytest.approx(idx.max_activation(i), rel=1e-5)
        acts = [c.activation for c in card.contexts]
        assert acts == sorted(acts, reverse=True) and acts[0] == pytest.approx(idx.max_activation(i), rel=1e-5)
        for c in card.contexts:  # the recomputed activation at the marked token is the indexed one
            assert c.acts[c.position] == pytest.approx(c.activation, rel=1e-4, abs=1e-6)
    assert [idx.label(i) for i in range(sae.d_sae) if counts[i] == 0] == ["(dead)"] * (sae.d_sae - len(alive))


def test_logit_lens_and_neighbours(setup):
    model, sae, tokens = setup
    idx = feature_index(model, sae, tokens=tokens, progress=False)
    card = explain(model, sae, 3, index=idx)
    logits = model.W_U @ (model.final_norm_gain * sae.W_dec[3])  # [vocab], through the final norm's gain
    assert card.promoted[0][1] == pytest.approx(float(logits.max()), rel=2e-2)
    assert card.suppressed[0][1] == pytest.approx(float(logits.min()), rel=2e-2)
    # neighbours: decoder cosine with each residual dimension in units of its std over the indexed tokens
    x = trace(model, Batch.from_ids(tokens), capture=[sae.hook]).acts[sae.hook][:, 1:].flatten(0, 1)  # <bos> left out
    w = torch.nn.functional.normalize(sae.W_dec / x.std(0), dim=-1)
    cos = w @ w[3]
    cos[3] = -2
    assert card.neighbours[0] == (int(cos.argmax()), pytest.approx(float(cos.max()), abs=2e-2))
    text = str(card) + card.to_html()
    assert card.label in text and "http" not in card.to_html()


def test_index_is_cached_by_weights(setup, monkeypatch):
    model, sae, tokens = setup
    feature_index(model, sae, tokens=tokens, progress=False)

    def no_build(*a, **k):
        raise AssertionError("the index should have been loaded from disk")

    monkeypatch.setattr(sys.modules["attribution.explain"], "_build", no_build)
    again = feature_index(model, sae, tokens=tokens, progress=False)
    assert len(again.labels(range(sae.d_sae))) == sae.d_sae
    with torch.no_grad():
        sae.W_enc[:, 0] += 1.0  # other weights: another index
    with pytest.raises(AssertionError, match="loaded from disk"):
        feature_index(model, sae, tokens=tokens, progress=False)


def test_explain_bad_inputs(setup):
    model, sae, tokens = setup
    idx = feature_index(model, sae, tokens=tokens, progress=False)
    with pytest.raises(AttributionError, match="does not exist"):
        explain(model, sae, sae.d_sae, index=idx)
    with pytest.raises(SAEError, match="no features"):
        explain(model, WholeActivation.at(model, ["resid_post.1"])["resid_post.1"], 0)
