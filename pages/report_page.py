"""The report as one offline HTML page: inline CSS and SVG, no scripts or fonts fetched from anywhere.

The page is for a researcher deciding whether to trust the result, so each estimate sits beside its
measured ablation effect, and every section that could not be produced says why (from `Report.skipped`)
instead of going blank. The markup is pages/templates/report.html.j2, rendered by pages.render with
autoescape; this module only computes what the template shows (colours, bar widths, formatted numbers).
The graph (multi-hop) is the graph package's own offline page, embedded with <iframe srcdoc> so this file
stays self-contained; the same page is also written beside it as graph.html.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from pages.render import render as template
from pages.svg import scatter

if TYPE_CHECKING:  # the data it draws (cases sits above pages; only the type names are used here)
    from cases.report import FeatureRow, Report

GRAPH_HIDDEN = ("html", "json", "check", "layers", "groups")  # report.graph keys not in the stats line
_ATTR_NOTE = (
    "Estimate (attribution) beside the real effect of zeroing the node (ablation), both as "
    "metric(clean) − metric(ablated): positive nodes push toward the good answer. Bars: light = attribution, "
    "dark = ablation."
)
_ACT_NOTE = (
    "The same nodes ranked by how strongly they fire, with no regard to the answer. The paper found this the "
    "weaker ranking: many strongly firing features do little to the logit difference."
)


def write(report: Report, path: str | Path, *, graph_html: str | None = None) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(report, graph_html=graph_html), encoding="utf-8")
    return str(path)


def render(report: Report, *, graph_html: str | None = None) -> str:
    """The page's HTML. graph_html: the graph's own page, embedded in an iframe (None: a link only)."""
    r = report
    return template(
        "report.html.j2",
        r=r,
        answers=dict(good=repr(r.good), bad=repr(r.bad)),
        chips=_chips(r),
        summary=_summary(r),
        charts=_charts(r),
        tables=[
            _table(r.top_attribution, r, "Top features by attribution", _ATTR_NOTE),
            _table(r.top_activation, r, "Top features by plain activation", _ACT_NOTE),
        ],
        steering=_steering(r),
        graph=_graph(r),
        graph_html=graph_html,
        files=[Path(p).name for p in r.paths.values()],
        times=", ".join(f"{k} {v:.2f}s" for k, v in r.timings.items()),
        f=_f,
        pct=_pct,
        show=_show,
    )


def _chips(r: Report) -> list[dict]:
    """Each prompt token coloured by its strongest node's attribution (blue toward good, red toward bad)."""
    peak = max((abs(v) for v in r.position_attribution), default=0.0) or 1.0
    chips = []
    for tok, v in zip(r.tokens, r.position_attribution):
        a = min(1.0, abs(v) / peak)
        colour = f"rgba(31,95,191,{a:.2f})" if v >= 0 else f"rgba(192,57,43,{a:.2f})"
        chips.append(dict(token=tok, value=f"{v:+.3f}", background=colour, colour="#fff" if a > 0.55 else "#1d2330"))
    return chips


def _summary(r: Report) -> dict:
    a = r.agreement
    ra, rv = r.rankings["attribution"], r.rankings["activation"]
    ks = sorted(set(ra.captured) | set(rv.captured))

    def row(rk, what):
        return dict(what=what, cells=[_f(rk.pearson), _f(rk.spearman)] + [_pct(rk.captured.get(k)) for k in ks])

    return dict(
        stats=[
            ("metric", f"{r.metric:+.3f}"),
            (f"Pearson r, attribution vs ablation (top {a.get('n')})", _f(a.get("pearson"))),
            ("Spearman ρ, attribution vs ablation", _f(a.get("spearman"))),
            ("same sign", _pct(a.get("sign_agreement"))),
            (f"Pearson r, activation vs |ablation| (top {rv.n})", _f(rv.pearson)),
        ],
        ks=ks,
        rows=[row(ra, "by attribution (score vs effect)"), row(rv, "by activation (score vs |effect|)")],
        ablated=len({(x.hook, x.position, x.feature) for x in r.top_attribution + r.top_activation}),
        top_k=", ".join(f"top-{k} {_pct(v)}" for k, v in (a.get("top_k") or {}).items()),
        relative_error=_f(a.get("relative_error")),
    )


def _charts(r: Report) -> list[dict]:
    ra, rv = r.rankings["attribution"], r.rankings["activation"]
    pa = [(x.attribution, x.effect, _tip(x), x.rank <= 10) for x in r.top_attribution]
    pv = [(x.activation, abs(x.effect), _tip(x), x.rank <= 10) for x in r.top_activation]
    return [
        scatter(
            pa,
            title=f"attribution vs ablation, top {ra.n}: Pearson r = {_f(ra.pearson)}",
            xlabel="attribution (estimate)",
            ylabel="ablation effect (measured)",
            diagonal=True,
        ),
        scatter(
            pv,
            title=f"activation vs |ablation|, top {rv.n}: Pearson r = {_f(rv.pearson)}",
            xlabel="activation",
            ylabel="|ablation effect|",
        ),
    ]


def _table(rows: list[FeatureRow], r: Report, title: str, note: str) -> dict:
    shown = rows[: r.shown]
    scale = max((max(abs(x.attribution), abs(x.effect)) for x in shown), default=1.0) or 1.0
    return dict(
        title=title,
        note=note,
        total=len(rows),
        rows=[
            dict(
                row=x,
                node="whole" if x.feature is None else f"f{x.feature}",
                attribution=_signed(x.attribution),
                effect=_signed(x.effect),
                bars=[_bar(x.attribution, scale, "a"), _bar(x.effect, scale, "e")],
            )
            for x in shown
        ],
    )


def _steering(r: Report) -> dict | None:
    s = r.steering
    if s is None:
        return None
    return dict(
        s=s,
        clamps=[
            dict(
                c=c,
                value="no clamp" if c.value is None else f"activation clamped to {c.value:.3g}",
                probs=[(t, f"{max(1, p * 160):.0f}", f"{p:.1%}") for t, p in c.next_tokens],
            )
            for c in s.clamps
        ],
        max_activation=f"{s.max_activation:.3g}",
        tail=r.prompt[-40:],
    )


def _graph(r: Report) -> dict | None:
    if r.graph is None:
        return None
    g = r.graph
    return dict(
        stats=" · ".join(
            f"{k} {_f(v) if isinstance(v, float) else str(v)}" for k, v in g.items() if k not in GRAPH_HIDDEN
        ),
        layers=g.get("layers", []),
        groups=g.get("groups", {}),
    )


def _tip(x: FeatureRow) -> str:
    label = f" — {x.label}" if x.label else ""
    return f"{x.name} @{x.position} {_show(x.token)}: attribution {x.attribution:+.3f}, ablation {x.effect:+.3f}{label}"


def _signed(v: float) -> dict:
    return dict(cls="pos" if v >= 0 else "neg", text=f"{v:+.3f}")


def _bar(v: float, scale: float, kind: str) -> dict:
    """A bar from the cell's centre: right for positive values, left for negative ones."""
    w = min(75.0, abs(v) / scale * 75)
    left = 75 if v >= 0 else 75 - w
    return dict(kind=kind, left=f"{left:.0f}", width=f"{max(w, 1):.0f}")


def _show(tok: str) -> str:
    return tok.replace("\n", "⏎").replace("\t", "⇥")


def _f(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.3f}"


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.0%}"
