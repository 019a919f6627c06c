"""The graph's interactive page: one offline HTML file, vis-network inlined from the pyvis package.

Python gathers what the page draws (pages/templates: graph.html.j2, its script graph.js.j2 and style
graph.css.j2, each node's panel card graph_node.html.j2, all autoescaped); the page lays it out in the browser:

- x by token position, y by layer row (tokens at the bottom, the metric on top). A cell holding several nodes
  wraps them into lines, and a column is as wide as its widest cell's line, so no two nodes or labels overlap:
  labels are measured with the canvas at the page's font (12 px) and cut to LABEL_PX (the full label is in
  the side panel). Rows are as tall as their tallest cell.
- Error nodes are collapsed by default into one node per layer row (its influence and attribution the sums of
  its members', its edges the sums of theirs), drawn in a column right of the last token; a checkbox shows them
  per position. Groups (graph.groups, supernodes) are drawn as one node each (collapse_groups) and open or close
  by double-click, by the panel's button, or all at once by a checkbox.
- Clicking a node shows its card in the side panel (label, kind, hook, position, activation, attribution,
  influence; for features the labeller's card: top contexts, interval shares, promoted tokens) and its
  strongest inputs and outputs, each a link to that node; its edges are drawn on top, the others faded.
- Clicking an edge shows its panel: its ends and weight and, where the graph has a head split (graph.heads,
  graphs.heads), the attention heads that carry it, the other heads' sum and the part no head carries.

Size = influence; colour = node type and sign of the node's attribution (blue raises the metric, red lowers
it); edge width = the edge's share of its target's input, colour = its sign; edges that skip rows are curved.
"""

from __future__ import annotations

import math
from pathlib import Path

from graphs.graph_nodes import GraphError
from pages.render import render

LABEL_PX = 130  # the widest label drawn on the graph, in pixels at the page's 12 px font
POS, NEG = "#2f6fb0", "#d0393b"
COLOURS = {"token": "#eeeeee", "error": "#9a9a9a", "errors": "#9a9a9a", "metric": "#f2a93b", "group": "#8a5cc2"}
SHAPES = {"token": "box", "metric": "diamond", "group": "hexagon"}
KIND_NAMES = {"feature": "dictionary feature", "error": "error term (what the dictionary misses)", "token": "token"}


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha:.2f})"


def _one_line(text: str) -> str:
    """A label on one line (vis-network splits labels at newlines)."""
    return " ".join(text.split()) if any(c in text for c in "\n\r\t") else text


def _token_text(token: str) -> str:
    return token.replace("\n", "⏎").replace("\t", "⇥") if token.strip() else repr(token)


def _name(x) -> str:
    if x.kind == "token":
        return _token_text(x.token)
    if x.kind == "error":
        return "err"
    if x.kind == "metric":
        return "metric"
    return _one_line(x.label) if x.label else f"f{x.feature}"


def _tooltip(x, name: str) -> str:
    """Plain text (vis-network shows a string title as text, so nothing in it is parsed as HTML)."""
    where = f"{x.hook} · " if x.hook else ""
    feature = f" · f{x.feature}" if x.feature is not None else ""
    return (
        f"{name}\n{where}pos {x.position} {x.token!r}{feature}\n"
        f"activation {x.activation:.3g} · attribution {x.attribution:+.3g} · influence {x.influence:.3g}\n"
        "click for its card and strongest edges"
    )


def _size(kind: str, influence: float, top: float) -> float:
    return {"token": 12.0, "metric": 16.0}.get(kind, 5 + 11 * math.sqrt(min(max(influence, 0.0) / top, 1.0)))


def _colour(kind: str, sign: float) -> dict:
    fill = COLOURS.get(kind) or (POS if sign >= 0 else NEG)
    border = (POS if sign >= 0 else NEG) if kind in ("error", "errors", "group", "metric") else fill
    if kind == "token":
        border = "#999999"
    return {
        "background": fill,
        "border": border,
        "highlight": {"background": fill, "border": "#111111"},
        "hover": {"background": fill, "border": "#111111"},
    }


