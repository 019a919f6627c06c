"""Results in a Jupyter notebook: the HTML behind each result's `_repr_html_`.

Attribution and Ablation tables, agreement, feature cards, graphs (their offline page in an iframe) and
case-study reports render here, through the same templates the pages use (pages.render, autoescaped). The
result classes reach these functions through attribution.display (registered by pages/__init__.py), so no
lower layer imports this module.
"""

from __future__ import annotations

from pages.render import render


def node_table(table, k: int = 10) -> str:
    """An Attribution's or Ablation's summary line and its top-k nodes (by |value|) as a table."""
    rows = table.top(k, prompt=None)
    value = "effect" if type(table).__name__ == "Ablation" else "attribution"
    more = max(0, len(table) - len(rows))
    return render("nodes.html.j2", title=str(table).splitlines()[0], rows=rows, value=value, more=more)


def agreement(result) -> str:
    """attribution.compare's Agreement as a small table."""
    fields = [
        ("nodes", result.n),
        ("Pearson r", f"{result.pearson:.3f}"),
        ("Spearman rho", f"{result.spearman:.3f}"),
        *((f"top-{k} overlap", f"{v:.0%}") for k, v in result.top_k.items()),
        ("same sign", f"{result.sign_agreement:.0%}"),
        ("relative error", f"{result.relative_error:.2f}"),
    ]
    return render("fields.html.j2", title="attribution vs ablation", fields=fields)


def card(feature_card) -> str:
    """A FeatureCard, as the report shows it."""
    return render("card.html.j2", card=feature_card)


def check(result) -> str:
    """A graph check (graphs.interventions.Check) as a small table."""
    fields = [("scores", result.summary())]
    fields += [(k, f"{getattr(result, k):+.4f}") for k in ("model", "empty", "graph", "complement")]
    return render("fields.html.j2", title="graph check by real ablation", fields=fields)


def frame(page: str, height: int = 860) -> str:
    """A whole offline page inside an iframe (srcdoc), so its scripts and styles stay its own."""
    return render("frame.html.j2", page=page, height=height)


def graph(g, max_edges: int = 5000) -> str:
    """A Graph's offline page in an iframe (or, when it has too many edges to draw, its summary)."""
    from pages.graph_page import page

    if int(g.edge_mask.count_nonzero()) > max_edges:
        return render("pre.html.j2", text=f"{g}\n(prune it to draw it: g.prune(0.8, 0.98, max_feature_nodes=60))")
    return frame(page(g, max_edges=max_edges))


def report(r) -> str:
    """A case-study report's page in an iframe (its graph linked, not embedded)."""
    from pages.report_page import render as report_html

    return frame(report_html(r), height=900)
