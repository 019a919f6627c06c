"""Inline SVG charts drawn by hand, so the report needs no plotting library and no network.

No xmlns attribute: inline SVG in HTML5 does not need one, and the page then holds no URL at all.
"""

from __future__ import annotations

import math
from html import escape


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
) -> str:
    """Points (x, y, tooltip, highlighted) with axes through the data, zero lines and optionally y = x."""
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

    def px(x):
        return left + (x - xt[0]) / (xt[-1] - xt[0]) * pw

    def py(y):
        return top + ph - (y - yt[0]) / (yt[-1] - yt[0]) * ph

    out = [
        f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
        f'<text x="{width / 2:.1f}" y="20" text-anchor="middle" class="ctitle">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame"/>',
    ]
    for t in xt:
        out.append(f'<line x1="{px(t):.1f}" y1="{top}" x2="{px(t):.1f}" y2="{top + ph}" class="grid"/>')
        out.append(f'<text x="{px(t):.1f}" y="{top + ph + 16}" text-anchor="middle">{_num(t)}</text>')
    for t in yt:
        out.append(f'<line x1="{left}" y1="{py(t):.1f}" x2="{left + pw}" y2="{py(t):.1f}" class="grid"/>')
        out.append(f'<text x="{left - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{_num(t)}</text>')
    if xt[0] <= 0 <= xt[-1]:
        out.append(f'<line x1="{px(0):.1f}" y1="{top}" x2="{px(0):.1f}" y2="{top + ph}" class="zero"/>')
    if yt[0] <= 0 <= yt[-1]:
        out.append(f'<line x1="{left}" y1="{py(0):.1f}" x2="{left + pw}" y2="{py(0):.1f}" class="zero"/>')
    if diagonal:
        a, b = xt[0], xt[-1]
        out.append(f'<line x1="{px(a):.1f}" y1="{py(a):.1f}" x2="{px(b):.1f}" y2="{py(b):.1f}" class="diag"/>')
    for x, y, tip, hot in sorted(pts, key=lambda p: p[3]):  # highlighted points drawn last, on top
        cls = "pt hot" if hot else "pt"
        out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="{4 if hot else 3}" class="{cls}">')
        out.append(f"<title>{escape(tip)}</title></circle>")
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 8}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(
        f'<text x="14" y="{top + ph / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + ph / 2:.1f})">{escape(ylabel)}</text>'
    )
    out.append("</svg>")
    return "\n".join(out)


def _num(t: float) -> str:
    if t == int(t) and abs(t) < 1e6:
        return str(int(t))
    return f"{t:.3g}"
