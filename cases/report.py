"""What a case study produces: tables, statistics and steering results, written as JSON and CSV.

Every number the HTML page shows lives here first, so the page, `report.json` and the CSV tables can never
disagree. NaN (a correlation over constant values) is written as JSON null, keeping the file strict JSON.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path


@dataclass
class FeatureRow:
    """One node of a ranking, with its estimate and its measured ablation effect side by side."""

    rank: int
    hook: str
    position: int
    token: str
    feature: int | None  # None: an error node, or a whole activation (WholeActivation)
    activation: float  # feature activation, or the norm of the error term / whole activation
    attribution: float  # estimated metric(clean) - metric(ablated)
    effect: float  # measured metric(clean) - metric(ablated)
    label: str = ""

    @property
    def name(self) -> str:
        return f"{self.hook} f{self.feature}" if self.feature is not None else f"{self.hook} (whole)"


@dataclass
class Ranking:
    """How well one score (attribution, or plain activation) finds the nodes that matter when ablated.

    pearson/spearman: the score against the effect (activation, having no sign, against |effect|).
    captured[k]: sum of |effect| over the ranking's top k / the same sum over the k largest |effect| among
    all nodes ablated for this report (both rankings' nodes): 1.0 means the ranking found the best k.
    """

    by: str
    n: int
    pearson: float
    spearman: float
    captured: dict[int, float]


@dataclass
class Clamp:
    """One steering condition: the next-token distribution and a greedy continuation under a clamp."""

    name: str
    value: float | None  # the clamped activation; None for the unedited run
    metric: float  # the logit difference at the prompt's last token under this clamp
    next_tokens: list[tuple[str, float]]  # top tokens and their probabilities after the prompt
    continuation: str


@dataclass
class Steering:
    """Clamping one feature (the top one by attribution) at `positions`, per the paper's steering demo."""

    hook: str
    feature: int
    label: str
    first_position: int  # the first prompt position where the feature fires
    positions: str  # which positions were clamped, in words
    max_activation: float
    max_source: str  # where max_activation comes from (feature index, or this prompt)
    clamps: list[Clamp]
    chosen: str = ""  # why this feature: the largest positive attribution, or the user's choice


@dataclass(frozen=True)
class Skip:
    """A stage that did not run, and why: the page reads these to say why a section is missing."""

    stage: str  # one of cases.stages.STAGES
    reason: str


@dataclass
class Report:
    title: str
    prompt: str
    good: str
    bad: str
    tokens: list[str]
    model: str
    saes: dict[str, str]  # hook -> description
    method: str
    mode: str
    corrupt: str | None
    metric: float
    baseline: float | None  # the metric on `corrupt`, when there is one
    top_attribution: list[FeatureRow]
    top_activation: list[FeatureRow]
    agreement: dict  # attribution.compare over the top nodes by attribution
    rankings: dict[str, Ranking]
    feature_attribution: float  # sum of all feature nodes' attributions
    error_attribution: float  # sum of all error nodes' attributions
    position_attribution: list[float]  # per prompt position: sum of its feature (or whole) nodes' attributions
    shown: int = 20  # rows of each table shown in the page
    cards: list[dict] = field(default_factory=list)
    steering: Steering | None = None
    graph: dict | None = None
    replacement: dict | None = None  # the replacement graph beside the SAE graph (cases.replacement_stage)
    notes: list[str] = field(default_factory=list)  # observations and skipped sections, in words for a reader
    timings: dict[str, float] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    feature_cards: list = field(default_factory=list, repr=False)  # the FeatureCards behind `cards`; not in JSON
    skipped: dict[str, str] = field(default_factory=dict)  # stage -> why it did not run (see Skip)

    def skip(self, skip: Skip) -> None:
        """Record a skipped stage as data (for the page) and as a note (for a reader of the JSON or the text)."""
        self.skipped[skip.stage] = skip.reason
        if skip.reason not in self.notes:
            self.notes.append(skip.reason)

    def to_dict(self) -> dict:
        """The JSON: every field but the card objects; `skipped` only when a stage was, so that the reports
        of full runs keep the keys they had before skips were recorded."""
        data = asdict(replace(self, feature_cards=[]))
        data.pop("feature_cards")
        if not data["skipped"]:
            data.pop("skipped")
        if data["replacement"] is None:
            data.pop("replacement")
        return _strict(data)

    def write(self, out: str | Path) -> dict[str, str]:
        """Write report.json and the CSV tables into `out`; returns {what: path} (also kept in `paths`)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "top_attribution.csv": _rows_csv(self.top_attribution, out / "top_attribution.csv"),
            "top_activation.csv": _rows_csv(self.top_activation, out / "top_activation.csv"),
        }
        if self.steering is not None:
            paths["steering.csv"] = _steering_csv(self.steering, out / "steering.csv")
        self.paths.update(paths)
        self.paths["report.json"] = str(out / "report.json")
        (out / "report.json").write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False))
        return paths

    def _repr_html_(self) -> str:
        """The report page in an iframe, in a notebook (its graph linked, not embedded)."""
        from attribution import display

        return display.notebook("report", self)

    def __str__(self) -> str:
        a = self.agreement
        lines = [
            f"{self.title}: {self.prompt!r} -> {self.good!r} - {self.bad!r} = {self.metric:+.3f}",
            f"attribution vs ablation over the top {a.get('n', 0)}: Pearson r = {_fmt(a.get('pearson'))}, "
            f"Spearman rho = {_fmt(a.get('spearman'))}",
        ]
        for r in self.rankings.values():
            cap = ", ".join(f"top-{k} {_pct(v)}" for k, v in r.captured.items())
            lines.append(f"ranked by {r.by}: captures {cap} of the best ablation effects")
        lines.append(f"{'hook':>14} {'pos':>4} {'token':>12} {'feature':>8} {'attr':>8} {'effect':>8}  label")
        for row in self.top_attribution[:10]:
            feat = "whole" if row.feature is None else f"f{row.feature}"
            lines.append(
                f"{row.hook:>14} {row.position:>4} {row.token!r:>12} {feat:>8} {row.attribution:+8.3f} "
                f"{row.effect:+8.3f}  {row.label}"
            )
        if self.steering is not None:
            for c in self.steering.clamps:
                lines.append(f"steer {c.name:>14}: metric {c.metric:+.3f}, continues {c.continuation!r}")
        if self.graph is not None:
            g = self.graph
            lines.append(
                f"graph: {g['feature nodes']} feature nodes, {g['error nodes']} error nodes, {g['edges']} edges, "
                f"faithfulness {_fmt(g['faithfulness'])}, completeness {_fmt(g['completeness'])}"
            )
            for x in g.get("layers", []):
                lines.append(
                    f"  {x['hook']:>14}: features carry {x['carried']:+.3f}, graph keeps {x['graph']:+.3f}, "
                    f"faithfulness {_fmt(x['faithfulness'])}"
                )
            for name, x in g.get("groups", {}).items():
                lines.append(
                    f"group {name}: "
                    + (x["error"] if "error" in x else f"{x['nodes']} nodes, ablation {x['ablation']:+.3f}")
                )
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"wrote {p}" for p in self.paths.values()]
        return "\n".join(lines)


ROW_FIELDS = ("rank", "hook", "position", "token", "feature", "activation", "attribution", "effect", "label")


def _rows_csv(rows: list[FeatureRow], path: Path) -> str:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(ROW_FIELDS)
        for r in rows:
            w.writerow([getattr(r, k) if getattr(r, k) is not None else "" for k in ROW_FIELDS])
    return str(path)


def _steering_csv(s: Steering, path: Path) -> str:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(("hook", "feature", "condition", "value", "metric", "rank", "token", "probability", "continuation"))
        for c in s.clamps:
            for rank, (tok, p) in enumerate(c.next_tokens, 1):
                value = "" if c.value is None else c.value
                w.writerow((s.hook, s.feature, c.name, value, c.metric, rank, tok, p, c.continuation))
    return str(path)


def _strict(x):
    """NaN/inf -> None and tuple keys/values -> JSON-friendly, recursively."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _strict(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_strict(v) for v in x]
    return x


def _fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.3f}"


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.0%}"
