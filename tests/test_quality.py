"""Reference text and dead-feature counting (tiny model; the Debian text is replaced by files of our own)."""

import gzip

import pytest
import torch

import attribution.training.quality as quality
from attribution import AttributionError
from tests.conftest import WORDS, random_sae, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("gemma3", dtype=torch.float32)


def test_reference_text_reads_fortunes_and_jargon(model, tmp_path, monkeypatch):
    fortunes = tmp_path / "fortunes"
    fortunes.mkdir()
    (fortunes / "wisdom").write_text("john feels sad\n%\nmary went home\n%\n")
    (fortunes / "wisdom.dat").write_bytes(b"\x00\x01binary index")  # strfile index: not text
    (fortunes / "mario.geral").write_text("not english")
    jargon = tmp_path / "jargon.txt.gz"
    jargon.write_bytes(gzip.compress(" ".join(WORDS * 3).encode()))
    monkeypatch.setattr(quality, "FORTUNES", fortunes)
    monkeypatch.setattr(quality, "JARGON", jargon)
    ids = quality.reference_text(model, seq_len=8)
    words = ["john", "feels", "sad", "mary", "went", "home", *WORDS * 3]
    expected = model.tokenizer(" ".join(words), add_special_tokens=False).input_ids
    assert (ids[:, 0] == model.tokenizer.bos_token_id).all()
    assert ids[:, 1:].reshape(-1).tolist() == expected[: ids.shape[0] * 7]
    monkeypatch.setattr(quality, "FORTUNES", tmp_path / "none")
    monkeypatch.setattr(quality, "JARGON", tmp_path / "none.gz")
    with pytest.raises(AttributionError, match="apt-get install"):
        quality.reference_text(model)


def test_firing_counts_match_a_direct_pass(model):
    from attribution.explain import feature_activations

    saes = {
        h: random_sae(model, h, d_sae=40, arch="topk", k=5, seed=i)
        for i, h in enumerate(["resid_post.0", "resid_post.2"])
    }
    for s in saes.values():
        s.b_enc[7] = -1e4  # a feature that can never fire
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(3, model.tokenizer.vocab_size, (20, 12), generator=g)
    tokens[:, 0] = model.tokenizer.bos_token_id
    counts, n = quality.firing_counts(model, saes, tokens, batch_size=7, progress=False)
    assert n == 20 * 11
    direct = feature_activations(model, saes, tokens)
    for h in saes:
        assert torch.equal(counts[h], (direct[h][:, 1:] > 0).flatten(0, 1).sum(0))
        assert counts[h][7] == 0 and 0 < int(counts[h].sum()) <= 5 * n
