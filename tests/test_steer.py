"""Steering generates on token ids: the unedited condition's continuation is exactly the model's own greedy
tokens (fed back as ids, never decoded and re-tokenized), and a clamp changes them through the engine."""

import pytest
import torch

from attribution import LogitDiff, trace
from cases.steer import _continuation, _generate
from tests.conftest import PROMPTS, random_sae, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _greedy(m, ids: list[int], n: int) -> list[int]:
    out = []
    for _ in range(n):
        logits = m.unembed(trace(m, m.batch_of_ids([ids + out])).hidden)[0, -1]
        out.append(int(logits.argmax()))
    return out


def test_unedited_continuation_is_the_models_greedy_tokens():
    m = tiny_model("gemma3", seed=3)
    sae = random_sae(m, "resid_post.1")
    metric = LogitDiff(m, "sad", "happy")
    prompt_ids = m.encode(PROMPTS[0])
    want = _greedy(m, prompt_ids, 6)
    with torch.no_grad():
        _, metrics, texts = _generate(m, sae, PROMPTS[0], metric, 3, [None, 50.0], (1, None), 6, 5)
    assert texts[0] == _continuation(m, prompt_ids, want)  # the same tokens, as text after the prompt
    plain = float(metric(m.unembed(trace(m, m.tokenize(PROMPTS[0])).hidden)))
    assert metrics[0] == pytest.approx(plain, abs=1e-9) and metrics[1] != pytest.approx(plain, abs=1e-6)
