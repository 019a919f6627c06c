"""SAE files: fidelity to SAELens on folders SAELens itself wrote, and clear errors for bad files.

tests/fixtures/saelens/ holds tiny SAEs saved by SAELens with SAELens's own encode/decode outputs
(bench/peers/saelens_fixtures.py, run in SAELens's venv, regenerates them), so this checks against SAELens without
installing it.
"""

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from attribution import SAEError, load_sae, save_sae
from attribution.saes import SAEWarning
from tests.conftest import random_sae, tiny_model

FIXTURES = Path(__file__).parent / "fixtures" / "saelens"
REFUSED = {"standard_constant_norm_rescale", "standard_layer_norm", "standard_expected_average_only_in"}
LOADED = sorted(p.name for p in FIXTURES.iterdir() if p.name not in REFUSED)
TOL = {"atol": 1e-5, "rtol": 1e-5}


def _io(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / name / "io.safetensors"))


def _assert_matches_saelens(sae, io) -> None:
    torch.testing.assert_close(sae.encode(io["x"]), io["feature_acts"], **TOL)
    torch.testing.assert_close(sae.decode(io["feature_acts"]), io["recon"], **TOL)
    torch.testing.assert_close(sae.decode(io["f_rand"]), io["decode_rand"], **TOL)


