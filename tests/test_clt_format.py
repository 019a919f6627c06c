"""Cross-layer transcoders on disk in circuit-tracer's CLT layout: save_clt / load_clt round trips, a folder written
by hand in circuit-tracer's own tensor names and orientations (its forward computed from those tensors), and an
error naming the fix for each bad folder. bench/peers/clt_circuit_tracer.py checks the files against circuit-tracer
itself (in its own venv)."""

import warnings

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from attribution import SAEError, load_clt, load_transcoders, save_clt
from attribution.saes import CrossLayerTranscoder, SAEWarning

N, D, F = 5, 8, 12  # layers, d_model, d_sae (unequal, so a transposed matrix cannot pass for the right one)


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _random_clt(architecture, reach, skip, seed=0, **options) -> CrossLayerTranscoder:
    clt = CrossLayerTranscoder.create(N, D, F, reach=reach, architecture=architecture, skip=skip, **options)
    with torch.no_grad():
        for j, p in enumerate(clt.parameters()):
            p.copy_(_rand(*p.shape, seed=seed + j))
        if architecture == "jumprelu":
            for s in clt.layers:
                s.threshold.abs_()
    return clt


def _xs(seed=99):
    return [_rand(3, D, seed=seed + i) for i in range(N)]


@pytest.mark.parametrize(
    "architecture, reach, skip, options",
    [("topk", 2, True, {"k": 3}), ("relu", N, False, {}), ("jumprelu", 3, False, {})],
)
def test_round_trip_is_exact(tmp_path, architecture, reach, skip, options):
    clt = _random_clt(architecture, reach, skip, **options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folder = save_clt(clt, tmp_path / "clt", model_name="google/gemma-3-270m")
    warned = " ".join(str(w.message) for w in caught if issubclass(w.category, SAEWarning))
    assert ("drops the skip path" in warned) == skip and ("TopK as ReLU" in warned) == (architecture == "topk")
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    assert cfg["model_kind"] == "cross_layer_transcoder"
    assert (cfg["feature_input_hook"], cfg["feature_output_hook"]) == ("hook_resid_mid", "hook_mlp_out")
    assert cfg["attribution"]["reach"] == reach and cfg["attribution"]["architecture"] == architecture
    dec = load_file(str(folder / "W_dec_1.safetensors"))["W_dec_1"]
    assert dec.shape == (F, N - 1, D) and not dec[:, reach:].any()  # padded with zeros beyond the reach
    back = load_clt(folder)
    assert (back.reach, back.architecture, back.hooks) == (reach, architecture, clt.hooks)
    assert [s.target for s in back.layers] == [s.target for s in clt.layers]
    assert back.state_dict().keys() == clt.state_dict().keys()
    for key, value in clt.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    (ys, fs), (ys2, fs2) = clt(_xs()), back(_xs())
    assert all(torch.equal(a, b) for a, b in zip(ys + fs, ys2 + fs2))


def _write_circuit_tracer(folder, threshold: bool, config=None) -> dict:
    """A CLT in circuit-tracer's layout, as its to_safetensors writes one (no `attribution` key); its tensors."""
    folder.mkdir(parents=True)
    raw = {}
    for i in range(N):
        enc = {f"W_enc_{i}": _rand(F, D, seed=10 * i), f"b_enc_{i}": _rand(F, seed=10 * i + 1)}
        enc[f"b_dec_{i}"] = _rand(D, seed=10 * i + 2)
        if threshold:
            enc[f"threshold_{i}"] = 0.5 * _rand(F, seed=10 * i + 3).abs()
        dec = {f"W_dec_{i}": _rand(F, N - i, D, seed=10 * i + 4)}
        save_file(enc, str(folder / f"W_enc_{i}.safetensors"))
        save_file(dec, str(folder / f"W_dec_{i}.safetensors"))
        raw |= enc | dec
    cfg = {"model_kind": "cross_layer_transcoder", "feature_input_hook": "hook_resid_mid"}
    cfg |= {"feature_output_hook": "hook_mlp_out", "scan": "hand", **(config or {})}
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    return raw


@pytest.mark.parametrize("threshold", [False, True])
def test_circuit_tracer_layout_reads_as_its_formula(tmp_path, threshold):
    raw = _write_circuit_tracer(tmp_path / "ct", threshold)
    clt = load_clt(tmp_path / "ct")
    assert (clt.reach, clt.architecture) == (N, "jumprelu" if threshold else "relu")
    assert clt.hooks == [f"resid_mid.{i}" for i in range(N)]
    xs = _xs()
    # circuit-tracer: features_i = act(x_i @ W_enc_i.T + b_enc_i), act x * (x > t) or relu; out_l = b_dec_l +
    # sum_{i <= l} features_i @ W_dec_i[:, l - i]
    feats = []
    for i, x in enumerate(xs):
        pre = x @ raw[f"W_enc_{i}"].T + raw[f"b_enc_{i}"]
        feats.append(pre * (pre > raw[f"threshold_{i}"]) if threshold else torch.relu(pre))
    want = [raw[f"b_dec_{L}"] + sum(feats[i] @ raw[f"W_dec_{i}"][:, L - i] for i in range(L + 1)) for L in range(N)]
    ys, fs = clt(xs)
    for L in range(N):
        torch.testing.assert_close(fs[L], feats[L], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ys[L], want[L], rtol=1e-5, atol=1e-5)


def test_load_transcoders_points_to_load_clt(tmp_path):
    _write_circuit_tracer(tmp_path / "ct", threshold=False)
    with pytest.raises(SAEError, match=r"cross_layer_transcoder.*load_clt"):
        load_transcoders(tmp_path / "ct")


def _edit_yaml(folder, **changes):
    cfg = yaml.safe_load((folder / "config.yaml").read_text()) | changes
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_bad_folders_name_the_fix(tmp_path):
    ct = tmp_path / "ct"
    _write_circuit_tracer(ct, threshold=False)
    _edit_yaml(ct, model_kind="transcoder_set")
    with pytest.raises(SAEError, match=r"model_kind 'transcoder_set'.*load_transcoders"):
        load_clt(ct)
    _edit_yaml(ct, model_kind="cross_layer_transcoder", attribution={"reach": 2})
    with pytest.raises(SAEError, match=r"W_dec_0.safetensors: W_dec_0 writes layer 2, beyond the reach 2"):
        load_clt(ct)
    _edit_yaml(ct, attribution={"architecture": "topk"})
    with pytest.raises(SAEError, match="needs its k"):
        load_clt(ct)
    _edit_yaml(ct, attribution={"architecture": "jumprelu"})
    with pytest.raises(SAEError, match="lacks a threshold"):
        load_clt(ct)
    _edit_yaml(ct, attribution={})

    t = load_file(str(ct / "W_dec_3.safetensors"))
    save_file({"W_dec_3": t["W_dec_3"][:, :1].contiguous()}, str(ct / "W_dec_3.safetensors"))
    with pytest.raises(SAEError, match=r"W_dec_3 is \(12, 1, 8\), expected \(12, 2, 8\)"):
        load_clt(ct)
    save_file(t, str(ct / "W_dec_3.safetensors"))
    t = load_file(str(ct / "W_enc_2.safetensors"))
    save_file(t | {"W_enc_2": t["W_enc_2"].T.contiguous()}, str(ct / "W_enc_2.safetensors"))
    with pytest.raises(SAEError, match=r"W_enc_2 is \(8, 12\), expected \(12, 8\)"):
        load_clt(ct)
    save_file(t | {"b_dec_2": torch.zeros(F)}, str(ct / "W_enc_2.safetensors"))
    with pytest.raises(SAEError, match=r"b_dec_2 is \(12,\), expected \(8,\)"):
        load_clt(ct)
    save_file({k: v for k, v in t.items() if k != "b_enc_2"}, str(ct / "W_enc_2.safetensors"))
    with pytest.raises(SAEError, match=r"W_enc_2.safetensors lacks \['b_enc_2'\]"):
        load_clt(ct)
    save_file(t, str(ct / "W_enc_2.safetensors"))

    (ct / "W_dec_4.safetensors").unlink()
    with pytest.raises(SAEError, match=r"W_dec_4.safetensors does not exist"):
        load_clt(ct)
    (ct / "W_enc_1.safetensors").rename(tmp_path / "aside.safetensors")
    with pytest.raises(SAEError, match=r"lacks W_enc_1.safetensors"):
        load_clt(ct)
    for f in ct.glob("W_*.safetensors"):
        f.unlink()
    _edit_yaml(ct, repo_id="someone/clt")
    with pytest.raises(SAEError, match=r"no W_enc_<i>.safetensors \(its repo_id 'someone/clt' is on the Hugging"):
        load_clt(ct)
    _edit_yaml(ct, transcoders=["hf://someone/clt/layer_0.safetensors"])
    with pytest.raises(SAEError, match="on the Hugging Face hub"):
        load_clt(ct)
    with pytest.raises(SAEError, match="download the repository"):
        load_clt("hf://someone/clt")
    with pytest.raises(SAEError, match=r"has no config\.yaml"):
        load_clt(tmp_path)


def test_save_refuses_what_is_not_a_clt_and_stale_layers(tmp_path):
    clt = _random_clt("relu", 2, False)
    with pytest.raises(SAEError, match="save_transcoders writes per-layer"):
        save_clt({s.hook: s for s in clt.layers}, tmp_path / "x")
    big = CrossLayerTranscoder.create(N + 2, D, F, reach=2, architecture="relu", skip=False)
    save_clt(big, tmp_path / "x")
    with pytest.raises(SAEError, match=r"W_(enc|dec)_[56].safetensors.*of a larger CLT"):
        save_clt(clt, tmp_path / "x")


def test_negative_thresholds_warn_both_ways(tmp_path):
    clt = _random_clt("jumprelu", 2, False)
    with torch.no_grad():
        clt.layers[1].threshold[0] = -0.5
    with pytest.warns(SAEWarning, match="negative threshold"):
        save_clt(clt, tmp_path / "neg")
    with pytest.warns(SAEWarning, match="negative thresholds"):
        load_clt(tmp_path / "neg")


def test_load_with_a_model_checks_the_fit(tmp_path):
    from tests.conftest import tiny_model

    model = tiny_model("gemma3", dtype=torch.float32)  # d_model 32, 3 layers
    fits = CrossLayerTranscoder.create(model.n_layers, model.d_model, F, reach=2, architecture="relu", skip=False)
    save_clt(fits, tmp_path / "fits", model_name="google/gemma-3-270m")
    clt = load_clt(tmp_path / "fits", model=model, dtype=torch.float64)
    assert clt.n_layers == model.n_layers and clt.layers[0].W_enc.dtype == torch.float64
    save_clt(_random_clt("relu", 2, False), tmp_path / "deeper")
    with pytest.raises(SAEError, match=r"does not fit .*has 5 layers but .* has 3"):
        load_clt(tmp_path / "deeper", model=model)
    save_clt(CrossLayerTranscoder.create(3, D, F, reach=2, architecture="relu", skip=False), tmp_path / "narrow")
    with pytest.raises(SAEError, match=r"does not fit .*d_in=8"):
        load_clt(tmp_path / "narrow", model=model)
