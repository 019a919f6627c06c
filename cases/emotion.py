"""The paper's emotion case study: which features make the model expect John to feel sad, not happy?

`John says, "I want to be alone right now." John feels` -> ` sad` - ` happy`. On the default model the
answer is sad by a logit margin of about +2.3; the features that carry it should be about sadness,
loneliness, wanting to be alone, or emotions in general.

Like the paper's, this study reads one dictionary: the wider SAE after the middle block (hooks="middle").
With the default SAEs on every other layer as well, each feature's ablation also re-encodes every SAE
downstream of it, and the linear estimate drifts further from the real effect (the README's "Case studies"
quotes both Pearson correlations; `python -m cases emotion --hooks resid_post.0,resid_post.2,...` measures
the wider one); pass hooks= to choose others.
"""

from __future__ import annotations

PROMPT = 'John says, "I want to be alone right now." John feels'
GOOD, BAD = " sad", " happy"


def run(*, model=None, saes=None, hooks=None, out="runs/emotion", graph: bool = False, **kw):
    """cases.run on the emotion prompt; keyword arguments as in cases.run (model=, saes=, hooks=, ...).
    hooks=None reads the middle layer's default SAE (or all of `saes` when you pass your own)."""
    from cases.study import run as study

    if hooks is None and (saes is None or saes == "default"):
        hooks = "middle"
    return study(
        PROMPT, GOOD, BAD, model=model, saes=saes, hooks=hooks, out=out, graph=graph, title="Emotion: John feels", **kw
    )
