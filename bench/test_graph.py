"""Graph construction on the default model: the 20-token Kobe prompt, random TopK SAEs (8,192 features,
k = 32) at the default graph layers resid_post 0, 2, 4, 6, 8, 9, 10, 12, 14, 16 (10 SAE layers).

Target (issue 4): <= 60 s on the 2-core CPU (bench/ratios.py applies it to every benchmark here). Peak
memory is reported in extra_info: the process's resident set sampled every 10 ms during the build (torch's
CPU allocations are invisible to tracemalloc), as the peak and as its rise over the resident set before.
The first (cold) build's rise includes paging in the model's memory-mapped weights (the full unembedding
alone is 670 MB); the second (warm) build's rise is the working memory of graph construction itself.
"""

from __future__ import annotations

import threading
import time

from graphs import build_graph, check

LAYERS = (0, 2, 4, 6, 8, 9, 10, 12, 14, 16)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class PeakRSS:
    """Samples the resident set in a background thread while the block runs."""

    def __enter__(self):
        self.before = self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb())
            time.sleep(0.01)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def test_build_graph_10_layers(benchmark, model, saes, prompt, metric):
    mine = {f"resid_post.{layer}": saes[f"resid_post.{layer}"] for layer in LAYERS}
    peaks = []

    def build():
        with PeakRSS() as rss:
            graph = build_graph(model, mine, prompt, metric, labels=False)
        peaks.append(rss)
        return graph

    graph = benchmark.pedantic(build, rounds=2, warmup_rounds=0)
    kinds = [x.kind for x in graph.full_nodes]
    assert kinds.count("feature") == 128 * len(LAYERS) and kinds.count("token") == 19
    prune_start = time.perf_counter()
    graph = graph.prune(0.8, 0.98, max_feature_nodes=60)
    prune_s = time.perf_counter() - prune_start
    check_start = time.perf_counter()
    result = check(model, mine, graph)
    benchmark.extra_info.update(
        target_s=60.0,
        sae_layers=len(LAYERS),
        nodes=len(kinds),
        edges=len(graph.src),
        peak_rss_mb=round(max(p.peak for p in peaks)),
        rss_rise_cold_mb=round(peaks[0].peak - peaks[0].before),
        rss_rise_warm_mb=round(peaks[-1].peak - peaks[-1].before),
        prune_s=round(prune_s, 3),
        check_s=round(time.perf_counter() - check_start, 3),
        note=f"{len(kinds)} candidate nodes, {len(graph.src)} edges; checked model metric {result.model:+.3f}",
    )
