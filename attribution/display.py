"""How results show themselves (notebook HTML, HTML pages) without importing the pages that draw them.

Results live in lower layers (attribution, graphs, cases); their pages live above them, in `pages/`. A result
asks this registry for its HTML by a kind name ("node_table", "graph_page", ...), and `pages` registers a
function per kind when it is imported. The `attribution` package imports `pages` at its end, so any program
that imports a result has its pages registered, while no lower module imports a higher one.
"""

from __future__ import annotations

from collections.abc import Callable

from attribution.errors import AttributionError

_RENDERERS: dict[str, Callable[..., object]] = {}


def register(kind: str) -> Callable[[Callable], Callable]:
    """Decorator: `fn` draws results of `kind` (the last registration of a kind wins)."""

    def deco(fn: Callable) -> Callable:
        _RENDERERS[kind] = fn
        return fn

    return deco


def renderer(kind: str) -> Callable[..., object]:
    """The function registered for `kind`; a clear error when none is."""
    try:
        return _RENDERERS[kind]
    except KeyError:
        raise AttributionError(
            f"no page renderer is registered for {kind!r}: the `pages` package draws results; "
            "`import pages` (importing `attribution` does it) before asking for HTML."
        ) from None


def notebook(kind: str, obj, **kwargs) -> str | None:
    """The notebook HTML of `obj`, or None when no renderer is registered (IPython then shows its repr)."""
    fn = _RENDERERS.get(kind)
    return None if fn is None else fn(obj, **kwargs)
