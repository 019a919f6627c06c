"""Activation caching: exact contents, <bos> left out, resumable after an interruption, trainable."""

import pytest
import torch

from attribution import trace
from attribution.models.model import Batch
from attribution.saes import build
from attribution.training import TrainConfig, fit
from attribution.training.activation_cache import collect, open_cache
from tests.conftest import tiny_model

HOOKS = ["resid_post.2", "resid_post.0"]


def token_batches(model, n=6, seq=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        ids = torch.randint(4, model.tokenizer.vocab_size, (3, seq), generator=g)
        ids[:, 0] = model.tokenizer.bos_token_id
        yield ids


def test_cache_holds_exact_activations_without_bos(tmp_path):
    m = tiny_model("gemma3", dtype=torch.float32)
    cache = collect(
        m, HOOKS, token_batches(m), tmp_path / "c", shard_tokens=40, dtype=torch.float32, outlier=1e9, progress=False
    )
    assert cache.hooks == ["resid_post.0", "resid_post.2"]  # forward order
    assert len(cache.shards) > 1 and cache.n_tokens == 6 * 3 * 8  # every token but <bos>
    expected = {h: [] for h in HOOKS}
    for ids in token_batches(m):
        acts = trace(m, Batch.from_ids(ids), capture=HOOKS).acts
        for h in HOOKS:
            expected[h].append(acts[h][:, 1:].reshape(-1, m.d_model))
    for h in HOOKS:
        torch.testing.assert_close(cache.tensor(h), torch.cat(expected[h]))
    assert open_cache(tmp_path / "c").n_tokens == cache.n_tokens


def test_resumes_after_interruption(tmp_path):
    m = tiny_model("llama", dtype=torch.float32)

    def interrupted():
        for i, ids in enumerate(token_batches(m)):
            if i == 4:
                raise KeyboardInterrupt
            yield ids

    with pytest.raises(KeyboardInterrupt):
        collect(m, HOOKS, interrupted(), tmp_path / "r", shard_tokens=20, dtype=torch.float32, progress=False)
    assert open_cache(tmp_path / "r") is None  # not complete
    resumed = collect(m, HOOKS, token_batches(m), tmp_path / "r", shard_tokens=20, dtype=torch.float32, progress=False)
    fresh = collect(m, HOOKS, token_batches(m), tmp_path / "f", shard_tokens=20, dtype=torch.float32, progress=False)
    for h in HOOKS:
        torch.testing.assert_close(resumed.tensor(h), fresh.tensor(h))


def test_bfloat16_cache_trains_an_sae(tmp_path):
    m = tiny_model("gpt2", dtype=torch.float32)
    cache = collect(m, ["resid_post.1"], token_batches(m, n=20), tmp_path / "b", progress=False)
    x = cache.tensor("resid_post.1")
    assert x.dtype == torch.bfloat16 and x.shape == (20 * 3 * 8, m.d_model)
    sae = build("topk", m.d_model, 64, "resid_post.1", k=4)
    log = fit(sae, cache.batches("resid_post.1"), TrainConfig(steps=60, batch_size=128, lr=3e-3, progress=False))
    assert log.explained_variance[-1] > log.explained_variance[0]
