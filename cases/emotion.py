"""The paper's emotion case study: which features make the model expect John to feel sad, not happy?

`John says, "I want to be alone right now." John feels` -> ` sad` - ` happy`. On the default model the
answer is sad by a logit margin of about +2.3; the features that carry it should be about sadness,
loneliness, wanting to be alone, or emotions in general.
"""

from __future__ import annotations

PROMPT = 'John says, "I want to be alone right now." John feels'
GOOD, BAD = " sad", " happy"


def run(*, model=None, saes=None, out="runs/emotion", graph: bool = False, **kw):
    """cases.run on the emotion prompt; keyword arguments as in cases.run (model=, saes=, hooks=, ...)."""
    from cases.study import run as study

    return study(PROMPT, GOOD, BAD, model=model, saes=saes, out=out, graph=graph, title="Emotion: John feels", **kw)