def test_fixtures_record_the_saelens_version():
    assert len(LOADED) >= 10
    for folder in FIXTURES.iterdir():
        with open(folder / "io.safetensors", "rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        assert header["__metadata__"]["sae_lens_version"].startswith("6.")


@pytest.mark.parametrize("name", LOADED)
def test_encode_decode_match_saelens(name):
    sae = load_sae(FIXTURES / name)
    assert sae.hook == "resid_post.1" and sae.meta["model_name"] == "tiny-test-model"
    _assert_matches_saelens(sae, _io(name))


def test_saelens_semantics_the_fixtures_pin_down():
    # a cfg without apply_b_dec_to_input means True, SAELens's default
    assert load_sae(FIXTURES / "standard_cfg_without_apply_b_dec").apply_b_dec_to_input
    assert load_sae(FIXTURES / "legacy_relu").apply_b_dec_to_input
    # negative thresholds: pre-activations between the threshold and 0 stay off
    sae, io = load_sae(FIXTURES / "jumprelu"), _io("jumprelu")
    pre = sae.pre_acts(io["x"])
    between = (pre > sae.threshold) & (pre < 0)
    assert between.any() and (io["feature_acts"][between] == 0).all()
    # log_threshold files: threshold = exp(log_threshold)
    raw = load_file(str(FIXTURES / "jumprelu_log_threshold" / "sae_weights.safetensors"))
    torch.testing.assert_close(load_sae(FIXTURES / "jumprelu_log_threshold").threshold, raw["log_threshold"].exp())
    # TopK's decoder-norm rescaling is folded: unit decoder rows, same outputs
    assert torch.allclose(load_sae(FIXTURES / "topk_rescale").W_dec.norm(dim=-1), torch.ones(32))


def test_folded_saelens_sae_round_trips(tmp_path):
    """A loaded SAELens checkpoint saved by us is a plain model-space SAE that still computes SAELens's function."""
    sae = load_sae(FIXTURES / "standard_checkpoint_whitening")
    cfg = json.loads((save_sae(sae, tmp_path / "ours") / "cfg.json").read_text())
    assert cfg["normalize_activations"] == "none" and cfg["metadata"]["model_name"] == "tiny-test-model"
    _assert_matches_saelens(load_sae(tmp_path / "ours"), _io("standard_checkpoint_whitening"))


def _copy(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def _edit_cfg(folder: Path, **changes) -> Path:
    cfg = json.loads((folder / "cfg.json").read_text())
    for key, value in changes.items():
        if value is ...:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def _edit_weights(folder: Path, **changes) -> Path:
    w = load_file(str(folder / "sae_weights.safetensors"))
    for key, value in changes.items():
        if value is ...:
            w.pop(key)
        else:
            w[key] = value
    save_file(w, str(folder / "sae_weights.safetensors"))
    return folder


def test_normalizations_that_depend_on_each_input_are_refused():
    for mode in ("constant_norm_rescale", "layer_norm"):
        with pytest.raises(SAEError, match=f"normalize_activations='{mode}' rescales every input by its own"):
            load_sae(FIXTURES / f"standard_{mode}")


def test_expected_average_needs_its_scaling_factor(tmp_path):
    with pytest.raises(SAEError, match=r"does not store.*norm_scaling_factor=<factor>"):
        load_sae(FIXTURES / "standard_expected_average_only_in")
    # SAELens's own load_from_disk applies no scale to this file: factor 1 reproduces it
    sae = load_sae(FIXTURES / "standard_expected_average_only_in", norm_scaling_factor=1.0)
    _assert_matches_saelens(sae, _io("standard_expected_average_only_in"))
    # the factor given by hand is the one the training checkpoint's activation_scaler.json stores
    folder = _copy("topk_checkpoint_expected_average", tmp_path)
    (folder / "activation_scaler.json").unlink()
    with pytest.raises(SAEError, match=r"no activation_scaler\.json"):
        load_sae(folder)
    _assert_matches_saelens(load_sae(folder, norm_scaling_factor=2.7), _io("topk_checkpoint_expected_average"))
    with pytest.raises(SAEError, match="positive number"):
        load_sae(folder, norm_scaling_factor=-1.0)
    with pytest.raises(SAEError, match="norm_scaling_factor is for SAEs trained with"):
        load_sae(FIXTURES / "standard", norm_scaling_factor=2.0)
    (folder / "activation_scaler.json").write_text("{not json")
    with pytest.raises(SAEError, match=r"activation_scaler\.json is not valid JSON"):
        load_sae(folder)


def test_whitening_needs_its_file(tmp_path):
    folder = _copy("standard_checkpoint_whitening", tmp_path)
    (folder / "activation_whitening.safetensors").unlink()
    with pytest.raises(SAEError, match=r"whitening .* is not in the folder"):
        load_sae(folder)


def test_malformed_cfg(tmp_path):
    folder = _copy("topk", tmp_path)
    (folder / "cfg.json").write_text('{"architecture": "topk", ')
    with pytest.raises(SAEError, match=r"cfg\.json is not valid JSON"):
        load_sae(folder)
    (folder / "cfg.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SAEError, match=r"cfg\.json is not valid JSON"):
        load_sae(folder)
    (folder / "cfg.json").write_text("[1, 2, 3]")
    with pytest.raises(SAEError, match="holds a JSON list, not an object"):
        load_sae(folder)
    cases = {
        "d_in": ("16", r"field 'd_in' is '16' \(str\), expected int"),
        "d_sae": (True, r"field 'd_sae' is True \(bool\), expected int"),
        "apply_b_dec_to_input": ("yes", "field 'apply_b_dec_to_input'.*expected bool"),
        "architecture": (3, "field 'architecture'.*expected str"),
        "k": ("4", r"field 'k' is '4' \(str\), expected int or float"),
        "metadata": (["blocks.1.hook_resid_post"], "field 'metadata'.*expected an object"),
        "normalize_activations": (1, "field 'normalize_activations'"),
    }
    for key, (value, message) in cases.items():
        _copy("topk", tmp_path / key)
        with pytest.raises(SAEError, match=message):
            load_sae(_edit_cfg(tmp_path / key / "topk", **{key: value}))


def test_cfg_fields_missing_or_wrong(tmp_path):
    with pytest.raises(SAEError, match="must give k"):
        load_sae(_edit_cfg(_copy("topk", tmp_path / "a"), k=...))
    with pytest.raises(SAEError, match="k must be a positive whole number"):
        load_sae(_edit_cfg(_copy("topk", tmp_path / "b"), k=2.5))
    with pytest.raises(SAEError, match="1 <= k <= d_sae"):
        load_sae(_edit_cfg(_copy("topk", tmp_path / "c"), k=33))
    with pytest.raises(SAEError, match=r"cfg.json says d_in=20, but W_enc has shape \(16, 32\)"):
        load_sae(_edit_cfg(_copy("standard", tmp_path / "d"), d_in=20))
    with pytest.raises(SAEError, match="architecture 'gated' is not supported"):
        load_sae(_edit_cfg(_copy("standard", tmp_path / "e"), architecture="gated"))
    with pytest.raises(SAEError, match="names no hook point"):
        load_sae(_edit_cfg(_copy("standard", tmp_path / "f"), metadata={}))
    with pytest.raises(SAEError, match="reads attention heads"):
        load_sae(_edit_cfg(_copy("standard", tmp_path / "g"), reshape_activations="hook_z"))
    with pytest.raises(SAEError, match="not a mode SAELens writes"):
        load_sae(_edit_cfg(_copy("standard", tmp_path / "h"), normalize_activations="whatever"))


def test_bad_weights(tmp_path):
    w = load_file(str(FIXTURES / "jumprelu" / "sae_weights.safetensors"))
    with pytest.raises(SAEError, match=r"lacks \['threshold'\] \(or log_threshold\) needed by a jumprelu SAE"):
        load_sae(_edit_weights(_copy("jumprelu", tmp_path / "a"), threshold=...))
    with pytest.raises(SAEError, match="W_enc has dtype int32; SAE weights must be floating point"):
        load_sae(_edit_weights(_copy("jumprelu", tmp_path / "b"), W_enc=w["W_enc"].to(torch.int32)))
    with pytest.raises(SAEError, match=r"W_dec has shape \(16, 32\), expected \(32, 16\)"):
        load_sae(_edit_weights(_copy("jumprelu", tmp_path / "c"), W_dec=w["W_dec"].T.contiguous()))
    with pytest.raises(SAEError, match=r"threshold has shape \(31,\), expected \(32,\)"):
        load_sae(_edit_weights(_copy("jumprelu", tmp_path / "d"), threshold=w["threshold"][:31].contiguous()))
    with pytest.raises(SAEError, match="expected a matrix"):
        load_sae(_edit_weights(_copy("jumprelu", tmp_path / "e"), W_enc=w["W_enc"].flatten()))
    for i, (key, bad) in enumerate([("W_dec", float("nan")), ("b_enc", float("inf")), ("threshold", float("nan"))]):
        t = w[key].clone()
        t[0] = bad
        with pytest.raises(SAEError, match=f"parameter {key} contains NaN/inf"):
            load_sae(_edit_weights(_copy("jumprelu", tmp_path / f"nan{i}"), **{key: t}))
    log_nan = load_file(str(FIXTURES / "jumprelu_log_threshold" / "sae_weights.safetensors"))["log_threshold"]
    log_nan[3] = float("nan")
    with pytest.raises(SAEError, match="threshold contains NaN/inf"):
        load_sae(_edit_weights(_copy("jumprelu_log_threshold", tmp_path), log_threshold=log_nan))


def test_finetuning_scaling_factor(tmp_path):
    """Older SAELens files: a non-trivial `scaling_factor` multiplies the features in decode."""
    folder = _copy("legacy_relu", tmp_path)
    s = torch.linspace(0.5, 2.0, 32)
    _edit_weights(folder, scaling_factor=s)
    with pytest.raises(SAEError, match="does not set finetuning_scaling_factor"):
        load_sae(folder)
    sae = load_sae(_edit_cfg(folder, finetuning_scaling_factor=True))
    io, w = _io("legacy_relu"), load_file(str(folder / "sae_weights.safetensors"))
    torch.testing.assert_close(sae.encode(io["x"]), io["feature_acts"], **TOL)
    torch.testing.assert_close(sae.decode(io["f_rand"]), (io["f_rand"] * s) @ w["W_dec"] + w["b_dec"], **TOL)


@pytest.fixture(scope="module")
def model():
    m = tiny_model("gemma3")
    m.name = "google/gemma-3-270m"
    return m


def _sae_for(model, tmp_path, model_name):
    sae = random_sae(model, "resid_post.1")
    sae.meta["model_name"] = model_name
    return save_sae(sae, tmp_path / model_name.replace("/", "_"))


def test_sae_for_another_model_warns(model, tmp_path):
    with pytest.warns(SAEWarning, match=r"trained for model 'gemma-2-2b', but it is being loaded for"):
        sae = load_sae(_sae_for(model, tmp_path, "gemma-2-2b"), model=model)
    assert sae.hook == "resid_post.1"  # a warning, not an error
    for same in ("google/gemma-3-270m", "gemma-3-270m", "gemma3-270m-it"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", SAEWarning)
            load_sae(_sae_for(model, tmp_path, same), model=model)


def test_model_names_recorded_with_an_sae(model):
    from attribution.saes.io import model_names

    assert model_names(model) == ["google/gemma-3-270m"]
    assert model_names(tiny_model("llama")) == []  # an in-memory model known only by its class
