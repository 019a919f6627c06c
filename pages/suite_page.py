"""The suite's report as one offline page: its acceptance figures, a row per prompt (the model's answer, the
graph's scores, supernodes with their evidence, suppression and swap before and after, a link to the graph's
page), and the aggregate graph the prompts share, drawn as an inline SVG (no scripts, nothing fetched).

pages/templates/suite.html.j2 is the markup; this module lays the aggregate graph out (columns by layer,
nodes stacked by how many prompts use them) and formats numbers.
"""

from __future__ import annotations

from pathlib import Path

from pages.render import render

COLUMN, ROW, TOP, LEFT = 150, 34, 40, 20  # the aggregate graph's geometry, in pixels
MAX_PER_COLUMN = 14  # nodes drawn per layer (the most shared first); the JSON has them all


def write(report: dict, path: str | Path, aggregate=None) -> Path:
    path = Path(path)
    path.write_text(page(report, aggregate), encoding="utf-8")
    return path


def page(report: dict, aggregate=None) -> str:
    return render(
        "suite.html.j2",
        r=report,
        s=report["summary"],
        rows=report["prompts"],
        graph=layout(aggregate) if aggregate is not None and aggregate.nodes else None,
        f=lambda x, spec="+.3f": "–" if x is None else format(x, spec),
        pct=lambda x: "–" if x is None else f"{x:.0%}",
    )


def layout(agg) -> dict:
    """Positions of the aggregate graph's nodes and edges for the SVG: one column per dictionary layer (the
    metric last), the nodes of a column ordered by how many prompts keep them."""
    columns: dict[int, list] = {}
    for n in agg.nodes.values():
        columns.setdefault(n.layer, []).append(n)
    total = max(1, len(agg.prompts))
    at, nodes = {}, []
    for c, layer in enumerate(sorted(columns)):
        ranked = sorted(columns[layer], key=lambda n: (-len(n.prompts), -n.influence, n.key))[:MAX_PER_COLUMN]
        for r, n in enumerate(ranked):
            x, y = LEFT + c * COLUMN, TOP + r * ROW
            at[n.key] = (x, y)
            share = len(n.prompts) / total
            nodes.append({
                "x": x, "y": y, "r": 4 + 8 * share, "key": n.key, "n": len(n.prompts), "share": share,
                "label": (", ".join(n.groups) + ": " if n.groups else "") + (n.label or n.key),
                "grouped": bool(n.groups), "metric": n.key == "metric",
            })  # fmt: skip
    edges = []
    for e in agg.edges:
        if e.source in at and e.target in at:
            (x1, y1), (x2, y2) = at[e.source], at[e.target]
            edges.append({"x1": x1, "y1": y1, "x2": x2, "y2": y2, "w": 0.5 + 4 * len(e.prompts) / total,
                          "pos": e.weight >= 0, "n": len(e.prompts)})  # fmt: skip
    height = TOP + ROW * max((min(len(v), MAX_PER_COLUMN) for v in columns.values()), default=1) + 20
    return {"nodes": nodes, "edges": edges, "width": LEFT + COLUMN * len(columns) + 260, "height": height,
            "columns": [{"x": LEFT + c * COLUMN, "name": _column_name(columns[k][0])}
                        for c, k in enumerate(sorted(columns))]}  # fmt: skip


def _column_name(n) -> str:
    return "metric" if n.key == "metric" else n.hook or ""