def _node(graph, x, top: float, cards, column: int) -> dict:
    name = _name(x)  # drawn on the graph
    full = x.label or {"error": f"error term at {x.hook}", "token": f"token {name}"}.get(x.kind, name)  # the panel's
    card = cards(x.hook, x.feature) if (x.kind == "feature" and cards is not None) else None
    facts = [
        ("kind", KIND_NAMES.get(x.kind, x.kind)),
        *([("hook", f"{x.hook} (row {x.layer})")] if x.hook else []),
        *([("feature", f"#{x.feature}")] if x.feature is not None else []),
        ("position", f"{x.position} {x.token!r}"),
        ("activation", f"{x.activation:.4g}"),
        ("attribution", f"{x.attribution:+.4g}"),
        ("influence", f"{x.influence:.4g}"),
    ]
    if x.kind == "metric":
        facts.insert(1, ("metric", f"{graph.metric} = {graph.metric_value:+.4f}"))
    head = render("graph_node.html.j2", title=full, facts=facts, card=card, members=[])
    label = f"{graph.metric}\n{graph.metric_value:+.3f}" if x.kind == "metric" else name
    return {
        "id": x.id,
        "kind": x.kind,
        "row": x.layer,
        "col": column,
        "name": full,
        "where": f"{x.hook} · pos {x.position}" if x.hook else f"pos {x.position}",
        "label": label,
        "title": _tooltip(x, full),
        "size": _size(x.kind, x.influence, top),
        "shape": SHAPES.get(x.kind, "dot"),
        "color": _colour(x.kind, x.attribution),
        "influence": x.influence,
        "head": head,
    }


def _aggregate(nid: str, kind: str, name: str, members: list, top: float, row: int, column: int, why: str) -> dict:
    """One node standing for several (a layer's error nodes, a group): influence and attribution summed."""
    inf = sum(m.influence for m in members)
    attr = sum(m.attribution for m in members)
    facts = [("kind", why), ("members", str(len(members))), ("attribution (sum)", f"{attr:+.4g}")]
    facts.append(("influence (sum)", f"{inf:.4g}"))
    rows = [{"id": m.id, "text": f"{_name(m)} · {m.hook} pos {m.position} {m.token!r}"} for m in members]
    head = render("graph_node.html.j2", title=name, facts=facts, card=None, members=rows)
    title = f"{name}\n{why}: {len(members)} nodes\nattribution {attr:+.3g} · influence {inf:.3g}\nclick for details"
    return {
        "id": nid,
        "kind": kind,
        "row": row,
        "col": column,
        "name": name,
        "where": why,
        "label": name,
        "title": title,
        "size": _size(kind, inf, top),
        "shape": SHAPES.get(kind, "dot"),
        "color": _colour(kind, attr),
        "influence": inf,
        "head": head,
        "members": [m.id for m in members],
    }


def data(graph, *, collapse_groups: bool = True, cards=None) -> dict:
    """What the page draws, as JSON-ready data: rows, columns (token positions, then the errors' column),
    nodes (the graph's, one per layer row for its error nodes, one per group) and the kept edges."""
    nodes = graph.nodes
    top = max((x.influence for x in nodes if x.kind in ("feature", "error")), default=1.0) or 1.0
    positions = sorted({x.position for x in nodes})
    errors_col = (positions[-1] + 1) if positions else 1
    out = [_node(graph, x, top, cards, x.position) for x in nodes]
    by_id = {n["id"]: n for n in out}

    rows: dict[int, list] = {}
    for x in nodes:
        if x.kind == "error":
            rows.setdefault(x.layer, []).append(x)
    for row, members in sorted(rows.items()):
        hook, name = members[0].hook, f"{len(members)} error" + "s" * (len(members) > 1)
        why = f"error terms at {hook}, all positions"
        agg = _aggregate(f"errors:{hook}", "errors", name, members, top, row, errors_col, why)
        out.append(agg)
        for m in members:
            by_id[m.id]["agg"] = agg["id"]

    for name, ids in graph.groups.items():
        members = [graph.node(i) for i in ids if i in by_id and "group" not in by_id[i]]
        if not members:
            continue
        lead = max(members, key=lambda m: (m.influence, m.id))  # drawn in its strongest member's cell
        agg = _aggregate(f"group:{name}", "group", name, members, top, lead.layer, lead.position, "group (supernode)")
        out.append(agg)
        for m in members:
            by_id[m.id]["group"] = agg["id"]

    tokens = {x.position: _token_text(x.token) for x in nodes if x.kind == "token"}
    columns = [{"col": p, "name": tokens.get(p, "")} for p in positions]
    if rows:
        columns.append({"col": errors_col, "name": "errors"})
    names = ["tokens", *graph.hooks, "metric"]
    heads = graph.heads.kept(graph) if graph.heads is not None else None
    edges = [[e.source, e.target, e.weight, e.share] for e in graph.edges]
    if heads is not None:  # the edge's split by attention head (graphs.heads), listed in its panel
        for e, row in zip(edges, heads):
            e.append(row)
    return {
        "rows": names,
        "columns": columns,
        "nodes": out,
        "edges": edges,
        "collapse_groups": collapse_groups,
        "label_px": LABEL_PX,
        "pos": POS,
        "neg": NEG,
    }


