"""Tiny random models of each supported family, and random SAEs, for exactness tests.

The whole run uses a temporary cache ($ATTRIBUTION_CACHE is pointed at a fresh folder before any test runs),
so tests never read or write the user's cache; the one exception is the converted default model, which is
linked read-only into the temporary cache when the user's cache already holds it (otherwise it is converted
into the temporary cache, ~40 s). The run fails if anything new appears under the user's cache.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from attribution import Model, load_model
from attribution.models.hooks import family_of
from attribution.models.tiny import FAMILIES, PROMPTS, TINY, WORDS, D, tiny_hf, tiny_tokenizer  # noqa: F401
from attribution.saes import build

REAL_CACHE = Path(os.environ.get("ATTRIBUTION_CACHE") or Path.home() / ".cache" / "attribution")
_DEFAULT_CONVERTED = Path("models") / "gemma-3-270m"


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of everything under root (empty when root does not exist)."""
    if not root.exists():
        return {}
    out = {}
    for p in root.rglob("*"):
        try:
            st = p.lstat()
        except FileNotFoundError:  # removed while we walked
            continue
        out[str(p.relative_to(root))] = (st.st_size if p.is_file() else 0, st.st_mtime_ns if p.is_file() else 0)
    return out


@pytest.fixture(autouse=True)
def _small_default_corpus(monkeypatch):
    """Default SAEs that a test builds (for tiny models: the real model's are never trained in tests) learn
    from a few thousand tokens the model samples itself: no network, seconds instead of a 2M-token stream."""
    import dataclasses

    import attribution.training.defaults as defaults

    specs, quick = defaults.default_specs, defaults.quick_spec
    monkeypatch.setattr(defaults, "CORPUS", "sampled")
    monkeypatch.setattr(
        defaults, "default_specs", lambda m: {h: dataclasses.replace(s, tokens=12_000) for h, s in specs(m).items()}
    )
    monkeypatch.setattr(defaults, "quick_spec", lambda m: dataclasses.replace(quick(m), tokens=6_000))


def pytest_configure(config):
    tmp = Path(tempfile.mkdtemp(prefix="attribution-test-cache-"))
    converted = REAL_CACHE / _DEFAULT_CONVERTED
    if (converted / ".complete").exists():
        (tmp / "models").mkdir()
        (tmp / _DEFAULT_CONVERTED).symlink_to(converted, target_is_directory=True)
    config._attribution_cache = (tmp, _snapshot(REAL_CACHE))
    os.environ["ATTRIBUTION_CACHE"] = str(tmp)


def pytest_sessionfinish(session, exitstatus):
    state = getattr(session.config, "_attribution_cache", None)
    if state is None:
        return
    tmp, before = state
    shutil.rmtree(tmp, ignore_errors=True)
    after = _snapshot(REAL_CACHE)
    changed = sorted(p for p, v in after.items() if before.get(p) != v)
    if changed:
        rep = session.config.pluginmanager.get_plugin("terminalreporter")
        msg = f"the test run wrote into the user's cache {REAL_CACHE}: " + ", ".join(changed[:10])
        if rep is not None:
            rep.ensure_newline()
            rep.write_sep("=", f"FAILED: {msg}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def tiny_model(family: str = "gemma3", dtype=torch.float64, seed: int = 0, linear_head: bool = False) -> Model:
    """A tiny random model; linear_head replaces the final norm by the identity, so everything after the
    last block is linear (attribution at resid_post of the last layer is then exact)."""
    hf = tiny_hf(family, seed)
    if linear_head:
        path = family_of(hf.config.model_type).final_norm.split(".")
        owner = hf
        for p in path[:-1]:
            owner = getattr(owner, p)
        setattr(owner, path[-1], torch.nn.Identity())
    return load_model(hf, dtype=dtype)


def random_sae(model: Model, hook: str, d_sae: int = 64, arch: str = "relu", seed: int = 0, **kw):
    """A random SAE whose features fire sparsely on the tiny models' activations."""
    g = torch.Generator().manual_seed(seed)
    d = model.d_model
    sae = build(arch, d, d_sae, hook, dtype=model.dtype, **kw)
    with torch.no_grad():
        W = torch.randn(d_sae, d, generator=g, dtype=model.dtype)
        sae.W_dec.copy_(W / W.norm(dim=-1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_enc.copy_(-3.0 * torch.rand(d_sae, generator=g, dtype=model.dtype))
        sae.b_dec.copy_(0.1 * torch.randn(d, generator=g, dtype=model.dtype))
        if arch == "jumprelu":
            sae.threshold.copy_(0.3 * torch.rand(d_sae, generator=g, dtype=model.dtype))
    return sae.requires_grad_(False)


ARCHS = {"relu": {}, "jumprelu": {}, "topk": {"k": 6}}


def random_transcoders(model: Model, arch: str = "relu", skip: bool = True, reads: str = "resid_mid", seed: int = 0):
    """One random transcoder per layer (reads -> mlp_out.L), features firing sparsely as random_sae's, with a
    random skip path."""
    out = {}
    g = torch.Generator().manual_seed(seed + 100)
    for L in range(model.n_layers):
        tc = random_sae(model, f"{reads}.{L}", 48, arch, seed=seed + L, target=f"mlp_out.{L}", skip=skip, **ARCHS[arch])
        if skip:
            with torch.no_grad():
                tc.W_skip.copy_(0.2 * torch.randn(model.d_model, model.d_model, generator=g, dtype=model.dtype))
        out[tc.hook] = tc
    return out


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def tiny_windows():
    """A float32 tiny gemma3 and 64 random 16-token windows starting with <bos>: text for feature indexes."""
    model = tiny_model("gemma3", dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, model.tokenizer.vocab_size, (64, 16), generator=g)
    tokens[:, 0] = model.tokenizer.bos_token_id
    return model, tokens


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on shared cores OpenMP threads spin waiting on each other
    (10x slower under load); restored afterwards for the other test modules. A module opts in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def default_model():
    return load_model()
