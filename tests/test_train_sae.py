"""train_sae end to end on a tiny model: sampled corpus, cached activations, held-out evaluation."""

import pytest
import torch

from attribution import AttributionError, HookError, SAEError, load_sae
from attribution.training import TrainConfig, evaluate_sae, sample_tokens, train_sae
from tests.conftest import tiny_model


@pytest.fixture
def model(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTRIBUTION_CACHE", str(tmp_path / "cache"))
    return tiny_model("gemma3", dtype=torch.float32)


def test_sampled_corpus_is_deterministic_and_cached(model):
    a = sample_tokens(model, 300, seq_len=16, batch_size=8, progress=False)
    assert a.shape == (20, 16) and (a[:, 0] == model.tokenizer.bos_token_id).all()
    assert torch.equal(a, sample_tokens(model, 300, seq_len=16, batch_size=8, progress=False, cache=False))
    assert len({tuple(r.tolist()) for r in a}) == 20  # diverse rows


def test_train_sae_end_to_end(model, tmp_path, monkeypatch):
    cfg = TrainConfig(steps=150, batch_size=256, lr=3e-3, progress=False)
    sae = train_sae(
        model, "resid_post.1", tokens=6000, d_sae=64, k=8, seq_len=16, config=cfg, out=tmp_path / "sae", progress=False
    )
    ev = sae.meta["eval"]
    assert ev["ce_zero"] > ev["ce_sae"] > ev["ce_clean"] * 0.5
    assert 0.3 < ev["ce_loss_recovered"] <= 1.0 and ev["explained_variance"] > 0.5 and ev["l0"] <= 8
    again = evaluate_sae(
        model,
        load_sae(tmp_path / "sae", model=model),
        sample_tokens(model, 6000, seq_len=16, progress=False)[-20:],
        progress=False,
    )
    assert again["ce_loss_recovered"] == pytest.approx(ev["ce_loss_recovered"], rel=1e-4)

    def no_collect(*a, **k):
        raise AssertionError("the activation cache should have been reused")

    monkeypatch.setattr("attribution.training.activation_cache.collect", no_collect)
    train_sae(model, "resid_post.1", tokens=6000, d_sae=64, k=8, seq_len=16, config=cfg, progress=False)


def test_train_sae_bad_inputs(model, tmp_path):
    with pytest.raises(HookError):
        train_sae(model, "resid_post.9", tokens=100, progress=False)
    with pytest.raises(SAEError, match="d_sae must be >= 1"):
        train_sae(model, "resid_post.1", d_sae=0, tokens=100, progress=False)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(Exception, match="corpus is empty"):
        train_sae(model, "resid_post.1", d_sae=8, k=4, corpus=tmp_path / "empty.txt", progress=False)


def test_text_sources(model, tmp_path):
    from attribution.training import text_tokens

    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("john feels sad " * 10)
    (folder / "b.txt").write_text("mary went home " * 10)
    ids = text_tokens(model, folder, seq_len=8)
    assert ids.shape == (60 // 7, 8) and (ids[:, 0] == model.tokenizer.bos_token_id).all()
    assert torch.equal(ids, text_tokens(model, [folder / "a.txt", folder / "b.txt"], seq_len=8))
    assert torch.equal(text_tokens(model, folder, seq_len=8, max_tokens=21), ids[:3])  # whole windows of 7
    with pytest.raises(AttributionError, match="does not exist"):
        text_tokens(model, tmp_path / "missing.txt")
    with pytest.raises(AttributionError, match=r"datasets|Hugging Face"):
        text_tokens(model, "hf:no-such-org/no-such-dataset")
