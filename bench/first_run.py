"""How long the README's first command takes: cold (an empty cache) and warm (run again).

    python -m bench.first_run [--dtype float32] [--out bench/results/first_run.json]

Runs `python -m cases emotion` twice in subprocesses with $ATTRIBUTION_CACHE pointing at a new empty folder:
the cold run converts the default model, fetches the real text, builds the quick dictionary and its feature
index; the warm run finds them all. The pip install is not timed (it depends on the network). --dtype
float32 forces float32 compute (what a CPU without native bfloat16 runs in; on an AMX CPU this is not an
AVX2-only machine's speed, only its arithmetic). Writes the timings with the machine they were measured on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
COMMAND = [sys.executable, "-m", "cases", "emotion", "--quiet"]


def timed(env: dict, out: Path) -> dict:
    t = time.perf_counter()
    run = subprocess.run([*COMMAND, "--out", str(out)], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if run.returncode != 0:
        raise SystemExit(f"`{' '.join(COMMAND)}` failed ({run.returncode}):\n{run.stderr[-3000:]}")
    return {"seconds": seconds, "stdout": run.stdout.splitlines(), "stderr_tail": run.stderr.splitlines()[-5:]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", default=None, help="force this compute dtype ($ATTRIBUTION_COMPUTE_DTYPE)")
    p.add_argument("--out", default=None, help="result file (default: bench/results/first_run[_DTYPE].json)")
    args = p.parse_args(argv)
    from attribution.compute import ENV, machine

    with tempfile.TemporaryDirectory(prefix="first-run-") as tmp:
        env = {**os.environ, "ATTRIBUTION_CACHE": str(Path(tmp) / "cache")}
        if args.dtype:
            env[ENV] = args.dtype
        cold = timed(env, Path(tmp) / "cold")
        warm = timed(env, Path(tmp) / "warm")
    if args.dtype:
        os.environ[ENV] = args.dtype  # so that machine() reports the dtype the runs computed in
    result = {
        "command": "python -m cases emotion",
        "cold_s": cold["seconds"],
        "warm_s": warm["seconds"],
        "machine": machine(),
        "cold": cold,
        "warm": warm,
    }
    out = Path(args.out or RESULTS / f"first_run{'_' + args.dtype if args.dtype else ''}.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"cold {cold['seconds'] / 60:.1f} min, warm {warm['seconds']:.0f} s ({result['machine']['cpu_kind']}, "
          f"compute {result['machine']['compute_dtype']}); written to {out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
