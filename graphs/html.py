"""Interactive HTML with pyvis that opens offline: vis-network's JS and CSS are inlined from the pyvis
package into our own template (pyvis's template links bootstrap and vis from CDNs even with "in_line").

Layout is fixed, physics off: x = token position (several nodes of one cell spread sideways), y = SAE layer
(tokens along the bottom, the metric on top). Size = influence; colour = node type and sign of the node's
attribution (blue raises the metric, red lowers it); edge width = the edge's share of its target's input,
colour = its sign. A feature's tooltip holds its card (label, frequency, top contexts, promoted tokens) whenever
the labeller gives one: the same template as the case-study report's cards.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from graphs.nodes import GraphError
from graphs.render import render
from graphs.template import TEMPLATE

COL, ROW, GAP = 120, 130, 46  # pixels: least width of a token column, a layer row, between nodes of a cell
POS, NEG = "#2f6fb0", "#d0393b"
COLOURS = {"token": "#eeeeee", "error": "#9a9a9a", "metric": "#f2a93b", "group": "#8a5cc2"}


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha:.2f})"


def _short(text: str, n: int = 18) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _tooltip(graph, x, cards) -> str:
    head = html.escape(x.label) if x.label else {"feature": f"feature {x.feature}"}.get(x.kind, x.kind)
    where = f"{x.hook} · " if x.hook else ""
    lines = [
        f"<b>{head}</b>",
        f"{where}pos {x.position} {html.escape(repr(x.token))}" + (f" · f{x.feature}" if x.feature is not None else ""),
        f"activation {x.activation:.3g} · attribution {x.attribution:+.3g} · influence {x.influence:.3g}",
    ]
    if x.kind == "feature":
        card = cards(x.hook, x.feature) if cards is not None else None
        if card is not None:  # the card the report shows, in its compact form (graphs/templates/card.html.j2)
            lines.append(render("card.html.j2", card=card, compact=True))
    return "<br>".join(lines)


def _layout(nodes) -> tuple[dict[str, tuple[float, float]], set[str]]:
    """x by token position, y by row (tokens at the bottom); a crowded cell wraps onto two lines and
    widens its column, so that no two nodes overlap. Also the nodes to label above (every other one)."""
    cells: dict[tuple[int, int], list] = {}
    for x in nodes:
        cells.setdefault((x.layer, x.position), []).append(x)
    per_line = {cell: math.ceil(len(m) / (1 if len(m) <= 5 else 2)) for cell, m in cells.items()}
    width: dict[int, float] = {}
    for (_, pos), k in per_line.items():
        width[pos] = max(width.get(pos, COL), k * GAP + GAP)
    left, x0 = 0.0, {}
    for pos in sorted(width):
        x0[pos] = left + width[pos] / 2
        left += width[pos]
    xy, above = {}, set()
    for (row, pos), members in cells.items():
        members.sort(key=lambda n: (-n.influence, n.id))
        k = per_line[(row, pos)]
        for j, x in enumerate(members):
            line, col = divmod(j, k)
            n_line = min(k, len(members) - line * k)
            xy[x.id] = (x0[pos] + (col - (n_line - 1) / 2) * GAP, -row * ROW + line * GAP)
            if col % 2 == 1:
                above.add(x.id)
    return xy, above


def _vis_nodes(graph, collapse_groups: bool, cards):
    """(pyvis node dicts, node id -> drawn id) for the kept graph, groups drawn as one node each."""
    nodes = graph.nodes
    xy, above = _layout(nodes)
    top = max((x.influence for x in nodes if x.kind in ("feature", "error")), default=1.0) or 1.0
    drawn = {x.id: x.id for x in nodes}
    out = []
    if collapse_groups:
        for name, ids in graph.groups.items():
            members = [graph.node(i) for i in ids if i in drawn and drawn[i] == i]
            if not members:
                continue
            gid = f"group:{name}"
            for m in members:
                drawn[m.id] = gid
            inf = sum(m.influence for m in members)
            sign = sum(m.attribution for m in members)
            tip = f"<b>{html.escape(name)}</b> (group of {len(members)})<br>" + "<br>".join(
                f"{html.escape(m.label or f'f{m.feature}')} · {m.hook} pos {m.position}" for m in members
            )
            cx = sum(xy[m.id][0] for m in members) / len(members)
            cy = sum(xy[m.id][1] for m in members) / len(members)
            out.append(
                _vis_node(gid, _short(name), tip, cx, cy, 8 + 14 * math.sqrt(min(inf / top, 1.0)), "group", sign)
            )
    for x in nodes:
        if drawn[x.id] != x.id:
            continue
        size = {"token": 14, "metric": 24}.get(x.kind, 5 + 16 * math.sqrt(max(x.influence, 0.0) / top))
        label = {
            "token": x.token,
            "metric": f"{graph.metric}\n{graph.metric_value:+.3f}",
            "error": "err",
        }.get(x.kind, _short(x.label) if x.label else f"f{x.feature}")
        up = x.kind in ("feature", "error") and x.id in above
        out.append(_vis_node(x.id, label, _tooltip(graph, x, cards), *xy[x.id], size, x.kind, x.attribution, up))
    return out, drawn


def _vis_node(nid, label, title, x, y, size, kind, sign, above: bool = False) -> dict:
    colour = COLOURS.get(kind) or (POS if sign >= 0 else NEG)
    border = POS if sign >= 0 else NEG
    shape = {"token": "box", "metric": "diamond", "group": "hexagon"}.get(kind, "dot")
    font = {"size": 13 if kind in ("token", "metric") else 10, "color": "#222"}
    if above:  # every other node of a line labelled above it, so neighbours' labels do not collide
        font["vadjust"] = -(2 * size + 16)
    return {
        "id": nid,
        "label": label,
        "title": title,
        "x": x,
        "y": y,
        "size": size,
        "shape": shape,
        "color": {
            "background": colour,
            "border": border if kind in ("error", "group", "metric") else colour,
            "highlight": {"background": colour, "border": "#111"},
            "hover": {"background": colour, "border": "#111"},
        },
        "borderWidth": 2,
        "font": font,
        "kind": kind,
    }


def _vis_edges(graph, drawn: dict[str, str]) -> list[dict]:
    merged: dict[tuple[str, str], list[float]] = {}
    for e in graph.edges:
        key = (drawn[e.source], drawn[e.target])
        if key[0] == key[1]:
            continue  # inside a group
        w = merged.setdefault(key, [0.0, 0.0])
        w[0] += e.weight
        w[1] += math.copysign(e.share, e.weight)
    out = []
    for (s, t), (weight, share) in merged.items():
        a = min(abs(share), 1.0)
        colour = _rgba(POS if weight >= 0 else NEG, 0.2 + 0.7 * a)
        out.append(
            {
                "from": s,
                "to": t,
                "width": 0.5 + 7 * a,
                "color": {"color": colour, "highlight": colour, "hover": colour},
                "title": f"weight {weight:+.4g} · {100 * a:.1f}% of the target's input",
                "arrows": "to",
            }
        )
    return out


def to_html(
    graph,
    path: str | Path,
    *,
    collapse_groups: bool = True,
    check=None,
    cards=None,
    max_edges: int | None = 5000,
) -> Path:
    """The graph's offline page written to `path`. check: a graphs.interventions.Check to show in the title
    (None: none); cards: fn(hook, feature) -> FeatureCard or None (an explainer's card method), shown in
    feature tooltips."""
    path = Path(path)
    text = page(graph, collapse_groups=collapse_groups, check=check, cards=cards, max_edges=max_edges)
    path.write_text(text, encoding="utf-8")
    return path


def page(graph, *, collapse_groups: bool = True, check=None, cards=None, max_edges: int | None = 5000) -> str:
    """The graph's offline page as a string (see to_html)."""
    from pyvis.network import Network

    n_edges = int(graph.edge_mask.sum())
    if max_edges is not None and n_edges > max_edges:
        raise GraphError(
            f"the graph has {n_edges} edges to draw, more than max_edges={max_edges} (a browser slows to a crawl); "
            "prune it first, e.g. graph.prune(0.8, 0.98, max_feature_nodes=60), or pass max_edges=None"
        )
    net = Network(height="820px", width="100%", directed=True, cdn_resources="in_line")
    net.templateEnv = _environment()
    net.path = "graph.html"
    nodes, drawn = _vis_nodes(graph, collapse_groups, cards)
    for n in nodes:
        net.add_node(n.pop("id"), **n)
    for e in _vis_edges(graph, drawn):
        net.add_edge(e.pop("from"), e.pop("to"), **e)
    net.options = {
        "physics": {"enabled": False},
        "interaction": {"hover": True, "tooltipDelay": 80, "navigationButtons": False},
        "edges": {"smooth": False, "arrows": {"to": {"scaleFactor": 0.4}}},
        "nodes": {"fixed": {"x": False, "y": False}},
    }
    text = net.generate_html(name="graph.html")
    rows = [{"y": 0, "name": "tokens"}]
    rows += [{"y": -(i + 1) * ROW, "name": h} for i, h in enumerate(graph.hooks)]
    rows += [{"y": -(len(graph.hooks) + 1) * ROW, "name": "metric"}]
    text = text.replace("/*ROWS*/[]", json.dumps(rows).replace("</", "<\\/"))
    return text.replace("<!--TITLE-->", _title(graph, check)).replace("<!--LEGEND-->", _legend())


def _title(graph, check) -> str:
    parts = [f"metric {html.escape(graph.metric)} = {graph.metric_value:+.3f}"]
    kinds = [x.kind for x in graph.nodes]
    parts.append(f"{kinds.count('feature')} features, {kinds.count('error')} error nodes")
    if check is not None:
        parts.append(html.escape(check.summary()))
    return f"<h2>{html.escape(graph.prompt)}</h2><div class='sub'>{' · '.join(parts)}</div>"


def _legend() -> str:
    items = [
        (f"background:{POS}", "feature raising the metric"),
        (f"background:{NEG}", "feature lowering it"),
        (f"background:{COLOURS['error']}", "SAE error term"),
        (f"background:{COLOURS['group']}", "group (supernode)"),
        (f"background:{COLOURS['token']};border:1px solid #999", "input token"),
        (f"background:{COLOURS['metric']}", "metric"),
    ]
    rows = "".join(f"<span><span class='sw' style='{s}'></span>{t}</span>" for s, t in items)
    return (
        f"<div id='legend'><b>Legend</b>{rows}<span>size: influence on the metric</span>"
        f"<span>edge width: share of the target's input (blue +, red −)</span></div>"
    )


def _environment():
    import pyvis
    from jinja2 import ChoiceLoader, DictLoader, Environment, FileSystemLoader

    lib = Path(pyvis.__file__).parent / "templates"
    return Environment(loader=ChoiceLoader([DictLoader({"graph.html": TEMPLATE}), FileSystemLoader(str(lib))]))
