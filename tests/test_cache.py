"""Caches that cannot lie: keys are fingerprints of what a model or SAE computes, writes are atomic and locked,
corrupt or half-written entries are never read back."""

import copy
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import attribution.training.defaults as defaults
from attribution import CacheError, default_saes, feature_index
from attribution.cache import atomic_write, model_fingerprint, sae_fingerprint, tensor_digest
from attribution.training.activation_cache import cached_activations
from attribution.training.corpus import sample_tokens
from tests.conftest import random_sae, tiny_model

ROOT = Path(__file__).resolve().parents[1]
CORPUS = {"n_tokens": 90, "seq_len": 16, "batch_size": 8, "progress": False}
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("ATTRIBUTION_CACHE", str(root))
    return root


@pytest.fixture(scope="module")
def models():
    """Two tiny gemma3 models of one architecture, with different weights."""
    return tiny_model("gemma3", dtype=torch.float32), tiny_model("gemma3", dtype=torch.float32, seed=1)


def _tokens(model, n=32, seq=16):
    ids = torch.randint(4, model.tokenizer.vocab_size, (n, seq), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = model.tokenizer.bos_token_id
    return ids


def test_fingerprints_follow_the_weights(models):
    a, b = models
    assert model_fingerprint(a) == model_fingerprint(tiny_model("gemma3", dtype=torch.float32))
    assert model_fingerprint(a) != model_fingerprint(b)  # same architecture, other weights
    assert model_fingerprint(a).startswith("gemma3_text-3x32-")
    sae = random_sae(a, "resid_post.1", d_sae=48, arch="topk", k=6)
    other_k = random_sae(a, "resid_post.1", d_sae=48, arch="topk", k=5)
    assert len({sae_fingerprint(sae), sae_fingerprint(other_k), sae_fingerprint(copy.deepcopy(sae).double())}) == 3
    before = sae_fingerprint(sae)
    with torch.no_grad():
        sae.b_enc[0] += 1.0  # an in-place edit: the memoised hash is recomputed
    assert sae_fingerprint(sae) != before


def test_models_with_other_weights_get_other_entries(cache, models):
    a, b = models
    for m in models:
        sample_tokens(m, **CORPUS)
        cached_activations(m, ["resid_post.1"], _tokens(m), "t", progress=False)
    assert len(list(cache.glob("corpus/*/*.safetensors"))) == 2
    assert len([p for p in cache.glob("activations/*/*") if p.is_dir()]) == 2
    assert defaults.saes_dir(a) != defaults.saes_dir(b)


def test_an_index_for_another_model_or_k_is_not_reused(cache, models, monkeypatch):
    index = sys.modules["attribution.explain.index"]
    a, b = models
    tokens = _tokens(a)
    built = []
    real = index.build
    monkeypatch.setattr(index, "build", lambda m, saes, *x: built.append(1) or real(m, saes, *x))
    sae = random_sae(a, "resid_post.1", d_sae=48, arch="topk", k=6)
    for m, s in [(a, sae), (b, sae), (a, random_sae(a, "resid_post.1", d_sae=48, arch="topk", k=5)), (a, sae)]:
        feature_index(m, s, tokens=tokens, progress=False)
    assert len(built) == 3  # the last call loads the first index
    assert len([p for p in cache.glob("index/*/*") if p.is_dir()]) == 3


def test_truncated_entries_are_rebuilt_with_a_warning(cache, models):
    a, _ = models
    tokens = sample_tokens(a, **CORPUS).clone()  # a loaded tensor may map the file we are about to truncate
    (path,) = cache.glob("corpus/*/*.safetensors")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(UserWarning, match=f"{path.name}.*truncated or corrupt.*Rebuilding"):
        assert torch.equal(sample_tokens(a, **CORPUS), tokens)
    assert torch.equal(sample_tokens(a, **CORPUS), tokens)  # whole again: no warning

    acts = cached_activations(a, ["resid_post.1"], _tokens(a), "t", progress=False)
    x = acts.tensor("resid_post.1").clone()
    shard = acts.path / acts.shards[0]
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.warns(UserWarning, match=f"{acts.path.name}.*shard.*truncated.*Collecting it again"):
        again = cached_activations(a, ["resid_post.1"], _tokens(a), "t", progress=False)
    assert torch.equal(again.tensor("resid_post.1"), x)

    sae = random_sae(a, "resid_post.1", d_sae=48, arch="topk", k=6)
    idx = feature_index(a, sae, tokens=_tokens(a), progress=False)
    nb_cos = idx.t["nb_cos"].clone()
    save_file({k: v.clone() for k, v in idx.t.items() if k != "nb_cos"}, str(idx.path / "index.safetensors"))
    with pytest.warns(UserWarning, match=r"missing tensors \['nb_cos'\]"):
        again = feature_index(a, sae, tokens=_tokens(a), progress=False)
    assert torch.equal(again.t["nb_cos"], nb_cos)


def test_leftover_temporaries_are_never_read_and_are_removed(cache):
    target = cache / "x" / "entry"
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        (tmp / "half").write_text("a killed or failed writer")
        raise RuntimeError
    assert not target.exists() and list(target.parent.iterdir()) == [target.parent / "entry.lock"]
    dead = target.with_name("entry.tmp-dead")
    dead.mkdir()
    (dead / "half").write_text("left by a killed process")
    with atomic_write(target) as tmp:
        (tmp / "whole").write_text("ok")
    assert sorted(p.name for p in target.parent.iterdir()) == ["entry", "entry.lock"]
    assert [p.name for p in target.iterdir()] == ["whole"]


def test_a_linked_entry_is_replaced_not_written_through(cache, tmp_path):
    """As tests/conftest.py links the user's converted model: rebuilding the entry never touches the original."""
    original = tmp_path / "elsewhere"
    original.mkdir()
    (original / "weights").write_text("the user's")
    target = cache / "models" / "m"
    target.parent.mkdir(parents=True)
    target.symlink_to(original, target_is_directory=True)
    with atomic_write(target) as tmp:
        (tmp / "weights").write_text("rebuilt")
    assert not target.is_symlink() and (target / "weights").read_text() == "rebuilt"
    assert (original / "weights").read_text() == "the user's"


def _child(script: str, cache: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "ATTRIBUTION_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    prelude = "import sys, time, json, torch\nfrom pathlib import Path\ntorch.set_num_threads(1)\n"
    return subprocess.Popen(
        [sys.executable, "-c", prelude + script, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


KILLED_WRITER = """
import attribution.training.corpus as corpus
from tests.conftest import tiny_model
real = corpus.save_file
def half_then_hang(tensors, path):
    real(tensors, path)
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    Path(sys.argv[1]).write_text(path)
    time.sleep(120)
corpus.save_file = half_then_hang
corpus.sample_tokens(tiny_model("gemma3", dtype=torch.float32), 90, seq_len=16, batch_size=8, progress=False)
"""


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the child exited early: {proc.communicate()[1][-2000:]}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError("the child did not reach the write in time")
        time.sleep(0.05)


def test_a_writer_killed_mid_write_leaves_nothing_that_is_read(cache, tmp_path, models):
    ready = tmp_path / "ready"
    proc = _child(KILLED_WRITER, cache, str(ready))
    _wait_for(ready, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(cache.glob("corpus/*/*.safetensors")) == []  # the half file only ever had a temporary name
    (half,) = cache.glob("corpus/*/*.tmp-*")
    assert str(half) == ready.read_text()
    a, _ = models
    tokens = sample_tokens(a, **CORPUS)  # the dead writer's lock is free; the entry is built afresh
    assert torch.equal(tokens, sample_tokens(a, **{**CORPUS, "cache": False}))
    assert not half.exists() and len(list(cache.glob("corpus/*/*.safetensors"))) == 1


TINY_DEFAULTS = """
import dataclasses
import attribution.training.defaults as defaults
from attribution.cache import tensor_digest
from tests.conftest import tiny_model
defaults.CORPUS, defaults.SEQ_LEN, defaults.BATCH_WINDOWS = "sampled", 16, 8
real_specs, real_train = defaults.default_specs, defaults._train
defaults.default_specs = lambda m: {
    h: dataclasses.replace(s, tokens=2400, lr=3e-3) for h, s in real_specs(m).items()
}
def logged_train(model, specs, *a, **k):
    with open(sys.argv[1], "a") as f:
        f.write("".join(h + "\\n" for h in specs))
    return real_train(model, specs, *a, **k)
defaults._train = logged_train
model = tiny_model("gemma3", dtype=torch.float32)
Path(sys.argv[2]).touch()  # a barrier: start together, so one waits on the other's lock
while not all(Path(p).exists() for p in sys.argv[3:]):
    time.sleep(0.01)
saes = defaults.default_saes(model, progress=False)
print(json.dumps({h: {n: tensor_digest(t) for n, t in s.state_dict().items()} for h, s in saes.items()}))
"""


def test_two_processes_build_one_default_sae_once(cache, tmp_path, monkeypatch):
    log, ready = tmp_path / "trained.log", [tmp_path / "ready0", tmp_path / "ready1"]
    procs = [_child(TINY_DEFAULTS, cache, str(log), str(r), *map(str, ready)) for r in ready]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    weights = [json.loads(out.splitlines()[-1]) for out, _ in outs]
    assert weights[0] == weights[1] and list(weights[0]) == ["resid_post.0", "resid_post.1"]
    assert sorted(log.read_text().split()) == ["resid_post.0", "resid_post.1"]  # each trained once, in all

    # the same recipe in this process finds them; a truncated one is reported by name, then rebuilt
    monkeypatch.setattr(defaults, "CORPUS", "sampled")
    monkeypatch.setattr(defaults, "SEQ_LEN", 16)
    monkeypatch.setattr(defaults, "BATCH_WINDOWS", 8)
    real = defaults.default_specs
    quick = {"tokens": 2400, "lr": 3e-3}
    monkeypatch.setattr(defaults, "default_specs", lambda m: {h: replace(s, **quick) for h, s in real(m).items()})
    model = tiny_model("gemma3", dtype=torch.float32)
    saes = default_saes(model, train=False)
    assert {h: {n: tensor_digest(t) for n, t in s.state_dict().items()} for h, s in saes.items()} == weights[0]
    folder = defaults.saes_dir(model) / defaults.default_specs(model)["resid_post.1"].folder
    weights_file = folder / "sae_weights.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:1000])
    with pytest.raises(CacheError, match=f"{folder.name}.*truncated or corrupt.*rm -r"):
        default_saes(model, ["resid_post.1"], train=False)
    with pytest.warns(UserWarning, match=f"{folder.name}.*Rebuilding"):
        rebuilt = default_saes(model, ["resid_post.1"], progress=False)["resid_post.1"]
    torch.testing.assert_close(rebuilt.W_dec, saes["resid_post.1"].W_dec)  # the same recipe on the same data
