"""Transcoder features' evidence on tiny random models: the output side is read where the decoder writes (mlp_out.L),
the input side where the encoder reads, and each part of a label shows only where it is evidence."""

import pytest
import torch

from attribution import explain, feature_index, trace
from attribution.explain.frozen_lens import frozen_effects, top_tokens
from attribution.explain.index import TC_VERSION, VERSION
from attribution.explain.labels import evidence
from attribution.explain.transcoder import MIXED, input_evidence, tc_labels
from attribution.models.model import Batch
from pages.render import render
from tests.conftest import random_sae, random_transcoders, tiny_model
from tests.test_labels import FILLER, Tok, _index

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTRIBUTION_CACHE", str(tmp_path / "cache"))


def _hand_made(model, layer: int, reads: int, writes: int):
    """A transcoder at `layer` whose feature 0 reads token `reads`'s embedding and writes token `writes`'s
    unembedding direction (through the final norm's gain), its other features random."""
    tc = random_transcoders(model)[f"resid_mid.{layer}"]
    with torch.no_grad():
        e = model.hf.get_input_embeddings()(torch.tensor([reads]))[0]
        tc.W_enc[:, 0] = e / e.norm()
        tc.b_enc[0] = 0.0
        d = model.W_U[writes] / model.final_norm_gain
        tc.W_dec[0] = d / d.norm()
    return tc


def test_output_side_is_read_where_the_decoder_writes(tiny_windows, cache):
    model, tokens = tiny_windows
    last = model.n_layers - 1
    reads, writes = int(tokens[0, 3]), int(tokens[0, 5])
    tc = _hand_made(model, last, reads, writes)
    idx = feature_index(model, tc, tokens=tokens, progress=False)
    assert idx.info["version"] == TC_VERSION != VERSION and idx.info["transcoder"]
    assert int(idx.t["up_ids"][0, 0]) == writes  # the decoder row's token is promoted, not the encoder's
    assert int(idx.t["in_ids"][0, 0]) == reads  # and the encoder's is what drives it
    card = explain(model, tc, 0, index=idx, n_contexts=2)
    assert card.writes == f"mlp_out.{last}" and card.reads[0][0] == model.tokenizer.decode([reads])
    assert card.direct_share is None and not card.frozen  # the frozen effect only when asked: two more forwards
    card = explain(model, tc, 0, index=idx, n_contexts=2, frozen=True)
    # at the last layer nothing follows the write but the final norm: the frozen effect is the direct path
    assert card.direct_share == pytest.approx(1.0, abs=1e-4)
    assert card.frozen[0][0] == model.tokenizer.decode([writes])
    page = render("card.html.j2", card=card, compact=True)
    assert "embedding lens" in page and "through the frozen model" in page and f"mlp_out.{last}" in page


def test_frozen_effect_is_the_write_removed_at_mlp_out(tiny_windows):
    model, tokens = tiny_model("gemma3"), tiny_windows[1]  # float64: no bf16 autocast, so the checks can be tight
    tcs = random_transcoders(model)
    ids, pos = tokens[1], torch.tensor([4, 9])
    for layer, tc in enumerate(tcs.values()):
        writes = 3.0 * tc.W_dec[:2]
        effects = frozen_effects(model, tc, ids, pos, writes)
        for e in effects:
            # removing the write at mlp_out.L changes the output from position p on; with the last layer's,
            # only the final norm (frozen) lies between, so the change is gain * w / rms exactly
            if layer == model.n_layers - 1:
                assert e.direct_share == pytest.approx(1.0, abs=1e-5) and float(e.direct.norm()) > 0
                assert torch.allclose(e.total, e.direct, atol=1e-9)
            else:  # later layers read the write too: the direct path is part of the effect
                assert 0 < e.direct_share < 1
        assert len(top_tokens(model, effects[0].total, k=3)) == 3
    with pytest.raises(ValueError, match="not a transcoder"):
        frozen_effects(model, random_sae(model, "resid_post.1"), ids, pos, writes)


def test_transcoder_index_neighbours_use_the_written_hook(tiny_windows, cache):
    model, tokens = tiny_windows
    tc = random_transcoders(model)["resid_mid.1"]
    idx = feature_index(model, tc, tokens=tokens, progress=False)
    x = trace(model, Batch.from_ids(tokens), capture=[tc.target]).acts[tc.target][:, 1:].flatten(0, 1)
    w = torch.nn.functional.normalize(tc.W_dec / x.std(0), dim=-1)  # in units of mlp_out.1's std, not resid_mid.1's
    cos = w @ w[3]
    cos[3] = -2
    assert int(idx.t["nb_ids"][3, 0]) == int(cos.argmax())
    assert float(idx.t["nb_cos"][3, 0]) == pytest.approx(float(cos.max()), abs=2e-2)
    sae = random_sae(model, "resid_post.1", d_sae=48)
    assert feature_index(model, sae, tokens=tokens, progress=False).info["version"] == VERSION  # SAEs unchanged


