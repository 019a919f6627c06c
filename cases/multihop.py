"""The paper's multi-hop case study: Kobe Bryant -> Lakers -> Los Angeles -> California -> Sacramento.

`Fact: The capital of the state where Kobe Bryant played basketball is` -> ` Sacramento` - ` Albany`
(another state capital, so the metric isolates which state, not whether a capital comes next). The paper
found a Kobe Bryant feature, a California feature firing once the state is implied, a "capital" feature,
and Los Angeles and Lakers features; the feature graph shows how they connect, so it is built by default.
"""

from __future__ import annotations

PROMPT = "Fact: The capital of the state where Kobe Bryant played basketball is"
GOOD, BAD = " Sacramento", " Albany"


def run(*, model=None, saes=None, out="runs/kobe", graph: bool = True, **kw):
    """cases.run on the multi-hop prompt, with the feature graph; keyword arguments as in cases.run."""
    from cases.study import run as study

    return study(PROMPT, GOOD, BAD, model=model, saes=saes, out=out, graph=graph, title="Multi-hop: Kobe Bryant", **kw)
