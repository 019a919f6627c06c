"""SAE speed: encode/decode of the middle-layer shape, and training throughput of `attribution.training.fit`.

Shape: TopK, d_in 640 (gemma-3-270m's width), d_sae 8,192, k 32; 4,096 tokens a batch. Inputs are the
default model's cached layer-9 activations when `train_sae` has cached them, else synthetic ones (timings
depend on shapes, not values; bench/data.py says which was used, and so does each benchmark's extra_info).
"""

import pytest
import torch

from attribution.compute import compute_dtype
from attribution.saes import build
from attribution.splice import decompose
from attribution.training import TrainConfig, fit
from bench.data import BATCH, D_IN, D_SAE, HOOK, K, activations

TRAIN_STEPS = 12


@pytest.fixture(scope="module")
def acts():
    return activations(TRAIN_STEPS * BATCH)


def per_second(benchmark, n: int) -> float | None:
    """n / the median time (None under --benchmark-disable, which runs each benchmark once, untimed)."""
    return None if benchmark.stats is None else n / benchmark.stats.stats.median


def random_sae(dtype):
    g = torch.Generator().manual_seed(0)
    sae = build("topk", D_IN, D_SAE, HOOK, k=K, apply_b_dec_to_input=True)
    with torch.no_grad():
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(D_SAE, D_IN, generator=g), dim=-1))
        sae.W_enc.copy_(sae.W_dec.T / 1000)  # residual norms are ~5,000: pre-activations of order 1
    return sae.requires_grad_(False).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_sae_encode_decode(benchmark, acts, dtype):
    """`sae(x)`: encode, TopK, and the dense decode, on 4,096 tokens."""
    x, src = acts
    x = x[:BATCH].to(dtype)
    sae = random_sae(dtype)
    with torch.no_grad():
        x_hat, f = benchmark.pedantic(lambda: sae(x), rounds=10, warmup_rounds=2)
    assert x_hat.shape == x.shape and int((f != 0).sum(-1).max()) <= K
    benchmark.extra_info.update(tokens_per_s=per_second(benchmark, BATCH), inputs=src)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_sae_decompose(benchmark, acts, dtype):
    """What splicing runs at each hook: features and error term, x = decode(f) + e, with the sparse decode
    (only the k active rows of W_dec per token)."""
    x, src = acts
    x = x[:BATCH].to(dtype)
    sae = random_sae(dtype)
    d = benchmark.pedantic(lambda: decompose(sae, x), rounds=10, warmup_rounds=2)
    assert d.error.shape == x.shape
    benchmark.extra_info.update(tokens_per_s=per_second(benchmark, BATCH), inputs=src)


@pytest.mark.parametrize("aux", [False, True], ids=["steady", "auxk_every_step"])
def test_sae_train_topk(benchmark, acts, aux):
    """`fit` on the middle-layer shape, matmuls in the chosen compute dtype (bf16 where native, else fp32),
    batch 4,096, 12 steps a round.

    Without dead features the AuxK loss costs nothing (the first 10^6 tokens of any run); with_auxk counts
    every feature as dead from the start (auxk_every_step), so each step pays for the auxiliary loss.
    """
    x, src = acts
    cfg = TrainConfig(steps=TRAIN_STEPS, batch_size=BATCH, progress=False, dead_after_tokens=1 if aux else 10**6)

    def setup():
        return (build("topk", D_IN, D_SAE, HOOK, k=K, apply_b_dec_to_input=True), x.split(BATCH), cfg), {}

    log = benchmark.pedantic(fit, setup=setup, rounds=2, warmup_rounds=1)  # the first call is cold (allocations)
    assert log.l0[-1] <= K
    benchmark.extra_info.update(
        dense_flop=6 * D_IN * D_SAE * TRAIN_STEPS * BATCH,  # encoder forward + 2 backward products, dense
        tokens_per_s=per_second(benchmark, TRAIN_STEPS * BATCH),
        steps=TRAIN_STEPS,
        batch_size=BATCH,
        inputs=src,
        final_explained_variance=log.explained_variance[-1],
        dead_fraction=log.dead_fraction[-1],
    )


def test_matmul_peak(benchmark):
    """The machine's matmul peak in the dtype `fit` multiplies in (bfloat16 where native, else float32): one
    4,096 x 4,096 x 4,096 product. report.py's fit_vs_peak divides `fit`'s FLOP/s by it."""
    dtype = compute_dtype("cpu")
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(4096, 4096, generator=g).to(dtype) for _ in range(2))
    benchmark.pedantic(lambda: a @ b, rounds=5, warmup_rounds=2)
    flop = 2 * 4096**3
    gflops = None if benchmark.stats is None else flop / benchmark.stats.stats.median / 1e9
    benchmark.extra_info.update(flop=flop, gflop_per_s=gflops, dtype=str(dtype).removeprefix("torch."))


@pytest.mark.parametrize("kind", ["per_layer", "clt"])
def test_transcoder_set_step(benchmark, kind):
    """One optimiser step of a whole model's transcoders on 1,024 tokens a layer (gemma-3-270m's shape: 18 layers,
    d 640, 4,096 features, k 32), in the compute dtype: the 18 per-layer transcoders' Fitter steps, or one
    cross-layer transcoder's (reach 4: each feature also writes the 3 next layers). Their ratio is what a CLT
    costs over the per-layer set at equal tokens (studies.clt_experiment trains both from one stream)."""
    from attribution.saes.clt import CrossLayerTranscoder
    from attribution.training.clt_fit import CLTFitter
    from attribution.training.trainer import Fitter

    layers, n = 18, 1024
    g = torch.Generator().manual_seed(0)
    xs, ts = (torch.randn(layers, n, D_IN, generator=g) for _ in range(2))
    cfg = TrainConfig(steps=100, batch_size=n, lr=1e-2, optimizer="signsgd", normalize="dim", progress=False)
    if kind == "clt":
        fitter = CLTFitter(CrossLayerTranscoder.create(layers, D_IN, 4096, reach=4, k=K), cfg)

        def step():
            fitter.step(xs, ts)
    else:
        tcs = [build("topk", D_IN, 4096, f"resid_mid.{L}", k=K, target=f"mlp_out.{L}", skip=True) for L in range(18)]
        fitters = [Fitter(tc, cfg) for tc in tcs]

        def step():
            for x, t, f in zip(xs, ts, fitters):
                f.step(x, t)

    step()  # the first step initialises (normalisation, optimiser state)
    benchmark.pedantic(step, rounds=3, warmup_rounds=1)
    benchmark.extra_info.update(tokens_per_s=per_second(benchmark, n), layers=layers, d_sae=4096, reach=4)
