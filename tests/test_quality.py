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


def test_transcoders_measured_on_reference_text(model, tmp_path, monkeypatch):
    """`attribution transcoders --evaluate`: evaluate_defaults runs on transcoders (EV of the MLP output, what
    the features explain beyond the skip, dead over the reference tokens) and the quality table shows it."""
    from attribution.training.transcoder_defaults import add_reference, quality_rows, quality_table
    from tests.conftest import random_transcoders

    fortunes = tmp_path / "fortunes"
    fortunes.mkdir()
    (fortunes / "wisdom").write_text(" ".join(WORDS * 20))
    monkeypatch.setattr(quality, "FORTUNES", fortunes)
    monkeypatch.setattr(quality, "JARGON", tmp_path / "none.gz")
    tcs = random_transcoders(model)
    for tc in tcs.values():
        tc.meta["eval"] = {"explained_variance": 0.5, "ce_loss_recovered": 0.5, "l0": 4.0, "dead_fraction": 0.1}
    report = quality.evaluate_defaults(model, tcs, dead_tokens=400, ce_sequences=2, progress=False)
    rows = add_reference(quality_rows(tcs), report)
    text = quality.reference_text(model, max_tokens=400)
    counts, n = quality.firing_counts(model, tcs, text, progress=False)
    for r in rows:
        assert r["dead_tokens"] == n and r["dead_reference"] == float((counts[r["hook"]] == 0).float().mean())
        assert r["reference"]["explained_variance"] is not None and r["reference"]["features_on_rest"] is not None
    table = quality_table(rows)
    assert "EV (Debian)" in table and f"dead ({n / 1e6:.2f}M Debian tok)" in table
    assert "Debian" not in quality_table(quality_rows(tcs))  # rows without the reference: the old table
