"""SAE architectures, the on-disk format (ours and SAELens), and bad-file errors."""

import json

import pytest
import torch
from safetensors.torch import save_file

from attribution import SAEError, load_sae, save_sae
from attribution.saes import REGISTRY, Options, TopKOptions, build
from tests.conftest import random_sae, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("gemma3")


@pytest.mark.parametrize("arch", sorted(REGISTRY))
def test_round_trip(model, tmp_path, arch):
    kw = {"k": 5} if arch == "topk" else {}
    sae = random_sae(model, "resid_post.1", arch=arch, **kw)
    sae.meta = {"explained_variance": 0.9}
    loaded = load_sae(save_sae(sae, tmp_path / arch), model=model)
    assert type(loaded) is type(sae) and loaded.hook == "resid_post.1" and loaded.meta == sae.meta
    x = torch.randn(7, model.d_model, dtype=model.dtype) * 5
    torch.testing.assert_close(loaded.encode(x), sae.encode(x))
    torch.testing.assert_close(loaded.decode(sae.encode(x)), sae.decode(sae.encode(x)))
    cfg = json.loads((tmp_path / arch / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post"  # readable by SAELens too


def test_topk_respects_k(model):
    sae = random_sae(model, "resid_post.0", arch="topk", k=3)
    f = sae.encode(torch.randn(50, model.d_model, dtype=model.dtype) * 10)
    assert ((f != 0).sum(-1) <= 3).all() and ((f != 0).sum(-1) == 3).any()
    with pytest.raises(SAEError, match="k <= d_sae"):
        build("topk", 4, 8, "resid_post.0", k=9)


def test_architecture_options_are_typed():
    sae = build("topk", 8, 16, "resid_post.0", options=TopKOptions(k=3))
    assert sae.k == 3 and sae.options == TopKOptions(3) and sae.extra_config() == {"k": 3}
    assert build("topk", 8, 16, "resid_post.0", k=4).options == TopKOptions(4)  # by name, as before
    assert build("relu", 8, 16, "resid_post.0").extra_config() == {}
    with pytest.raises(SAEError, match=r"relu SAE has no option \['k'\]"):
        build("relu", 8, 16, "resid_post.0", k=3)
    with pytest.raises(SAEError, match="takes TopKOptions"):
        build("topk", 8, 16, "resid_post.0", options=Options())
    with pytest.raises(SAEError, match="not both"):
        build("topk", 8, 16, "resid_post.0", options=TopKOptions(3), k=3)


def test_jumprelu_threshold(model):
    sae = random_sae(model, "resid_post.0", arch="jumprelu")
    x = torch.randn(50, model.d_model, dtype=model.dtype) * 10
    pre, f = sae.pre_acts(x), sae.encode(x)
    assert torch.equal(f != 0, pre > sae.threshold)
    torch.testing.assert_close(f[f != 0], pre[f != 0])


def _saelens_dir(path, cfg, tensors):
    path.mkdir()
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(path / "sae_weights.safetensors"))
    return path


def _weights(d_in=32, d_sae=16, **extra):
    g = torch.Generator().manual_seed(1)
    return {
        "W_enc": torch.randn(d_in, d_sae, generator=g),
        "b_enc": torch.randn(d_sae, generator=g),
        "W_dec": torch.randn(d_sae, d_in, generator=g),
        "b_dec": torch.randn(d_in, generator=g),
        **extra,
    }


def test_loads_saelens_formats(tmp_path):
    v6 = {
        "architecture": "jumprelu",
        "d_in": 32,
        "d_sae": 16,
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "metadata": {"hook_name": "blocks.2.hook_resid_post"},
    }
    sae = load_sae(_saelens_dir(tmp_path / "v6", v6, _weights(threshold=torch.full((16,), 0.5))))
    assert sae.architecture == "jumprelu" and sae.hook == "resid_post.2" and sae.threshold[0] == 0.5
    legacy = {
        "d_in": 32,
        "d_sae": 16,
        "hook_name": "blocks.0.hook_mlp_out",
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 4},
        "apply_b_dec_to_input": True,
    }
    sae = load_sae(_saelens_dir(tmp_path / "legacy", legacy, _weights()))
    assert sae.architecture == "topk" and sae.k == 4 and sae.hook == "mlp_out.0" and sae.apply_b_dec_to_input
    x = torch.randn(3, 32)
    w = _weights()
    torch.testing.assert_close(sae.pre_acts(x), (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])


def test_bad_files_have_clear_errors(model, tmp_path):
    with pytest.raises(SAEError, match="does not exist"):
        load_sae(tmp_path / "nope")
    good = save_sae(random_sae(model, "resid_post.1"), tmp_path / "good")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "cfg.json").write_text((good / "cfg.json").read_text())
    with pytest.raises(SAEError, match=r"has no sae_weights\.safetensors"):
        load_sae(tmp_path / "noweights")
    (good / "sae_weights.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(SAEError, match="corrupt or truncated"):
        load_sae(good)
    nan = random_sae(model, "resid_post.1")
    nan.W_dec.data[3, 3] = float("nan")
    with pytest.raises(SAEError, match="W_dec contains NaN"):
        load_sae(save_sae(nan, tmp_path / "nan"))
    cfg = {
        "architecture": "standard",
        "d_in": 48,
        "d_sae": 16,
        "metadata": {"hook_name": "blocks.1.hook_resid_post"},
    }
    wide = _saelens_dir(tmp_path / "wide", cfg, _weights(d_in=48))
    with pytest.raises(SAEError, match=r"d_in=48, but the model's resid_post\.1 is 32 wide"):
        load_sae(wide, model=model)
    w = _weights()
    w["b_dec"] = torch.zeros(5)
    with pytest.raises(SAEError, match="b_dec has shape"):
        load_sae(_saelens_dir(tmp_path / "shape", cfg | {"d_in": 32}, w))
    with pytest.raises(SAEError, match="d_sae must be >= 1"):
        build("relu", 32, 0, "resid_post.0")
    with pytest.raises(SAEError, match="unknown SAE architecture"):
        build("gated-ish", 32, 4, "resid_post.0")
    nohook = _saelens_dir(tmp_path / "nohook", {"architecture": "standard"}, _weights())
    with pytest.raises(SAEError, match="names no hook point"):
        load_sae(nohook)
    assert load_sae(nohook, hook="resid_post.0").hook == "resid_post.0"
