"""Are two result files the same? Every number at the same JSON path, within a tolerance.

    python -m bench.same_numbers before/report.json after/report.json [--tol 1e-6] [--ignore timings,paths]

The refactor check: `report.json` of a case study before and after a change must agree number for number.
Timings and file paths differ between any two runs and are ignored by default; strings must match exactly.
Prints every difference (path, before, after) and exits 1 if there is one.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

IGNORE = ("timings", "paths", "seconds", "build_s", "wall_s")


def differences(a, b, tol: float, ignore: tuple[str, ...], path: str = "") -> list[str]:
    """Lines naming every place where `a` and `b` differ (numbers: |a - b| > tol * max(1, |a|))."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k in ignore:
                continue
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only in {'after' if k in b else 'before'}")
                continue
            out += differences(a[k], b[k], tol, ignore, f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items before, {len(b)} after"]
        return [line for i, (x, y) in enumerate(zip(a, b)) for line in differences(x, y, tol, ignore, f"{path}[{i}]")]
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        if math.isnan(a) and math.isnan(b):
            return []
        if abs(a - b) > tol * max(1.0, abs(a)):
            return [f"{path}: {a!r} -> {b!r} (diff {b - a:+.3g})"]
        return []
    return [] if a == b else [f"{path}: {a!r:.120} -> {b!r:.120}"]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--tol", type=float, default=1e-6, help="relative tolerance (absolute below 1; default 1e-6)")
    p.add_argument("--ignore", default=",".join(IGNORE), help="keys skipped at any depth (comma-separated)")
    args = p.parse_args(argv)
    with open(args.before) as f:
        a = json.load(f)
    with open(args.after) as f:
        b = json.load(f)
    diff = differences(a, b, args.tol, tuple(k for k in args.ignore.split(",") if k))
    for line in diff:
        print(line)
    print(f"{len(diff)} difference(s) beyond {args.tol:g} between {args.before} and {args.after}")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
