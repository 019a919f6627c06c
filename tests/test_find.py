"""Finding features by contrast: exact firing rates, padding-independent, and a planted feature recovered."""

from __future__ import annotations

import pytest
import torch

from attribution import AttributionError, contrast, trace
from attribution.models.model import Batch
from tests.conftest import random_sae, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

HOOK = "resid_post.1"
# different lengths, so the batch is left-padded; the contrast is the last word
POSITIVE = ["john says i want to be sad", "mary went home and felt sad", "the cat ran sad", "a dog felt sad"]
NEGATIVE = ["john says i want to be happy", "mary went home and felt happy", "the cat ran happy", "a dog felt happy"]


@pytest.fixture(scope="module")
def setup():
    m = tiny_model("gpt2")
    sae = random_sae(m, HOOK, d_sae=64, seed=3)
    # plant feature 7: fires above the midpoint between the two sets' mean last-token activations
    last = {}
    for name, prompts in (("pos", POSITIVE), ("neg", NEGATIVE)):
        xs = [_one(m, p)[-1] for p in prompts]
        last[name] = torch.stack(xs).mean(0)
    w = last["pos"] - last["neg"]
    with torch.no_grad():
        sae.W_enc[:, 7] = w / w.norm()
        sae.b_enc[7] = -float(w @ (last["pos"] + last["neg"]) / 2) / float(w.norm())
    return m, sae


def _one(m, prompt):
    """[pos, d_model] activation at HOOK for one prompt, unpadded."""
    ids = torch.tensor([m.encode(prompt)])
    return trace(m, Batch.from_ids(ids), capture=[HOOK], stop_early=True).acts[HOOK][0]


@pytest.mark.parametrize("position", ["last", "any"])
def test_rates_and_means_equal_prompt_by_prompt_activations(setup, position):
    m, sae = setup
    found = contrast(m, {HOOK: sae}, POSITIVE, NEGATIVE, position=position, top=None, min_score=-1.0, batch_size=3)

    def read(prompts):
        rows = []
        for p in prompts:
            f = sae.encode(_one(m, p))  # [pos, d_sae]
            rows.append(f[-1] if position == "last" else f[1:].amax(0))  # <bos> left out
        return torch.stack(rows).double()

    p, n = read(POSITIVE), read(NEGATIVE)
    assert found, "some feature fires"
    fired = (p > 0).any(0)
    assert {x.feature for x in found} == set(fired.nonzero().squeeze(-1).tolist())
    for x in found:
        k = x.feature
        assert x.positive == pytest.approx(float((p[:, k] > 0).double().mean()))
        assert x.negative == pytest.approx(float((n[:, k] > 0).double().mean()))
        assert x.score == pytest.approx(x.positive - x.negative)
        assert x.mean_positive == pytest.approx(float(p[:, k].mean()), abs=1e-9)
        assert x.mean_negative == pytest.approx(float(n[:, k].mean()), abs=1e-9)
    scores = [x.score for x in found]
    assert scores == sorted(scores, reverse=True)


def test_planted_feature_comes_first(setup):
    m, sae = setup
    best = contrast(m, {HOOK: sae}, POSITIVE, NEGATIVE, top=3)
    assert (best[0].hook, best[0].feature) == (HOOK, 7)
    assert best[0].positive == 1.0 and best[0].negative == 0.0 and best[0].score == 1.0
    # swapped sets: the planted feature never fires on the new positives, so it is not a match at all
    swapped = contrast(m, {HOOK: sae}, NEGATIVE, POSITIVE, top=None, min_score=-1.0)
    assert 7 not in {x.feature for x in swapped}
    assert "score +1.00" in str(best[0])


def test_bad_input(setup):
    m, sae = setup
    with pytest.raises(AttributionError, match="positive must be a non-empty list"):
        contrast(m, {HOOK: sae}, "john feels sad", NEGATIVE)
    with pytest.raises(AttributionError, match="negative must be a non-empty list"):
        contrast(m, {HOOK: sae}, POSITIVE, [])
    with pytest.raises(AttributionError, match="unknown position"):
        contrast(m, {HOOK: sae}, POSITIVE, NEGATIVE, position="first")
    with pytest.raises(AttributionError, match="top must be"):
        contrast(m, {HOOK: sae}, POSITIVE, NEGATIVE, top=0)
    with pytest.raises(AttributionError, match="no SAEs"):
        contrast(m, {}, POSITIVE, NEGATIVE)
