"""explain / FeatureIndex on a tiny model: every statistic checked against a direct computation."""

import sys

import pytest
import torch
from markupsafe import escape

from attribution import SAEError, WholeActivation, explain, feature_index, trace
from attribution.errors import AttributionError
from attribution.models.model import Batch
from pages.render import render
from tests.conftest import random_sae


@pytest.fixture
def setup(tiny_windows, tmp_path, monkeypatch):
    monkeypatch.setenv("ATTRIBUTION_CACHE", str(tmp_path / "cache"))
    model, tokens = tiny_windows
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
    page = render("card.html.j2", card=card)  # the report's card: plain data rendered by the one template
    assert card.label in str(card) and str(escape(card.label)) in page and "http" not in page


def test_index_is_cached_by_weights(setup, monkeypatch):
    model, sae, tokens = setup
    feature_index(model, sae, tokens=tokens, progress=False)

    def no_build(*a, **k):
        raise AssertionError("the index should have been loaded from disk")

    monkeypatch.setattr(sys.modules["attribution.explain.index"], "build", no_build)
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


def test_predictions_at_top_contexts_and_evidence(setup):
    """next_ids holds the model's own top next-token predictions at every top context; a feature's promoted
    token is evidence where it is among them at >= EVIDENCE_SHARE of its top contexts, and only then labels."""
    from attribution.explain.labels import EVIDENCE_SHARE
    from attribution.explain.lens import N_NEXT

    model, sae, tokens = setup
    idx = feature_index(model, sae, tokens=tokens, progress=False)
    t, tok = idx.t, model.tokenizer
    with torch.no_grad():
        logits = model.hf(input_ids=tokens).logits.float()  # [n_seq, seq, vocab], a plain full forward
    alive = t["top_acts"] > 0
    tenth = logits.topk(N_NEXT, dim=-1).values[..., -1:]  # [n_seq, seq, 1]
    spread = logits.amax(-1, keepdim=True) - logits.amin(-1, keepdim=True)
    for f in range(sae.d_sae):
        s, p = t["top_seq"][f][alive[f]], t["top_pos"][f][alive[f]]
        got = t["next_ids"][s, p].long()  # [n, N_NEXT]
        assert (got >= 0).all() and all(len(set(r)) == N_NEXT for r in got.tolist())
        # the stored ids are the top N_NEXT up to the compute dtype's rounding (bf16 where native)
        assert (logits[s, p].gather(1, got) >= tenth[s, p] - 0.02 * spread[s, p]).all()
        word = tok.decode([int(t["up_seen"][f])]).strip().casefold()
        top = logits[s, p].topk(N_NEXT, dim=-1).indices  # [n, N_NEXT]
        share = sum(word in {tok.decode([i]).strip().casefold() for i in r} for r in top.tolist()) / max(1, len(s))
        if abs(share - EVIDENCE_SHARE) > 0.1:  # away from the threshold, bf16 near-ties cannot flip it
            assert idx.evidence(f) == (share >= EVIDENCE_SHARE), f
        if t["count"][f] > 0:
            assert (" → " in idx.label(f)) == idx.evidence(f)
            assert not idx.evidence(f) or idx.label(f).endswith(f" → {tok.decode([int(t['up_seen'][f])]).strip()}")
    shown = [f for f in range(sae.d_sae) if t["count"][f] > 0 and idx.evidence(f)]
    hidden = [f for f in range(sae.d_sae) if t["count"][f] > 0 and not idx.evidence(f)]
    assert shown and hidden  # both cases occur on this text
    card = explain(model, sae, shown[0], index=idx, n_contexts=3)
    assert card.evidence and card.evidence_share >= EVIDENCE_SHARE and card.promoted_seen.strip() in card.label
    for c in card.contexts:
        assert len(c.predicted) == N_NEXT and all(isinstance(w, str) for w in c.predicted)
    assert not explain(model, sae, hidden[0], index=idx).evidence


def test_index_text_options(tiny_windows, monkeypatch):
    from attribution.training import corpus

    ex = sys.modules["attribution.explain.index"]
    model, tokens = tiny_windows
    calls = []
    monkeypatch.setattr(corpus, "real_tokens", lambda m, split, **kw: calls.append((split, kw)) or tokens)
    assert ex.index_text(model, "real", n_tokens=1000, progress=False) is tokens
    assert calls == [("train", {"seq_len": 128, "max_tokens": 1127, "progress": False})]
    with pytest.raises(AttributionError, match="'real' or None"):
        ex.index_text(model, "sampled")
    with pytest.raises(AttributionError, match="integer tensor"):
        ex.index_text(model, tokens.float())
