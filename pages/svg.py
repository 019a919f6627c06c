"""Inline SVG charts drawn by hand, so the report needs no plotting library and no network.

This module computes the geometry; pages/templates/report_chart.svg.j2 draws it, jinja2 escaping every label.
No xmlns attribute: inline SVG in HTML5 does not need one, and the page then holds no URL at all.
"""

from __future__ import annotations

import math


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        lo, hi = (lo - 1, lo + 1) if math.isfinite(lo) else (-1.0, 1.0)
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks, t = [], first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    if ticks[-1] < hi:
        ticks.append(round(t, 12))
    return ticks


def scatter(
    points: list[tuple[float, float, str, bool]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    diagonal: bool = False,
    width: int = 480,
    height: int = 400,
) -> dict:
    """Points (x, y, tooltip, highlighted) with axes through the data, zero lines and optionally y = x, as
    the geometry report_chart.svg.j2 draws: coordinates as text, every label left to jinja2 to escape."""
    pts = [p for p in points if math.isfinite(p[0]) and math.isfinite(p[1])]
    xs = [p[0] for p in pts] or [0.0]
    ys = [p[1] for p in pts] or [0.0]
    if diagonal:
        lo, hi = min(*xs, *ys, 0.0), max(*xs, *ys, 0.0)
        xt = yt = nice_ticks(lo, hi)
    else:
        xt, yt = nice_ticks(min(*xs, 0.0), max(*xs, 0.0)), nice_ticks(min(*ys, 0.0), max(*ys, 0.0))
    left, right, top, bottom = 62, 16, 40, 46
    pw, ph = width - left - right, height - top - bottom

    def x_(x):
        return left + (x - xt[0]) / (xt[-1] - xt[0]) * pw

    def y_(y):
        return top + ph - (y - yt[0]) / (yt[-1] - yt[0]) * ph

    lines = []  # zero lines and the diagonal, over the grid
    if xt[0] <= 0 <= xt[-1]:
        lines.append(dict(x1=_c(x_(0)), y1=top, x2=_c(x_(0)), y2=top + ph, cls="zero"))
    if yt[0] <= 0 <= yt[-1]:
        lines.append(dict(x1=left, y1=_c(y_(0)), x2=left + pw, y2=_c(y_(0)), cls="zero"))
    if diagonal:
        a, b = xt[0], xt[-1]
        lines.append(dict(x1=_c(x_(a)), y1=_c(y_(a)), x2=_c(x_(b)), y2=_c(y_(b)), cls="diag"))
    return dict(
        width=width,
        height=height,
        title=title,
        title_x=_c(width / 2),
        frame=dict(x=left, y=top, width=pw, height=ph),
        xticks=[dict(x=_c(x_(t)), y1=top, y2=top + ph, label_y=top + ph + 16, text=_num(t)) for t in xt],
        yticks=[
            dict(y=_c(y_(t)), x1=left, x2=left + pw, label_x=left - 6, label_y=_c(y_(t) + 4), text=_num(t)) for t in yt
        ],
        lines=lines,
        points=[  # highlighted points drawn last, on top
            dict(cx=_c(x_(x)), cy=_c(y_(y)), r=4 if hot else 3, cls="pt hot" if hot else "pt", tip=tip)
            for x, y, tip, hot in sorted(pts, key=lambda p: p[3])
        ],
        xlabel=dict(x=_c(left + pw / 2), y=height - 8, text=xlabel),
        ylabel=dict(y=_c(top + ph / 2), text=ylabel),
    )


def _c(v: float) -> str:
    """A coordinate as the page writes it: one decimal."""
    return f"{v:.1f}"


def _num(t: float) -> str:
    if t == int(t) and abs(t) < 1e6:
        return str(int(t))
    return f"{t:.3g}"