def to_html(
    graph,
    path: str | Path,
    *,
    collapse_groups: bool = True,
    check=None,
    cards=None,
    max_edges: int | None = 5000,
    qk=None,
) -> Path:
    """The graph's offline page written to `path`. check: a graphs.interventions.Check to show in the title
    (None: none); cards: fn(hook, feature) -> FeatureCard or None (an explainer's card method), shown in the
    side panel of a clicked feature; qk: graphs.qk.QK decompositions shown under the side panel."""
    path = Path(path)
    text = page(graph, collapse_groups=collapse_groups, check=check, cards=cards, max_edges=max_edges, qk=qk)
    path.write_text(text, encoding="utf-8")
    return path


def page(graph, *, collapse_groups: bool = True, check=None, cards=None, max_edges: int | None = 5000, qk=None) -> str:
    """The graph's offline page as a string (see to_html)."""
    from markupsafe import Markup

    n_edges = int(graph.edge_mask.count_nonzero())
    if max_edges is not None and n_edges > max_edges:
        raise GraphError(
            f"the graph has {n_edges} edges to draw, more than max_edges={max_edges} (a browser slows to a crawl); "
            "prune it first, e.g. graph.prune(0.8, 0.98, max_feature_nodes=60), or pass max_edges=None"
        )
    kinds = [x.kind for x in graph.nodes]
    drawn = data(graph, collapse_groups=collapse_groups, cards=cards)
    legend = [
        (f"background:{POS}", "feature raising the metric"),
        (f"background:{NEG}", "feature lowering it"),
        (f"background:{COLOURS['error']}", "error terms (one node per row, or per position)"),
        (f"background:{COLOURS['group']}", "group (supernode)"),
        (f"background:{COLOURS['token']};border:1px solid #999", "input token"),
        (f"background:{COLOURS['metric']}", "metric"),
    ]
    return render(
        "graph.html.j2",
        prompt=graph.prompt,
        metric=f"{graph.metric} = {graph.metric_value:+.3f}",
        counts=f"{kinds.count('feature')} features, {kinds.count('error')} error nodes, {n_edges} edges"
        + (f" · cross-layer transcoder: a feature writes up to {r} layers" if (r := graph.info.get("reach")) else ""),
        check=check.summary() if check is not None else None,
        legend=legend,
        has_groups=any(n["kind"] == "group" for n in drawn["nodes"]),  # a group with a kept member
        has_errors="error" in kinds,
        collapse_groups=collapse_groups,
        data=drawn,
        vis_js=Markup(_vis("vis-network.min.js")),
        vis_css=Markup(_vis("vis-network.css")),
        qk=qk_panels(graph, qk or []),
    )


# --- the QK panel (graphs.qk): pages/templates/graph_qk.html.j2 ---------------------------------------------


def qk_panels(graph, decompositions) -> list[dict]:
    """Per QK decomposition: its title, score and top pairs, each side named as the page names its node (a
    link when the node is drawn) or as the decomposition names it."""
    kept = {x.id: x for x in graph.nodes}
    out = []
    for qk in decompositions:
        if qk.prompt != graph.prompt:
            raise GraphError(
                f"a QK decomposition of {qk.prompt!r} on the page of {graph.prompt!r}: pass the graph's own"
            )

        def side(node, qk=qk):
            x = kept.get(node)
            name = qk.name(node) if x is None else _name(x) + (f" ({x.hook} @{x.position})" if x.hook else "")
            return {"id": node, "name": name, "in_graph": x is not None}

        pairs = {(p.query, p.key): p for p in [*qk.pairs, *qk.node_pairs]}.values()  # node pairs after bias ones
        rows = [{"term": p.term, "query": side(p.query), "key": side(p.key)} for p in pairs]
        q, k = qk.query_pos, qk.key_pos
        title = f"L{qk.layer}.H{qk.head}: {qk.tokens[q]!r}@{q} ← {qk.tokens[k]!r}@{k}"
        out.append({"title": title, "score": qk.score, "pattern": qk.pattern, "rows": rows,
                    "bias_bias": qk.bias_terms()["bias_bias"], "remainder": qk.remainder})  # fmt: skip
    return out


def _vis(name: str) -> str:
    """A file of the vis-network build that pyvis ships (inlined: the page fetches nothing)."""
    import pyvis

    return (Path(pyvis.__file__).parent / "templates" / "lib" / "vis-9.1.2" / name).read_text(encoding="utf-8")
