"""The report as one offline HTML page: inline CSS and SVG, no scripts or fonts fetched from anywhere.

The page is for a researcher deciding whether to trust the result, so each estimate sits beside its
measured ablation effect, and every section that could not be produced says why (from `Report.skipped`)
instead of going blank.
The graph (multi-hop) is the graph package's own offline page, embedded with <iframe srcdoc> so this file
stays self-contained; the same page is also written beside it as graph.html.
"""

from __future__ import annotations

import math
from html import escape
from pathlib import Path

from cases.report import FeatureRow, Report, Steering
from cases.svg import scatter

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1320px;margin:0 auto;padding:20px 28px 60px}
h1{font-size:24px;margin:8px 0 4px}
h2{font-size:18px;margin:30px 0 8px;border-bottom:1px solid #d8dce3;padding-bottom:4px}
.muted{color:#68707d}.small{font-size:12px}
section.box{background:#fff;border:1px solid #dfe3ea;border-radius:8px;padding:14px 18px;margin:12px 0}
.tokens{display:flex;flex-wrap:wrap;gap:3px;margin:10px 0}
.tok{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre;padding:2px 5px;border-radius:4px;
border:1px solid #e1e4ea}
.stats{display:flex;flex-wrap:wrap;gap:12px}
.stat{background:#fff;border:1px solid #dfe3ea;border-radius:8px;padding:10px 14px;min-width:150px}
.stat b{display:block;font-size:22px}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{padding:4px 8px;border-bottom:1px solid #eceef2;text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600;position:sticky;top:0}
td.num{text-align:right;font-family:ui-monospace,Menlo,Consolas,monospace;white-space:nowrap}
td.mono{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre}
.pos{color:#1f5fbf}.neg{color:#c0392b}
.bars{width:150px}.bar{height:6px;margin:2px 0;border-radius:2px}
.bar.a{background:#7aa7e6}.bar.e{background:#2d3e5c}
td.bars{background:linear-gradient(#c9ced8,#c9ced8) 83px 0/1px 100% no-repeat #fff}
.charts{display:flex;flex-wrap:wrap;gap:16px}
svg.chart{background:#fff;border:1px solid #dfe3ea;border-radius:8px;font-size:11px}
svg .frame{fill:none;stroke:#c9ced8}svg .grid{stroke:#eef0f4}svg .zero{stroke:#9aa3b2}
svg .diag{stroke:#e08e2b;stroke-dasharray:5 4}svg .ctitle{font-size:13px;font-weight:600}
svg .pt{fill:#7aa7e6;fill-opacity:.75}svg .pt.hot{fill:#1f3f7a}
.steer{display:grid;grid-template-columns:repeat(auto-fit,minmax(290px,1fr));gap:12px}
.cond{min-width:0;background:#fff;border:1px solid #dfe3ea;border-radius:8px;padding:10px 12px}
.cond h3{margin:0 0 4px;font-size:15px}.cont{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;
background:#f6f7f9;border-radius:4px;padding:6px;margin-top:6px;overflow-wrap:anywhere}
.prob{display:flex;align-items:center;gap:6px;font-size:12px}.prob span.t{width:110px;overflow:hidden;
font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre}
.prob div{height:8px;background:#7aa7e6;border-radius:2px}
.note{background:#fff8e1;border:1px solid #f0d98c;border-radius:6px;padding:8px 12px;margin:6px 0}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:12px}
.card{background:#fff;border-radius:8px;overflow:auto;min-width:0;overflow-wrap:anywhere}
.card .feature-card{margin:0!important}
iframe{width:100%;height:760px;border:1px solid #dfe3ea;border-radius:8px;background:#fff}
"""


def write(report: Report, path: str | Path, *, graph_html: str | None = None) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(report, graph_html=graph_html), encoding="utf-8")
    return str(path)


def render(report: Report, *, graph_html: str | None = None) -> str:
    r = report
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(r.title)}: {escape(r.prompt)}</title><style>{CSS}</style></head><body><main>",
        _header(r),
        _summary(r),
        _charts(r),
        _table(r.top_attribution, r, "Top features by attribution", _ATTR_NOTE),
        _table(r.top_activation, r, "Top features by plain activation", _ACT_NOTE),
        _cards(r),
        _steering(r.steering, r),
        _graph(r, graph_html),
        _footer(r),
        "</main></body></html>",
    ]
    return "\n".join(p for p in parts if p)


_ATTR_NOTE = (
    "Estimate (attribution) beside the real effect of zeroing the node (ablation), both as "
    "metric(clean) − metric(ablated): positive nodes push toward the good answer. Bars: light = attribution, "
    "dark = ablation."
)
_ACT_NOTE = (
    "The same nodes ranked by how strongly they fire, with no regard to the answer. The paper found this the "
    "weaker ranking: many strongly firing features do little to the logit difference."
)


def _header(r: Report) -> str:
    peak = max((abs(v) for v in r.position_attribution), default=0.0) or 1.0
    chips = []
    for i, (tok, v) in enumerate(zip(r.tokens, r.position_attribution)):
        a = min(1.0, abs(v) / peak)
        colour = f"rgba(31,95,191,{a:.2f})" if v >= 0 else f"rgba(192,57,43,{a:.2f})"
        fg = "#fff" if a > 0.55 else "#1d2330"
        chips.append(
            f'<span class="tok" style="background:{colour};color:{fg}" title="position {i}: strongest node '
            f'{v:+.3f}">{escape(_show(tok))}</span>'
        )
    baseline = "" if r.baseline is None else f" (on the corrupt prompt: {r.baseline:+.3f})"
    saes = "".join(f"<li><code>{escape(h)}</code>: {escape(d)}</li>" for h, d in r.saes.items())
    corrupt = "" if r.corrupt is None else f"<br>Corrupt prompt: <code>{escape(r.corrupt)}</code>"
    return f"""<h1>{escape(r.title)}</h1>
<section class="box"><div>Prompt: <code>{escape(r.prompt)}</code>{corrupt}</div>
<div class="tokens">{"".join(chips)}</div>
<div class="small muted">Tokens coloured by their strongest node's attribution (blue pushes toward
{escape(repr(r.good))}, red toward {escape(repr(r.bad))}); hover for values.</div>
<p>Metric: logit({escape(repr(r.good))}) − logit({escape(repr(r.bad))}) = <b>{r.metric:+.3f}</b>{baseline}</p>
<div class="small">Model: <code>{escape(r.model)}</code> · attribution <code>{escape(r.method)}</code> ·
ablation <code>{escape(r.mode)}</code><details><summary>{len(r.saes)} dictionaries spliced in</summary>
<ul>{saes}</ul></details></div></section>"""


def _summary(r: Report) -> str:
    a = r.agreement
    ra, rv = r.rankings["attribution"], r.rankings["activation"]
    stats = [
        ("metric", f"{r.metric:+.3f}"),
        (f"Pearson r, attribution vs ablation (top {a.get('n')})", _f(a.get("pearson"))),
        ("Spearman ρ, attribution vs ablation", _f(a.get("spearman"))),
        ("same sign", _pct(a.get("sign_agreement"))),
        (f"Pearson r, activation vs |ablation| (top {rv.n})", _f(rv.pearson)),
    ]
    cards = "".join(
        f'<div class="stat"><b>{escape(v)}</b><span class="small muted">{escape(k)}</span></div>' for k, v in stats
    )
    ks = sorted(set(ra.captured) | set(rv.captured))
    head = "".join(f"<th>top {k}</th>" for k in ks)

    def row(rk, what):
        cells = [_f(rk.pearson), _f(rk.spearman)] + [_pct(rk.captured.get(k)) for k in ks]
        return f"<tr><td>{what}</td>" + "".join(f'<td class="num">{c}</td>' for c in cells) + "</tr>"

    topk = ", ".join(f"top-{k} {_pct(v)}" for k, v in (a.get("top_k") or {}).items())
    return f"""<h2>Does attribution find what matters?</h2><div class="stats">{cards}</div>
<section class="box"><table><tr><th>ranking</th><th>Pearson</th><th>Spearman</th>{head}</tr>
{row(ra, "by attribution (score vs effect)")}{row(rv, "by activation (score vs |effect|)")}
</table><p class="small muted">"top k" columns: the share of the largest possible total |ablation effect| of k
nodes (among all {len({(x.hook, x.position, x.feature) for x in r.top_attribution + r.top_activation})} nodes
ablated here) that each ranking's own top k capture. Agreement of the top nodes by attribution:
{escape(topk) or "n/a"}; relative error {_f(a.get("relative_error"))}.
Sum of feature attributions {r.feature_attribution:+.3f}, of error nodes {r.error_attribution:+.3f}.</p></section>"""


def _charts(r: Report) -> str:
    ra, rv = r.rankings["attribution"], r.rankings["activation"]
    pa = [(x.attribution, x.effect, _tip(x), x.rank <= 10) for x in r.top_attribution]
    pv = [(x.activation, abs(x.effect), _tip(x), x.rank <= 10) for x in r.top_activation]
    one = scatter(
        pa,
        title=f"attribution vs ablation, top {ra.n}: Pearson r = {_f(ra.pearson)}",
        xlabel="attribution (estimate)",
        ylabel="ablation effect (measured)",
        diagonal=True,
    )
    two = scatter(
        pv,
        title=f"activation vs |ablation|, top {rv.n}: Pearson r = {_f(rv.pearson)}",
        xlabel="activation",
        ylabel="|ablation effect|",
    )
    return f"""<h2>Attribution against ablation</h2><div class="charts">{one}{two}</div>
<p class="small muted">Each point is one node; dark points are each ranking's top 10; dashed: y = x, where
a perfect estimate lies. Hover a point for its node.</p>"""


def _table(rows: list[FeatureRow], r: Report, title: str, note: str) -> str:
    shown = rows[: r.shown]
    scale = max((max(abs(x.attribution), abs(x.effect)) for x in shown), default=1.0) or 1.0
    body = []
    for x in shown:
        feat = "whole" if x.feature is None else f"f{x.feature}"
        body.append(
            f'<tr><td class="num">{x.rank}</td><td class="mono">{escape(x.hook)}</td><td class="num">{x.position}</td>'
            f'<td class="mono">{escape(_show(x.token))}</td><td class="mono">{feat}</td>'
            f"<td>{escape(x.label) or '<span class=muted>—</span>'}</td>"
            f'<td class="num">{x.activation:.3f}</td>{_signed(x.attribution)}{_signed(x.effect)}'
            f'<td class="bars">{_bar(x.attribution, scale, "a")}{_bar(x.effect, scale, "e")}</td></tr>'
        )
    return f"""<h2>{escape(title)}</h2><p class="small muted">{escape(note)} Showing {len(shown)} of {len(rows)}
(all in the CSV and report.json).</p><section class="box"><table><tr><th>#</th><th>hook</th><th>pos</th>
<th>token</th><th>node</th><th>label</th><th>activation</th><th>attribution</th><th>ablation</th><th></th></tr>
{"".join(body)}</table></section>"""


def _cards(r: Report) -> str:
    if not r.feature_cards:
        why = r.skipped.get("cards", "no cards were made")
        return f'<h2>Feature cards</h2><div class="note">Feature cards not shown: {escape(why)}.</div>'
    from graphs.render import render as template

    cards = "".join(f'<div class="card">{template("card.html.j2", card=c)}</div>' for c in r.feature_cards)
    return f"""<h2>Feature cards</h2><p class="small muted">The top features by attribution: their top-activating
contexts (firing tokens highlighted), the distribution of their activations with the share in each interval, and
the tokens they promote and suppress through the unembedding.</p><div class="cards">{cards}</div>"""


def _steering(s: Steering | None, r: Report) -> str:
    if s is None:
        why = r.skipped.get("steering", "steering was not run")
        return f'<h2>Steering</h2><div class="note">{escape(why)}</div>'
    conds = []
    for c in s.clamps:
        value = "no clamp" if c.value is None else f"activation clamped to {c.value:.3g}"
        probs = "".join(
            f'<div class="prob"><span class="t">{escape(_show(t))}</span><div style="width:{max(1, p * 160):.0f}px">'
            f"</div><span>{p:.1%}</span></div>"
            for t, p in c.next_tokens
        )
        conds.append(
            f'<div class="cond"><h3>{escape(c.name)}</h3><div class="small muted">{value}</div>'
            f'<div>metric {c.metric:+.3f}</div>{probs}<div class="cont">'
            f'<span class="muted">…{escape(r.prompt[-40:])}</span><b>{escape(c.continuation)}</b></div></div>'
        )
    label = f" ({escape(s.label)})" if s.label else ""
    return f"""<h2>Steering</h2><section class="box"><p>Feature <code>{escape(s.hook)} f{s.feature}</code>{label},
{escape(s.chosen)}, clamped at {escape(s.positions)}. Its maximum activation
{s.max_activation:.3g} comes from {escape(s.max_source)}. Each panel: the metric and next-token distribution after
the prompt, and a greedy continuation (the clamp stays on while generating).</p>
<div class="steer">{"".join(conds)}</div></section>"""


def _graph(r: Report, graph_html: str | None) -> str:
    if r.graph is None:
        why = r.skipped.get("graph")
        return "" if why is None else f'<h2>Feature graph</h2><div class="note">{escape(why)}</div>'
    g = r.graph
    stats = " · ".join(
        f"{k} {_f(v) if isinstance(v, float) else escape(str(v))}"
        for k, v in g.items()
        if k not in ("html", "json", "check", "layers", "groups")
    )
    frame = (
        ""
        if graph_html is None
        else f'<iframe title="feature graph" srcdoc="{escape(graph_html, quote=True)}"></iframe>'
    )
    return f"""<h2>Feature graph</h2><p>{stats}. Open <a href="graph.html">graph.html</a> on its own, or the
JSON in <code>graph.json</code>.</p>{frame}{_layers(g.get("layers", []))}{_groups(g.get("groups", {}))}"""


def _layers(layers: list[dict]) -> str:
    """Each SAE layer alone: what its features carry of the metric, and what the graph keeps of it there."""
    if not layers:
        return ""
    rows = "".join(
        f"<tr><td>{escape(x['hook'])}</td><td>{x['carried']:+.3f}</td><td>{x['graph']:+.3f}</td>"
        f"<td>{_f(x['faithfulness'])}</td></tr>"
        for x in layers
    )
    return f"""<h3>Layer by layer</h3><p>Each SAE layer alone, the others untouched and error terms kept: the
metric change when all its active features are zero-ablated (what its features carry; the error term carries
the rest), the part the graph's features at that layer keep, and their ratio (unstable where the features
carry little). Every path to the metric crosses each residual-stream layer, so the weakest layer bounds the
whole graph's faithfulness.</p>
<table><tr><th>hook</th><th>features carry</th><th>graph keeps</th><th>faithfulness</th></tr>{rows}</table>"""


def _groups(groups: dict) -> str:
    if not groups:
        return ""
    items = []
    for name, x in groups.items():
        if "error" in x:
            items.append(f"<li><b>{escape(name)}</b>: {escape(x['error'])}</li>")
            continue
        feats = "; ".join(escape(f) for f in x["features"][:5])
        items.append(
            f"<li><b>{escape(name)}</b>: {x['nodes']} nodes ({x['kept']} in the pruned graph); zero-ablating them "
            f"together changes the metric by {x['ablation']:+.3f}. Features: {feats}</li>"
        )
    return f"<h3>Groups found by contrast</h3><ul>{''.join(items)}</ul>"


def _footer(r: Report) -> str:
    notes = "".join(f'<div class="note">{escape(n)}</div>' for n in r.notes)
    times = ", ".join(f"{k} {v:.2f}s" for k, v in r.timings.items())
    files = " · ".join(f"<code>{escape(Path(p).name)}</code>" for p in r.paths.values())
    return f"""<h2>Notes</h2>{notes or '<p class="muted">none</p>'}
<p class="small muted">Time: {escape(times)}.<br>Files: {files}.</p>"""


def _tip(x: FeatureRow) -> str:
    label = f" — {x.label}" if x.label else ""
    return f"{x.name} @{x.position} {_show(x.token)}: attribution {x.attribution:+.3f}, ablation {x.effect:+.3f}{label}"


def _signed(v: float) -> str:
    return f'<td class="num {"pos" if v >= 0 else "neg"}">{v:+.3f}</td>'


def _bar(v: float, scale: float, kind: str) -> str:
    """A bar from the cell's centre: right for positive values, left for negative ones."""
    w = min(75.0, abs(v) / scale * 75)
    left = 75 if v >= 0 else 75 - w
    return f'<div class="bar {kind}" style="margin-left:{left:.0f}px;width:{max(w, 1):.0f}px"></div>'


def _show(tok: str) -> str:
    return tok.replace("\n", "⏎").replace("\t", "⇥")


def _f(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.3f}"


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.0%}"
