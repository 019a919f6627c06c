"""The one HTML approach: jinja2 templates in pages/templates/, autoescaped, rendered offline.

Every page and fragment (the case-study report, feature cards, the graph page's text) is a template here;
values are escaped by jinja2, never by hand. `render("card.html.j2", card=card)` returns the HTML string.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "templates"


@cache
def environment():
    """The shared jinja2 Environment: templates from pages/templates/, HTML autoescaped, strict undefined."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(["html", "j2"], default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env


def render(name: str, /, **context) -> str:
    """Template `name` (a file in pages/templates/) rendered with `context`, autoescaped."""
    return environment().get_template(name).render(**context)
