"""The paper's multi-hop case study: Kobe Bryant -> Lakers -> Los Angeles -> California -> Sacramento.

`Fact: The capital of the state where Kobe Bryant played basketball is` -> ` Sacramento` - ` Albany`
(another state capital, so the metric isolates which state, not whether a capital comes next). The paper
found a Kobe Bryant feature, a California feature firing once the state is implied, a "capital" feature,
and Los Angeles and Lakers features; the feature graph shows how they connect, so it is built by default.
"""

from __future__ import annotations

from cases.config import CaseConfig
from cases.report import Report

PROMPT = "Fact: The capital of the state where Kobe Bryant played basketball is"
GOOD, BAD = " Sacramento", " Albany"

# The California group, found by contrast (attribution.contrast): the same sentences ending in a place that
# implies California without naming it, or in a place in another state (New York's among them, as Albany is).
TEMPLATES = (
    "He grew up in {}",
    "She moved to {} last year",
    "We spent a week in {}",
    "My cousin lives near {}",
    "The company is based in {}",
    "They played a home game in {}",
)
IN_CALIFORNIA = (
    "Los Angeles", "San Francisco", "San Diego", "Hollywood", "Oakland",
    "Silicon Valley", "Malibu", "Santa Monica", "Pasadena", "Fresno",
)  # fmt: skip
ELSEWHERE = (
    "New York", "Chicago", "Boston", "Brooklyn", "Detroit",
    "Houston", "Miami", "Seattle", "Denver", "Buffalo",
)  # fmt: skip
CALIFORNIA = tuple([t.format(p) for t in TEMPLATES for p in places] for places in (IN_CALIFORNIA, ELSEWHERE))
# The paper's swap: California's features replaced by Texas's should move the answer to Austin.
IN_TEXAS = ("Dallas", "Houston", "San Antonio", "El Paso", "Fort Worth", "Galveston", "Lubbock", "Waco", "Plano")
NOT_TEXAS = IN_CALIFORNIA[:5] + tuple(p for p in ELSEWHERE if p != "Houston")
TEXAS = tuple([t.format(p) for t in TEMPLATES for p in places] for places in (IN_TEXAS, NOT_TEXAS))
SWAPS = {"California": (" Austin", " Sacramento", *TEXAS)}


def config(*, out="runs/kobe", graph: bool = True, groups=None, transcoders="default", swaps=None, **keywords):
    """The multi-hop study's CaseConfig, with the feature graph and its California group (groups=None; pass
    {} for none, or your own {name: (positive, negative)}), and the replacement graph with the default
    transcoders beside it (transcoders=None: none) with its California -> Texas swap; keywords as in
    CaseConfig.from_keywords."""
    groups = {"California": CALIFORNIA} if groups is None else groups
    swaps = SWAPS if swaps is None else swaps
    return CaseConfig.from_keywords(
        PROMPT, GOOD, BAD, out=out, graph=graph, groups=groups, transcoders=transcoders, swaps=swaps,
        title="Multi-hop: Kobe Bryant", **keywords,
    )  # fmt: skip


def run(**keywords) -> Report:
    """cases.run on the multi-hop prompt: `cases.run(config(**keywords))`."""
    from cases.study import run as study

    return study(config(**keywords))
