"""One typed description of a case study, checked when it is made, before any model is loaded.

    from cases import CaseConfig, Question, Sources, run
    config = CaseConfig(Question("The capital of Texas is", " Austin", " Dallas"), Sources(saes="whole"))
    report = run(config)

`cases.study.run` consumes it; the CLI, `cases.emotion.config` and `cases.multihop.config` build it, and
`CaseConfig.from_keywords(prompt, good, bad, **keywords)` reads the flat keywords `cases.run` has always
taken (model=, saes=, n_ablate=, steer=, ...). Each part is frozen: `dataclasses.replace` makes a variant.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cases import sources


@dataclass(frozen=True)
class Question:
    """The prompt and the answer pair: the metric is logit(good) - logit(bad) at the prompt's last token."""

    prompt: str
    good: str
    bad: str
    title: str = "Case study"

    def __post_init__(self):
        sources.check_prompt(self.prompt)


@dataclass(frozen=True)
class Sources:
    """The model and dictionaries (see cases.sources for every form `model` and `saes` take).

    hooks: restrict the SAEs to these hooks (for "default" and "whole": where to put them); a comma-separated
    string is split; "middle" names the residual stream after the middle block.
    """

    model: Any = None  # an attribution.Model, or anything load_model takes; None: the embedded gemma-3-270m
    saes: Any = "default"  # "default", "whole", SAE folder(s), SAE objects or {hook: SAE}
    hooks: tuple[str, ...] | None = None
    transcoders: Any = None  # a replacement graph beside the SAE graph: "default", a folder/release, {hook: tc}

    def __post_init__(self):
        if self.saes is None:
            object.__setattr__(self, "saes", "default")
        hooks = self.hooks
        if isinstance(hooks, str):
            hooks = [h.strip() for h in hooks.split(",") if h.strip()]
        if hooks is not None:
            object.__setattr__(self, "hooks", tuple(hooks))


@dataclass(frozen=True)
class Measure:
    """How nodes are scored and checked: as in attribution.attribute (method) and attribution.ablate (mode).

    corrupt: the same-length corrupted prompt for method="atp" or mode="patch". n_ablate: the top nodes of
    each ranking (by attribution, by plain activation) that are really ablated.
    """

    method: str = "grad_x_act"
    mode: str = "zero"
    corrupt: str | None = None
    n_ablate: int = 100

    def __post_init__(self):
        if not _whole(self.n_ablate) or self.n_ablate < 2:
            _bad(f"need n_ablate >= 2 (a correlation needs two ablated nodes); got n_ablate={self.n_ablate!r}")


@dataclass(frozen=True)
class Output:
    """What the report holds and where it goes.

    top: rows of each table shown in the page (report.json and the CSVs hold all n_ablate). cards: feature
    cards for the top features. explain: labels and cards from the feature index; index_tokens: ids
    [n_seq, seq] to index the features over (default: explain's corpus).
    """

    out: Path = Path("runs/case")
    top: int = 20
    cards: int = 5
    explain: bool = True
    index_tokens: Any = None

    def __post_init__(self):
        object.__setattr__(self, "out", Path(self.out))
        if not _whole(self.top) or self.top < 1:
            _bad(f"need top >= 1 (rows shown in each table); got top={self.top!r}")
        if not _whole(self.cards) or self.cards < 0:
            _bad(f"need cards >= 0 (feature cards to draw); got cards={self.cards!r}")


@dataclass(frozen=True)
class SteerOptions:
    """Clamping one feature and watching the next token and a greedy continuation.

    feature: (hook, feature) to clamp; None clamps the feature of largest positive attribution. clamps:
    multiples of its maximum activation. tokens: greedy tokens generated under each clamp.
    """

    enabled: bool = True
    feature: tuple[str, int] | None = None
    tokens: int = 12
    clamps: tuple[float, ...] = (0.0, 5.0, 10.0)

    def __post_init__(self):
        if not _whole(self.tokens) or self.tokens < 0:
            _bad(f"need steer_tokens >= 0 (greedy tokens under each clamp); got steer_tokens={self.tokens!r}")
        object.__setattr__(self, "clamps", _multiples(self.clamps))

    @classmethod
    def choose(cls, steer: bool | str | tuple = True, **options) -> SteerOptions:
        """From cases.run's `steer=`: False (off), True (the top positive feature), "hook:feature" or a pair."""
        if steer is False or steer is True:
            return cls(enabled=steer, **options)
        return cls(feature=_feature(steer), **options)


