"""A suite of prompts as data: one JSON object a line, read and checked against the model.

    {"id": "eiffel_language", "prompt": "Fact: The official language of the country where the Eiffel Tower
     stands is", "answer": " French", "counterfactual": " German", "intermediate": "France",
     "swap": {"from": "brandenburg_language", "expect": " German"}}

id, prompt, answer and counterfactual are required (the metric is logit(answer) - logit(counterfactual));
intermediate (the entity the prompt implies on the way to its answer), swap (another line's id whose
intermediate group is put in place of this prompt's, and the answer expected then), relation and hops
(2 for a two-hop question, 1 for a one-hop control) are optional. `check` measures what the model does with
each prompt, so a study is built only on prompts the model answers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from attribution.errors import AttributionError, TokenizationError

SUITES = Path(__file__).resolve().parent / "suites"
TWO_HOP = SUITES / "two_hop.jsonl"  # the suite shipped with the library (its version is in each line's id set)
REQUIRED = ("id", "prompt", "answer", "counterfactual")
OPTIONAL = ("intermediate", "swap", "relation", "hops")


class SuiteError(AttributionError):
    """A suite file that cannot be read as written; the message names the line and the fix."""


@dataclass(frozen=True)
class SuitePrompt:
    id: str
    prompt: str
    answer: str  # the token the model should say next, with its leading space (" French")
    counterfactual: str  # another answer of the same kind (" German"): the metric's other side
    intermediate: str | None = None  # the entity the prompt implies ("France")
    swap: dict | None = None  # {"from": id of another line, "expect": its answer}
    relation: str | None = None  # e.g. "landmark -> country -> language"
    hops: int = 2

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Answered:
    """What the model does with one prompt: the answer's probability and rank (0 = the top next token)."""

    id: str
    answer_p: float
    answer_rank: int
    metric: float  # logit(answer) - logit(counterfactual)
    top: str  # the model's top next token
    top_p: float
    extra: dict = field(default_factory=dict)

    @property
    def top1(self) -> bool:
        return self.answer_rank == 0


def load_suite(path: str | Path = TWO_HOP) -> list[SuitePrompt]:
    """The prompts of a JSONL suite file, checked: required fields, unique ids, swaps naming existing lines."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"suite file {path} does not exist; pass a JSONL file (one prompt object a line)")
    prompts: list[SuitePrompt] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise SuiteError(f"{path}:{n} is not JSON ({exc}); each line holds one prompt object") from None
        prompts.append(_prompt(obj, f"{path}:{n}"))
    if not prompts:
        raise SuiteError(f"{path} holds no prompts")
    ids = [p.id for p in prompts]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise SuiteError(f"{path}: ids must be unique; repeated: {dup}")
    for p in prompts:
        if p.swap is not None and p.swap["from"] not in ids:
            raise SuiteError(f"{path}: {p.id}'s swap names {p.swap['from']!r}, which is no id of this suite")
    return prompts


def _prompt(obj, where: str) -> SuitePrompt:
    if not isinstance(obj, dict):
        raise SuiteError(f"{where}: a line must hold a JSON object with {list(REQUIRED)}")
    missing = [k for k in REQUIRED if not isinstance(obj.get(k), str) or not obj[k]]
    if missing:
        raise SuiteError(f"{where}: {missing} missing or not a non-empty string (required: {list(REQUIRED)})")
    unknown = sorted(set(obj) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise SuiteError(f"{where}: unknown field(s) {unknown}; a line has {list(REQUIRED) + list(OPTIONAL)}")
    swap = obj.get("swap")
    if swap is not None and (
        not isinstance(swap, dict) or not all(isinstance(swap.get(k), str) and swap[k] for k in ("from", "expect"))
    ):
        raise SuiteError(f'{where}: swap must be {{"from": "<id of another line>", "expect": "<its answer>"}}')
    hops = obj.get("hops", 2)
    if isinstance(hops, bool) or not isinstance(hops, int) or hops < 1:
        raise SuiteError(f"{where}: hops must be a whole number >= 1, got {hops!r}")
    return SuitePrompt(
        obj["id"], obj["prompt"], obj["answer"], obj["counterfactual"], obj.get("intermediate"), swap,
        obj.get("relation"), hops,
    )  # fmt: skip


def answer_id(model, text: str, where: str = "") -> int:
    """The single token `text` is (Model.token_id: one token, in the vocabulary), the error naming the line."""
    try:
        return model.token_id(text)
    except TokenizationError as exc:
        raise SuiteError(f"{where}{exc}") from None


@torch.no_grad()
def check(model, prompts: list[SuitePrompt], *, batch_size: int = 16) -> list[Answered]:
    """The model's next-token distribution on each prompt: the answer's probability and rank, the metric."""
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        good = [answer_id(model, p.answer, f"{p.id}: ") for p in chunk]
        bad = [answer_id(model, p.counterfactual, f"{p.id}: ") for p in chunk]
        logits = model.logits([p.prompt for p in chunk])[:, -1].double()  # left-padded: -1 is every last token
        probs = logits.softmax(-1)
        for p, lg, pr, a, b in zip(chunk, logits, probs, good, bad):
            top = int(lg.argmax())
            answer = (p.id, float(pr[a]), int((lg > lg[a]).sum()), float(lg[a] - lg[b]))
            out.append(Answered(*answer, model.tokenizer.decode([top]), float(pr[top])))
    return out