def _tc_index(contexts, firing: dict, in_ids: dict, up_seen: dict, predicted: dict) -> dict:
    """test_labels' hand-made index with firing tokens set per context, embedding-lens tokens and predictions."""
    t = _index(contexts, up_seen)
    for f, ids in firing.items():
        for (s, p), i in zip(contexts[f], ids):
            t["tokens"][s, p] = i
    for f, ids in predicted.items():
        for s, p in contexts[f]:
            t["next_ids"][s, p, : len(ids)] = torch.tensor(ids)
    t["in_ids"] = torch.full((8, 4), FILLER + 900)  # words never in the text
    for f, ids in in_ids.items():
        t["in_ids"][f, : len(ids)] = torch.tensor(ids)
    t["evidence_share"], t["evidence"] = evidence(Tok(), t)
    t["in_share"], t["in_evidence"] = input_evidence(Tok(), t)
    return t


def test_transcoder_labels_show_each_part_only_as_evidence():
    soup = [2, 3, 16, 4, 7, 8, 1, 6]  # eight different firing words: sad lonely blue today cat ran feels a
    at = {f: [(s, p) for s in range(8)] for f, p in [(0, 5), (1, 3), (2, 3), (3, 7), (4, 9)]}  # 1 and 2: the same
    t = _tc_index(
        at,
        firing={0: [2] * 5 + [3, 16, 4], 1: soup, 2: soup, 3: soup, 4: soup},
        in_ids={2: [2, 3, 16, 4]},  # feature 2's embedding lens holds half its firing words
        up_seen={0: 9, 1: 9, 2: 9, 3: 9, 4: 4},
        predicted={0: [9], 3: [9], 4: [9]},  # " Sad" predicted at all of 0's, 3's and 4's contexts
    )
    t["tokens"][:8, 10] = 14  # feature 4's contexts are all followed by " felt"
    share, ev = t["in_share"], t["in_evidence"]
    assert share[2] == pytest.approx(0.5) and ev[2] and not ev[1] and share[1] == 0
    assert bool(t["evidence"][0]) and bool(t["evidence"][3]) and not t["evidence"][1] and not t["evidence"][4]
    got = tc_labels(Tok(), t)
    assert got[0] == "[sad] → Sad"  # 5 of 8 contexts fire on "sad": the bracket is evidence, so is the arrow
    assert got[1] == MIXED + "[sad/lonely/blue]"  # letter soup, nothing else: marked, never passed as a concept
    assert got[2] == "[sad/lonely/blue]"  # the embedding lens backs the words: not mixed
    assert got[3] == "→ Sad"  # mixed firing words left out for the evidence of what it does
    assert got[4] == MIXED + "[sad/lonely/blue] felt"  # a context word carries it
    assert got[5:] == ["(dead)"] * 3
    t["in_evidence"][2] = False  # the same feature without the embedding lens's backing: mixed
    assert tc_labels(Tok(), t)[2] == MIXED + "[sad/lonely/blue]"


class PieceTok(Tok):
    """Tok with a word split in two tokens: " Cran" (50) "ston" (51)."""

    def decode(self, ids):
        named = {50: " Cran", 51: "ston"}
        return "".join(named[i] if i in named else Tok.decode(self, [i]) for i in ids)


def test_brackets_show_the_whole_word_the_firing_token_ends():
    at = {0: [(s, 5) for s in range(8)], 1: [(s, 8) for s in range(8)]}
    t = _tc_index(at, firing={0: [51] * 8, 1: [50] * 8}, in_ids={}, up_seen={}, predicted={})
    t["tokens"][:8, 4] = 50  # " Cran" "ston": feature 0 fires on "ston"
    t["tokens"][:8, 9] = 51  # feature 1 fires on " Cran", "ston" follows: not seen by the model there
    t["tokens"][:8, 3] = 1  # " feels" before the word, in every context
    got = tc_labels(PieceTok(), t)
    assert got[0] == "feels [Cranston]"  # the word, and the context before the word, not its first piece
    assert got[1] == "[Cran]"


def test_an_index_of_the_version_before_is_relabelled_not_rebuilt(tiny_windows, cache, monkeypatch):
    """RELABEL: a transcoder index whose tensors are this version's is given this version's labels and saved
    under this version, without a pass over the text; the labels equal a fresh build's."""
    from attribution.explain import index as index_mod

    model, tokens = tiny_windows
    tc = random_transcoders(model)["resid_mid.1"]
    fresh = feature_index(model, tc, tokens=tokens, progress=False)
    older = fresh.path.with_name(index_mod._older(fresh.path.name))
    assert older != fresh.path and older.name.endswith(f"-v{index_mod.RELABEL[TC_VERSION]}")
    fresh.path.rename(older)  # as a cache written by the version before: its version and old labels
    info = dict(fresh.info) | {"version": index_mod.RELABEL[TC_VERSION], "labels": ["old"] * len(fresh.labels_)}
    (older / "index.json").write_text(__import__("json").dumps(info))

    def no_build(*a, **k):
        raise AssertionError("rebuilt instead of relabelled")

    monkeypatch.setattr(index_mod, "build", no_build)
    got = feature_index(model, tc, tokens=tokens, progress=False)
    assert got.path == fresh.path and got.info["version"] == TC_VERSION
    assert got.labels_ == fresh.labels_ and "old" not in got.labels_
    assert torch.equal(got.t["top_acts"], fresh.t["top_acts"])
    assert feature_index(model, tc, tokens=tokens, progress=False).labels_ == fresh.labels_  # now cached
    assert older.exists()  # left for a checkout of the version before
