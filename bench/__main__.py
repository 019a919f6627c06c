"""Run the whole benchmark suite and write the report: `python -m bench` from the repository root.

Runs pytest-benchmark on every bench/test_*.py (test_graph.py included when present) with
`--benchmark-json=bench/results/benchmarks.json`, then writes bench/results/summary.json and
bench/results/ratios.md (see bench/ratios.py). Extra arguments go to pytest, e.g.
`python -m bench -k "not ig"`. `--report-only` rewrites the report from the last JSON; `--threads N` sets
torch's thread count (on a machine shared with other jobs, 1 thread gives steadier ratios than
oversubscribed cores).

Benchmarks are not unit tests: `python -m pytest` (testpaths = tests/) never collects them, and nothing
here asserts a time. Run on an idle machine; the suite takes a few minutes on 2 cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench import ratios as report

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    raw = report.RESULTS / "benchmarks.json"
    env = dict(os.environ)
    if "--threads" in argv:
        i = argv.index("--threads")
        env["BENCH_THREADS"] = argv[i + 1]
        argv = argv[:i] + argv[i + 2 :]
    if "--report-only" not in argv:
        report.RESULTS.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "bench",
            "-p",
            "no:cacheprovider",
            f"--benchmark-json={raw}",
            "--benchmark-columns=mean,median,stddev,rounds",
            "--benchmark-sort=name",
            *argv,
        ]
        print("$", " ".join(cmd), flush=True)
        rc = subprocess.call(cmd, cwd=ROOT, env=env)
        if rc != 0:
            print(f"pytest exited with {rc}; the report covers the benchmarks that ran", file=sys.stderr)
        if not raw.exists():
            return rc or 1
    else:
        rc = 0
    report.main([str(raw), "--out", str(report.RESULTS)])
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
