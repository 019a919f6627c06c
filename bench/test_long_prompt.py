"""The long-prompt measurements (bench/long_prompt.py) as pytest-benchmark entries, one round each.

Opt-in (~30 min on the 2-core CPU): `BENCH_LONG_PROMPT=1 python -m bench -k long_prompt`. Each operation
runs in its own subprocess, as `python -m bench.long_prompt` does; the timed figure includes loading the
model and building the SAEs there, while extra_info holds the operation's own seconds and the subprocess's
peak resident set. The JSON artefact is bench/results/long_prompt.json, written by the script.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from bench import long_prompt

pytestmark = pytest.mark.skipif(
    not os.environ.get("BENCH_LONG_PROMPT"), reason="~30 min: set BENCH_LONG_PROMPT=1 to run the long-prompt bench"
)


@pytest.fixture(scope="module")
def tmp():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


@pytest.mark.parametrize("op", long_prompt.OPS)
def test_long_prompt(benchmark, tmp, op):
    nodes_file = tmp / "nodes.json"
    if op == "ablate" and not nodes_file.exists():
        long_prompt.run_child("attribute", [], str(tmp), nodes_file)
    result = benchmark.pedantic(lambda: long_prompt.run_child(op, [], str(tmp), nodes_file), rounds=1)
    assert result is not None, f"{op} failed"
    result.pop("top_nodes", None)
    benchmark.extra_info.update(
        op_s=result["seconds"],
        peak_rss_gib=result["peak_gib"],
        tokens=result["tokens"],
        note=f"{result['what']}; {result['seconds']} s, peak {result['peak_gib']} GiB (own process)",
    )
