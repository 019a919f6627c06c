"""attribution.explain.labels on a hand-made index: the label's words come from the contexts, scored against the text's
base rates, and the logit-lens token shows only where the model's predictions make it evidence."""

import pytest
import torch

from attribution.explain.labels import EVIDENCE_SHARE, MAX_CHARS, Words, evidence, fit, labels
from attribution.explain.lens import N_NEXT

SEQ, N_SEQ, N_TOP = 12, 10, 24
NAMED = [
    "<bos>", " feels", " sad", " lonely", " today", " the", " a", " cat", " ran", " Sad", "\n",
    " extraordinarily", "<eos>", " tremendously", " felt", " feel", " blue",
]  # fmt: skip
FILLER = 100  # ids FILLER.. are distinct filler words, each used once in the text


class Tok:
    all_special_ids = (0, 12)

    def decode(self, ids):
        return "".join(NAMED[i] if i < len(NAMED) else f" w{i}" for i in ids)


def _index(contexts: dict[int, list[tuple[int, int]]], up_seen: dict[int, int], d_sae: int = 8) -> dict:
    """Tensors as attribution.explain.index.build writes them: filler text, features firing at `contexts`
    ({feature: [(seq, pos)], best first}), next-token predictions all filler (set them per test)."""
    tokens = FILLER + torch.arange(N_SEQ * SEQ).reshape(N_SEQ, SEQ)
    tokens[:, 0] = 0
    t = {
        "tokens": tokens,
        "top_acts": torch.zeros(d_sae, N_TOP),
        "top_seq": torch.zeros(d_sae, N_TOP, dtype=torch.long),
        "top_pos": torch.zeros(d_sae, N_TOP, dtype=torch.long),
        "count": torch.zeros(d_sae, dtype=torch.long),
        "up_seen": torch.full((d_sae,), 7, dtype=torch.long),
        "next_ids": torch.full((N_SEQ, SEQ, N_NEXT), -1, dtype=torch.int32),
    }
    for f, where in contexts.items():
        for j, (s, p) in enumerate(where):
            t["top_acts"][f, j] = 10.0 - j
            t["top_seq"][f, j], t["top_pos"][f, j] = s, p
            t["next_ids"][s, p] = FILLER + 500 + torch.arange(N_NEXT)  # words never in the text
        t["count"][f] = len(where)
    for f, i in up_seen.items():
        t["up_seen"][f] = i
    return t


@pytest.fixture
def index():
    feels = [(s, 5) for s in range(6)]
    t = _index({0: feels, 1: feels, 2: [(s, 8) for s in range(6, 10)], 3: [(s, 10) for s in range(6)]}, {0: 2, 1: 4})
    for s in range(6):  # "feels [sad]", "feels [lonely]" and "feels [blue]" twice each
        t["tokens"][s, 4:6] = torch.tensor([1, (2, 3, 16)[s // 2]])
        t["tokens"][s, 10] = 10  # feature 3 fires on a newline
    for s in range(6, 10):  # "cat <filler> [a] ran": the word before is not adjacent
        t["tokens"][s, 6], t["tokens"][s, 8], t["tokens"][s, 9] = 7, 6, 8
    t["next_ids"][0, 5, 3] = 9  # the model predicts " Sad" after 2 of the 6 "feels [...]" contexts ...
    t["next_ids"][1, 5, 0] = 9
    t["next_ids"][0, 5, 9] = 4  # ... and " today" after 1 of them
    return t


def test_evidence_is_the_share_of_top_contexts_predicting_the_promoted_word(index):
    share, is_evidence = evidence(Tok(), index)
    assert share[0] == pytest.approx(2 / 6)  # " sad" promoted, " Sad" predicted: compared as words
    assert share[1] == pytest.approx(1 / 6)  # " today" promoted, predicted once
    assert share[2] == 0 and share[4] == 0  # predicted nowhere; dead
    assert is_evidence.tolist() == (share >= EVIDENCE_SHARE).tolist() and is_evidence[:2].tolist() == [True, False]
    index["next_ids"][1, 5, 0] = -1  # one context fewer: 1/6 < EVIDENCE_SHARE, no longer evidence
    assert not evidence(Tok(), index)[1][0]


def test_labels_read_the_contexts_and_show_the_promoted_word_only_as_evidence(index):
    index["evidence_share"], index["evidence"] = evidence(Tok(), index)
    got = labels(Tok(), index)
    assert got[:4] == ["feels [sad/lonely/blue] → sad", "feels [sad/lonely/blue]", "cat … [a] ran", "[␣]"]
    assert got[4:] == ["(dead)"] * 4
    index["evidence"][0] = False  # the same feature, its promoted token not evidence: no arrow
    assert labels(Tok(), index)[0] == "feels [sad/lonely/blue]"


def test_context_words_are_scored_against_their_base_rate(index):
    index["evidence"] = torch.zeros(8, dtype=torch.bool)
    index["tokens"][6:, 1:4] = 1  # " feels" now fills the rest of the text: as common there as next to "sad"
    assert labels(Tok(), index)[0] == "[sad/lonely/blue]"


def test_word_forms_merge_and_special_tokens_never_show():
    t = _index({0: [(s, 5) for s in range(6)]}, {0: 12}, d_sae=1)
    for s in range(6):
        t["tokens"][s, 3:6] = torch.tensor([12, 1 if s % 2 else 15, 2])  # "<eos> feels/feel [sad]"
    t["next_ids"][:, 5, 0] = 12  # the promoted token is a special one: never a word, never evidence
    t["evidence_share"], t["evidence"] = evidence(Tok(), t)
    assert not t["evidence"][0] and t["evidence_share"][0] == 0
    assert labels(Tok(), t) == ["feel* [sad]"]


def test_labels_fit_in_max_chars():
    long = ["tremendously", "extraordinarily", "incomprehensibly"]
    label = fit(long, (["overwhelmingly", "unbelievably"], True), (["notwithstanding"], False), "astonishingly")
    assert label == "[tremendously] → astonishingl"  # the firing word and the evidence come first
    label = fit(long[:2], (["overwhelmingly"], True), None, "")
    assert label == "overwhelming [tremendously/extraordinar]" and len(label) == MAX_CHARS
    assert fit([], None, None, "") == "[␣]"
    assert fit(["sad", "lonely"], (["I", "we"], True), (["today"], False), "") == "I/we [sad/lonely] … today"


def test_words_drop_whitespace_and_invisible_characters():
    class T:
        all_special_ids = (0,)

        def decode(self, ids):
            return {0: "<bos>", 1: " \ufeffSystem", 2: " \n\n", 3: " a\x07b", 4: " Sad "}[ids[0]]

    w = Words(T())
    assert [w(i) for i in range(5)] + [w(-1)] == ["", "System", "", "a\\x07b", "Sad", ""]
    assert w.key(4) == "sad"
