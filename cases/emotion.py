"""The paper's emotion case study: which features make the model expect John to feel sad, not happy?

`John says, "I want to be alone right now." John feels` -> ` sad` - ` happy`. On the default model the
answer is sad by a logit margin of about +2.3; the features that carry it should be about sadness,
loneliness, wanting to be alone, or emotions in general.

Like the paper's, this study reads one dictionary: the wider SAE after the middle block (hooks="middle").
With the default SAEs on every other layer as well, each feature's ablation also re-encodes every SAE
downstream of it, and the linear estimate drifts further from the real effect (docs/case-studies.md
quotes both Pearson correlations; `python -m cases emotion --hooks resid_post.0,resid_post.2,...` measures
the wider one); pass hooks= to choose others.
"""

from __future__ import annotations

from cases.config import CaseConfig
from cases.report import Report

PROMPT = 'John says, "I want to be alone right now." John feels'
GOOD, BAD = " sad", " happy"


def config(*, saes=None, hooks=None, out="runs/emotion", graph: bool = False, **keywords) -> CaseConfig:
    """The emotion study's CaseConfig; keywords as in CaseConfig.from_keywords (model=, n_ablate=, ...).
    hooks=None reads the middle layer's default SAE (or all of `saes` when you pass your own)."""
    if hooks is None and (saes is None or saes == "default"):
        hooks = "middle"
    return CaseConfig.from_keywords(
        PROMPT, GOOD, BAD, saes=saes, hooks=hooks, out=out, graph=graph, title="Emotion: John feels", **keywords
    )


def run(**keywords) -> Report:
    """cases.run on the emotion prompt: `cases.run(config(**keywords))`."""
    from cases.study import run as study

    return study(config(**keywords))
