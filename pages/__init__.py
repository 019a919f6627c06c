"""Pages: everything drawn for a person, above the data it draws.

render + templates/ (jinja2, autoescaped, offline), graph_page (a graph's interactive page), report_page (a
case study's report), svg (its charts), notebook (the HTML behind each result's `_repr_html_`).

Results in lower layers (attribution, graphs, cases) never import this package: they ask
attribution.display for a kind of page, and this module registers the function for each kind. Only light
modules load here (the page modules are imported when a page is asked for), so `attribution` can import
this package at its end without an import cycle.
"""

from attribution import display
from pages import notebook

display.register("node_table")(notebook.node_table)
display.register("agreement")(notebook.agreement)
display.register("card")(notebook.card)
display.register("check")(notebook.check)
display.register("graph")(notebook.graph)
display.register("report")(notebook.report)


@display.register("graph_page")
def _graph_page(graph, path, **kwargs):
    from pages.graph_page import to_html

    return to_html(graph, path, **kwargs)


@display.register("report_page")
def _report_page(report, path, **kwargs):
    from pages.report_page import write

    return write(report, path, **kwargs)
