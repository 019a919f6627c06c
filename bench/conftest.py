"""Shared fixtures, and the ratio table printed at the end of a run (defined once, in bench/ratios.py).

Run everything: `python -m bench` (writes bench/results/). One file: `python -m pytest bench/test_sae.py`.
Every benchmark in bench/test_*.py is picked up by the report by its name; no registration is needed.
"""

from __future__ import annotations

import os
import statistics
import time

import pytest
import torch

from attribution import LogitDiff, attribute, compute, load_model
from attribution.saes import build
from bench import ratios as report

LOAD_AT_START = os.getloadavg()
REFERENCE_ROUNDS = 5
PROMPT = "Fact: The capital city of the state where Kobe Bryant played basketball for the Los Angeles Lakers is"


def pytest_configure(config):
    if os.environ.get("BENCH_THREADS"):  # `python -m bench --threads N`
        torch.set_num_threads(int(os.environ["BENCH_THREADS"]))


def pytest_benchmark_update_machine_info(config, machine_info):
    """What a reader needs to judge the timings: torch's threads, how busy the machine was, and what it
    computes in: bf16 is ~3.5x faster than fp32 with AMX and ~200x slower on AVX2-only CPUs, and
    get_cpu_capability() ("AVX512") does not tell which."""
    machine_info.update(
        torch=torch.__version__,
        torch_threads=torch.get_num_threads(),
        load_average_start=LOAD_AT_START,
        load_average_end=os.getloadavg(),
        **precision_info(),
    )


def precision_info() -> dict:
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_native": compute.native_bf16("cpu"),
        "bf16_evidence": compute.bf16_evidence("cpu"),
        "compute_dtype": compute.dtype_name(compute.compute_dtype("cpu")),
        "compute_dtype_override": os.environ.get(compute.ENV) or None,
        "model_dtype": "float32",  # load_model()'s default for the model fixture
    }


@pytest.fixture(autouse=True)
def _dtype_used(request):
    """extra_info["dtype"]: the dtype a benchmark's figure was measured in (its `dtype` parameter; training's
    matmuls in the chosen compute dtype; otherwise the float32 model). Set before the test runs: after it,
    the benchmark fixture is already torn down."""
    if "benchmark" in request.fixturenames:
        param = getattr(getattr(request.node, "callspec", None), "params", {}).get("dtype")
        if param is not None:
            used = compute.dtype_name(param)
        elif "train" in request.node.name:
            used = f"{compute.dtype_name(compute.compute_dtype('cpu'))} matmuls"
        else:
            used = "float32"
        request.getfixturevalue("benchmark").extra_info.setdefault("dtype", used)
    yield


@pytest.fixture(scope="session")
def model():
    return load_model()


@pytest.fixture(scope="session")
def prompt(model):
    assert len(model.encode(PROMPT)) == 20
    return PROMPT


@pytest.fixture(scope="session")
def metric(model):
    return LogitDiff(model, " Sacramento", " Albany")


@pytest.fixture(scope="session")
def saes(model):
    """TopK SAEs (8,192 features, k = 32) at every residual layer: the shapes and sparsity of real ones."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for layer in range(model.n_layers):
        sae = build("topk", model.d_model, 8192, f"resid_post.{layer}", k=32)
        with torch.no_grad():
            sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(8192, model.d_model, generator=g), dim=-1))
            sae.W_enc.copy_(sae.W_dec.T)
        out[sae.hook] = sae.requires_grad_(False)
    return out


@pytest.fixture(autouse=True)
def _reference_forward(request):
    """Plain forwards timed just before and just after each benchmark that uses the model, stored as
    extra_info["forward_ref_s"] (their median): on a machine whose load drifts during the run, ratios
    against this local reference stay honest where ratios of medians taken minutes apart do not."""
    if "benchmark" not in request.fixturenames or "model" not in request.fixturenames:
        yield
        return
    model, bench = request.getfixturevalue("model"), request.getfixturevalue("benchmark")
    ids = model.tokenize(PROMPT).input_ids
    times = []

    @torch.no_grad()
    def forwards():
        for _ in range(REFERENCE_ROUNDS):
            start = time.perf_counter()
            model.hf(ids)
            times.append(time.perf_counter() - start)

    forwards()
    yield
    forwards()
    bench.extra_info["forward_ref_s"] = statistics.median(times)


@pytest.fixture(scope="session")
def top_nodes(model, saes, prompt, metric):
    """The 256 nodes with the largest grad_x_act attributions (features and error nodes, many layers)."""
    return attribute(model, saes, prompt, metric).top(256)


@pytest.fixture
def record():
    """No longer needed (the report reads every benchmark from pytest-benchmark); kept for older files."""
    return lambda: None


def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)  # pytest-benchmark's own session object
    benches = [b for b in getattr(session, "benchmarks", []) if not b.has_error and b.stats]
    if not benches:
        return
    entries = [b.as_dict(include_data=False) for b in benches]
    terminalreporter.write_line(report.terminal(report.summarize(entries, machine=precision_info())))
