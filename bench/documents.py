"""A long real document with a next token the model predicts late in it: the target of long-prompt graphs.

The document is the GPL-3 text (/usr/share/common-licenses/GPL-3, Debian's base-files: real prose the model
did not write). For a length of N tokens the prompt ends at the position in its last WINDOW tokens where the
document's own next token is the model's top-1 prediction (a whole word), the latest with p >= 0.5, so the
graph explains a prediction the model makes, reading the whole document. The metric's counterfactual is the
model's second choice there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

TEXT = Path("/usr/share/common-licenses/GPL-3")
WINDOW = 64  # the prompt ends within the last WINDOW tokens of the requested length
CONFIDENT = 0.5  # the latest such word with at least this probability (else the most probable one)


@dataclass
class Target:
    prompt: str
    tokens: int  # the prompt's length in tokens, <bos> included
    answer: str  # the document's next token, the model's top-1
    counterfactual: str  # the model's second choice
    answer_p: float
    counterfactual_p: float


def document_target(model, tokens: int) -> Target:
    """The longest-context prediction the model gets right near `tokens` tokens into the document."""
    from attribution.engine import trace

    ids = model.encode(TEXT.read_text())
    if len(ids) < tokens + 1:
        raise ValueError(f"the document has {len(ids)} tokens; ask for at most {len(ids) - 1}")
    text = model.tokenizer.decode(ids[:tokens], skip_special_tokens=True)
    if model.encode(text) != ids[:tokens]:
        raise ValueError(f"the document's first {tokens} tokens do not tokenize back to themselves; try another length")
    with torch.no_grad():  # the logits of the last WINDOW positions only (a 262k vocabulary)
        hidden = trace(model, model.tokenize(text), stop_early=False).hidden[0, -WINDOW:]
        probs = model.unembed(hidden).float().softmax(-1)  # [WINDOW, vocab]
    first = tokens - len(probs)  # the position of probs[0]
    best = None
    for i in range(len(probs)):
        t = first + i
        nxt = ids[t + 1]
        word = model.tokenizer.decode([nxt])
        if int(probs[i].argmax()) != nxt or not (word.startswith(" ") and word[1:].isalpha() and len(word) > 3):
            continue  # a whole word the model predicts top-1
        if best is None or float(probs[i, nxt]) >= min(best[1], CONFIDENT):
            best = (i, float(probs[i, nxt]))  # the latest confident prediction (else the most confident)
    if best is None:
        raise ValueError(f"no word the model predicts top-1 in the last {WINDOW} tokens before {tokens}")
    i, p_answer = best
    t = first + i
    prompt = model.tokenizer.decode(ids[: t + 1], skip_special_tokens=True)
    second = int(probs[i].topk(2).indices[1])
    return Target(prompt, len(model.encode(prompt)), model.tokenizer.decode([ids[t + 1]]),
                  model.tokenizer.decode([second]), p_answer, float(probs[i, second]))  # fmt: skip