@dataclass(frozen=True)
class GraphOptions:
    """The feature graph (graphs.build_graph) and its groups: {name: (positive prompts, negative prompts)},
    supernodes found by contrast and ablated as one unit."""

    build: bool = False
    groups: Mapping[str, tuple[list[str], list[str]]] = field(default_factory=dict)
    swaps: Mapping[str, tuple] = field(default_factory=dict)  # group -> (good, bad, positive, negative) prompts

    def __post_init__(self):
        object.__setattr__(self, "groups", dict(self.groups or {}))
        object.__setattr__(self, "swaps", dict(self.swaps or {}))


@dataclass(frozen=True)
class CaseConfig:
    """Everything a case study needs; `cases.run(config)` runs it. progress: stage and step progress bars."""

    question: Question
    sources: Sources = field(default_factory=Sources)
    measure: Measure = field(default_factory=Measure)
    output: Output = field(default_factory=Output)
    steering: SteerOptions = field(default_factory=SteerOptions)
    graph: GraphOptions = field(default_factory=GraphOptions)
    progress: bool = True

    @classmethod
    def from_keywords(
        cls,
        prompt: str,
        good: str,
        bad: str,
        *,
        model=None,
        saes=None,
        hooks: list[str] | str | None = None,
        out: str | Path = "runs/case",
        method: str = "grad_x_act",
        mode: str = "zero",
        top: int = 20,
        n_ablate: int = 100,
        corrupt: str | None = None,
        graph: bool = False,
        groups: Mapping | None = None,
        transcoders=None,
        swaps: Mapping | None = None,
        steer: bool | str | tuple[str, int] = True,
        explain: bool = True,
        index_tokens=None,
        cards: int = 5,
        steer_tokens: int = 12,
        clamps: str | tuple[float, ...] = (0.0, 5.0, 10.0),
        title: str = "Case study",
        progress: bool = True,
    ) -> CaseConfig:
        """The config from cases.run's flat keywords (its signature before the config existed)."""
        return cls(
            Question(prompt, good, bad, title),
            Sources(model, saes, hooks, transcoders),
            Measure(method, mode, corrupt, n_ablate),
            Output(Path(out), top, cards, explain, index_tokens),
            SteerOptions.choose(steer, tokens=steer_tokens, clamps=clamps),
            GraphOptions(graph, groups or {}, swaps or {}),
            progress,
        )


def _whole(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool)


def _bad(message: str):
    from attribution import AttributionError

    raise AttributionError(message)


def _multiples(clamps) -> tuple[float, ...]:
    """Clamp multiples from a sequence or a comma-separated string ("0,5,10")."""
    try:
        values = tuple(float(x) for x in (clamps.split(",") if isinstance(clamps, str) else clamps))
    except (TypeError, ValueError):
        values = ()
    if not values or not all(math.isfinite(v) for v in values):
        _bad(f"clamps={clamps!r}: give multiples of the maximum activation, e.g. 0,5,10")
    return values


def _feature(choice) -> tuple[str, int]:
    """(hook, feature) from "hook:feature" (or "hook:f123") or a pair; SAEError naming the form otherwise."""
    from attribution import SAEError

    try:
        hook, feature = choice.rsplit(":", 1) if isinstance(choice, str) else choice
        return str(hook), int(str(feature).removeprefix("f"))
    except (TypeError, ValueError):
        raise SAEError(f"steer={choice!r}: name the feature as HOOK:FEATURE, e.g. resid_post.9:1234") from None
