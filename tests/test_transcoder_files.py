"""Transcoder files: Gemma Scope 2, circuit-tracer and SAELens folders written here from raw tensors, loaded,
and compared with outputs computed independently from those tensors in each format's own orientation; the
circuit-tracer export round trip; the offline release error; and an error that names the fix for each bad input.
bench/peers/circuit_tracer_files.py checks the export against circuit-tracer itself (in its own venv)."""

import json
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import attribution.saes.transcoders as tcmod
from attribution import SAEError, load_transcoders, save_sae, save_transcoders
from attribution.saes import SAEWarning, build
from tests.conftest import tiny_model

D, F = 16, 40  # d_in = d_out, d_sae (unequal, so a transposed matrix cannot pass for the right one)
GS2_CFG = {
    "hf_hook_point_in": "model.layers.{L}.pre_feedforward_layernorm.output",
    "hf_hook_point_out": "model.layers.{L}.post_feedforward_layernorm.output",
    "width": F,
    "model_name": "google/gemma-3-270m",
    "architecture": "jump_relu",
    "l0": 8,
    "affine_connection": True,
    "type": "transcoder",
}


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _jumprelu(pre, t):
    return torch.relu(pre) * (pre > t)


def _x(seed=99):
    return _rand(5, D, seed=seed)


def _write_gs2(folder, layer, seed=0, skip=True, config=True, **cfg_changes):
    """A Gemma Scope 2 transcoder folder; returns its raw tensors."""
    folder.mkdir(parents=True)
    t = {
        "w_enc": _rand(D, F, seed=seed),
        "w_dec": _rand(F, D, seed=seed + 1),
        "b_enc": _rand(F, seed=seed + 2),
        "b_dec": _rand(D, seed=seed + 3),
        "threshold": 0.5 * _rand(F, seed=seed + 4),  # some negative: relu(pre) * (pre > t) is Gemma Scope's form
    }
    if skip:
        t["affine_skip_connection"] = _rand(D, D, seed=seed + 5)
    save_file(t, str(folder / "params.safetensors"))
    if config:
        cfg = {k: v.format(L=layer) if isinstance(v, str) else v for k, v in GS2_CFG.items()}
        cfg |= {"affine_connection": skip, **cfg_changes}
        (folder / "config.json").write_text(json.dumps(cfg))
    return t


def _gs2_expected(t, x):
    out = _jumprelu(x @ t["w_enc"] + t["b_enc"], t["threshold"]) @ t["w_dec"] + t["b_dec"]
    return out + x @ t["affine_skip_connection"] if "affine_skip_connection" in t else out


def test_gemma_scope_2_folder(tmp_path):
    t = _write_gs2(tmp_path / "layer_5_width_16k_l0_small", 5)
    tcs = load_transcoders(tmp_path / "layer_5_width_16k_l0_small")
    assert list(tcs) == ["mlp_in.5"]  # pre_feedforward_layernorm.output: the MLP's normalised input
    tc = tcs["mlp_in.5"]
    assert tc.target == "mlp_out.5" and tc.architecture == "jumprelu" and tc.meta["model_name"] == "google/gemma-3-270m"
    x = _x()
    torch.testing.assert_close(tc(x)[0], _gs2_expected(t, x))
    # the skip matrix is square: the other orientation would load without complaint, and give other numbers
    other = dict(t, affine_skip_connection=t["affine_skip_connection"].T)
    assert not torch.allclose(tc(x)[0], _gs2_expected(other, x))


def test_gemma_scope_2_parent_folder_layers_and_defaults(tmp_path):
    t2 = _write_gs2(tmp_path / "layer_2_width_16k_l0_small", 2, seed=20, skip=False, config=False)
    t0 = _write_gs2(tmp_path / "layer_0_width_16k_l0_small", 0, seed=0)
    (tmp_path / "notes").mkdir()  # a folder with no transcoder is skipped
    tcs = load_transcoders(tmp_path)
    assert list(tcs) == ["mlp_in.0", "mlp_in.2"]  # sorted by layer; without config.json: mlp_in -> mlp_out
    assert tcs["mlp_in.2"].target == "mlp_out.2" and tcs["mlp_in.2"].W_skip is None
    x = _x()
    torch.testing.assert_close(tcs["mlp_in.2"](x)[0], _gs2_expected(t2, x))
    torch.testing.assert_close(tcs["mlp_in.0"](x)[0], _gs2_expected(t0, x))
    assert list(load_transcoders(tmp_path, layers=[2])) == ["mlp_in.2"]
    with pytest.raises(SAEError, match=r"no transcoder for layer\(s\) \[7\].*layers \[0, 2\]"):
        load_transcoders(tmp_path, layers=[7])
    _write_gs2(tmp_path / "layer_2_width_262k_l0_big", 2, seed=30)
    with pytest.raises(SAEError, match="two transcoders for layer 2"):
        load_transcoders(tmp_path)


def test_gemma_scope_2_sae_and_cross_layer_are_refused(tmp_path):
    _write_gs2(tmp_path / "sae", 5, hf_hook_point_in="model.layers.5.output", type="sae")
    with pytest.raises(SAEError, match=r"Gemma Scope 2 SAE.*not a transcoder"):
        load_transcoders(tmp_path / "sae")
    _write_gs2(tmp_path / "clt", 3, skip=False)
    save_file(
        {**load_file(str(tmp_path / "clt/params.safetensors")), "w_dec": torch.zeros(F, 2, D)},
        str(tmp_path / "clt/params.safetensors"),
    )
    with pytest.raises(SAEError, match="cross-layer"):
        load_transcoders(tmp_path / "clt")


def _write_ct_layer(file, seed, threshold=True, skip=True):
    """One layer in circuit-tracer's layout (SingleLayerTranscoder: W_enc [d_sae, d_in], W_skip [d_out, d_in])."""
    t = {"W_enc": _rand(F, D, seed=seed), "W_dec": _rand(F, D, seed=seed + 1), "b_enc": _rand(F, seed=seed + 2)}
    t["b_dec"] = _rand(D, seed=seed + 3)
    if threshold:
        t["activation_function.threshold"] = 0.5 * _rand(F, seed=seed + 4).abs()
    if skip:
        t["W_skip"] = _rand(D, D, seed=seed + 5)
    save_file(t, str(file))
    return t


def _ct_expected(t, x):
    """circuit-tracer's forward: F.linear(x, W_enc, b_enc), x * (x > threshold), + x @ W_skip.T."""
    pre = torch.nn.functional.linear(x, t["W_enc"], t["b_enc"])
    thr = t.get("activation_function.threshold")
    f = torch.relu(pre) if thr is None else pre * (pre > thr)
    out = f @ t["W_dec"] + t["b_dec"]
    return out + x @ t["W_skip"].T if "W_skip" in t else out


def _ct_config(folder, files, **over):
    cfg = {"model_kind": "transcoder_set", "feature_input_hook": "hook_resid_mid"}
    cfg |= {"feature_output_hook": "hook_mlp_out", "scan": "test", "transcoders": files, **over}
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_circuit_tracer_folder(tmp_path):
    t0 = _write_ct_layer(tmp_path / "layer_0.safetensors", 0)
    t1 = _write_ct_layer(tmp_path / "layer_1.safetensors", 10, threshold=False, skip=False)
    _ct_config(tmp_path, ["layer_0.safetensors", "layer_1.safetensors"], model_name="google/gemma-3-270m")
    tcs = load_transcoders(tmp_path)
    assert list(tcs) == ["resid_mid.0", "resid_mid.1"]
    assert [tc.architecture for tc in tcs.values()] == ["jumprelu", "relu"]
    assert tcs["resid_mid.1"].target == "mlp_out.1" and tcs["resid_mid.1"].W_skip is None
    x = _x()
    torch.testing.assert_close(tcs["resid_mid.0"](x)[0], _ct_expected(t0, x))
    torch.testing.assert_close(tcs["resid_mid.1"](x)[0], _ct_expected(t1, x))
    # circuit-tracer's cache layout: no transcoders list, layer_<L>.safetensors
    _ct_config(tmp_path, None)
    cfg = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del cfg["transcoders"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    torch.testing.assert_close(load_transcoders(tmp_path)["resid_mid.0"](x)[0], _ct_expected(t0, x))


def test_circuit_tracer_set_of_gemma_scope_2_files(tmp_path):
    # circuit-tracer's Gemma Scope 2 sets list Google's params.safetensors (its special_load_fn gemma-scope-2)
    t = _write_gs2(tmp_path / "gs" / "layer_0_width_16k_l0_small", 0, config=False)
    _ct_config(tmp_path, ["gs/layer_0_width_16k_l0_small/params.safetensors"], feature_input_hook="mlp.hook_in")
    tc = load_transcoders(tmp_path)["mlp_in.0"]
    x = _x()
    torch.testing.assert_close(tc(x)[0], _gs2_expected(t, x))


def _write_saelens(folder, arch, seed, v6=True, hooks=("blocks.3.hook_resid_mid", "blocks.3.hook_mlp_out")):
    """A SAELens transcoder folder (W_enc [d_in, d_sae], W_skip [d_out, d_in] applied as x @ W_skip.T)."""
    folder.mkdir(parents=True)
    t = {"W_enc": _rand(D, F, seed=seed), "W_dec": _rand(F, D, seed=seed + 1), "b_enc": _rand(F, seed=seed + 2)}
    t["b_dec"] = _rand(D, seed=seed + 3)
    if "jumprelu" in arch:
        t["threshold"] = 0.5 * _rand(F, seed=seed + 4)
    if "skip" in arch:
        t["W_skip"] = _rand(D, D, seed=seed + 5)
    save_file(t, str(folder / "sae_weights.safetensors"))
    meta = {"hook_name": hooks[0], "hook_name_out": hooks[1], "model_name": "tiny"}
    cfg = {"architecture": arch, "d_in": D, "d_sae": F, "d_out": D, "apply_b_dec_to_input": False}
    cfg |= {"normalize_activations": "none", **({"metadata": meta} if v6 else meta)}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return t


def _saelens_expected(t, x):
    pre = x @ t["W_enc"] + t["b_enc"]
    f = torch.relu(pre) if "threshold" not in t else _jumprelu(pre, t["threshold"])
    out = f @ t["W_dec"] + t["b_dec"]
    return out + x @ t["W_skip"].T if "W_skip" in t else out


@pytest.mark.parametrize("arch", ["transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder"])
def test_saelens_transcoder(tmp_path, arch):
    t = _write_saelens(tmp_path / "tc", arch, seed=3, v6=arch != "transcoder")  # pre-6.0: fields at the top
    tc = load_transcoders(tmp_path / "tc")["resid_mid.3"]
    assert tc.target == "mlp_out.3" and tc.meta["model_name"] == "tiny"
    x = _x()
    torch.testing.assert_close(tc(x)[0], _saelens_expected(t, x))


def test_folder_of_saelens_and_our_transcoders(tmp_path):
    t = _write_saelens(tmp_path / "l3", "jumprelu_transcoder", seed=3)
    hf = ("model.layers.1.pre_feedforward_layernorm.output", "model.layers.1.post_feedforward_layernorm.output")
    _write_saelens(
        tmp_path / "l1", "transcoder", seed=5, hooks=("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out")
    )
    cfg = json.loads((tmp_path / "l1/cfg.json").read_text())
    cfg["metadata"] |= {"hf_hook_name": hf[0], "hf_hook_name_out": hf[1]}  # SAELens's Gemma 3 loader: the real hooks
    (tmp_path / "l1/cfg.json").write_text(json.dumps(cfg))
    ours = build("topk", D, F, "resid_mid.0", target="mlp_out.0", skip=True, k=3)
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(_rand(*p.shape, seed=p.numel()))
    save_sae(ours, tmp_path / "l0")
    tcs = load_transcoders(tmp_path)
    assert list(tcs) == ["resid_mid.0", "mlp_in.1", "resid_mid.3"]
    x = _x()
    torch.testing.assert_close(tcs["resid_mid.3"](x)[0], _saelens_expected(t, x))
    torch.testing.assert_close(tcs["resid_mid.0"](x)[0], ours(x)[0])


def _ours(arch, layer, seed, hook="resid_mid", target="mlp_out", **kw):
    tc = build(arch, D, F, f"{hook}.{layer}", target=f"{target}.{layer}", **kw)
    with torch.no_grad():
        for i, p in enumerate(tc.parameters()):
            p.copy_(_rand(*p.shape, seed=seed + i) if p.ndim else p)
        if arch == "jumprelu":
            tc.threshold.abs_()
    tc.meta = {"model_name": "google/gemma-3-270m"}
    return tc


def test_save_transcoders_round_trip(tmp_path):
    tcs = {"resid_mid.0": _ours("relu", 0, 0), "resid_mid.1": _ours("jumprelu", 1, 10, skip=True)}
    folder = save_transcoders(tcs, tmp_path / "ct")
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    assert cfg["model_kind"] == "transcoder_set" and cfg["model_name"] == "google/gemma-3-270m"
    assert (cfg["feature_input_hook"], cfg["feature_output_hook"]) == ("hook_resid_mid", "hook_mlp_out")
    assert cfg["transcoders"] == ["layer_0.safetensors", "layer_1.safetensors"]
    raw = load_file(str(folder / "layer_1.safetensors"))  # circuit-tracer's layout
    assert set(raw) == {"W_enc", "W_dec", "b_enc", "b_dec", "W_skip", "activation_function.threshold"}
    assert torch.equal(raw["W_enc"], tcs["resid_mid.1"].W_enc.T) and torch.equal(
        raw["W_skip"], tcs["resid_mid.1"].W_skip.T
    )
    back = load_transcoders(folder)
    assert list(back) == list(tcs)
    x = _x()
    for hook, tc in tcs.items():
        assert (back[hook].target, back[hook].architecture) == (tc.target, tc.architecture)
        for name, p in tc.state_dict().items():
            assert torch.equal(back[hook].state_dict()[name], p), name
        torch.testing.assert_close(
            back[hook](x)[0], _ct_expected(load_file(str(folder / f"layer_{hook[-1]}.safetensors")), x)
        )


def test_save_transcoders_topk_mlp_in_and_gaps(tmp_path):
    tcs = [_ours("topk", 2, 0, hook="mlp_in", k=4), _ours("topk", 0, 5, hook="mlp_in", k=7)]
    with pytest.warns(SAEWarning, match=r"every layer 0\.\.2.*TopK transcoders as ReLU"):
        folder = save_transcoders(tcs, tmp_path / "ct", model_name="tiny")
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    assert cfg["feature_input_hook"] == "mlp.hook_in" and cfg["model_name"] == "tiny"
    assert cfg["attribution"] == {"layers": [0, 2], "architecture": "topk", "k": [7, 4]}
    back = load_transcoders(folder)
    assert list(back) == ["mlp_in.0", "mlp_in.2"] and [t.k for t in back.values()] == [7, 4]
    x = _x()
    for tc in tcs:
        torch.testing.assert_close(back[tc.hook](x)[0], tc(x)[0], rtol=0, atol=0)


def test_save_transcoders_refuses(tmp_path):
    with pytest.raises(SAEError, match="not a transcoder"):
        save_transcoders({"resid_mid.0": build("relu", D, F, "resid_mid.0")}, tmp_path)
    with pytest.raises(SAEError, match="read and write one layer's"):
        save_transcoders([_ours("relu", 0, 0, hook="attn_out")], tmp_path)
    with pytest.raises(SAEError, match="one pair of hooks"):
        save_transcoders([_ours("relu", 0, 0), _ours("relu", 1, 0, hook="mlp_in")], tmp_path)
    with pytest.raises(SAEError, match="format='circuit-tracer'"):
        save_transcoders([_ours("relu", 0, 0)], tmp_path, format="saelens")
    with pytest.raises(SAEError, match="no transcoders"):
        save_transcoders({}, tmp_path)


def test_release_offline_names_the_files(tmp_path, monkeypatch):
    def offline(repo, filename):
        raise OSError("no network")

    real = tcmod._hub_download
    monkeypatch.setattr(tcmod, "_hub_download", offline)
    with pytest.raises(SAEError) as err:
        load_transcoders("gemma-scope-2-270m-pt-transcoders")
    msg = str(err.value)
    for part in (
        "google/gemma-scope-2-270m-pt",
        "transcoder_all/layer_<L>_width_16k_l0_small/params.safetensors",
        "config.json",
        "L in 0..17",
        "load_transcoders('DIR/transcoder_all')",
        "OSError",
    ):
        assert part in msg, part
    with pytest.raises(SAEError, match=r"for L in 3, 4 "):
        load_transcoders("gemma-scope-2-270m-it-transcoders", layers=[3, 4])
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    monkeypatch.setattr(tcmod, "_hub_download", real)
    with pytest.raises(SAEError, match="huggingface_hub is not installed"):
        load_transcoders("mwhanna/gemma-scope-2-270m-pt/transcoder_all/width_16k_l0_small", layers=[0])


def test_release_through_huggingface_hub_offline(tmp_path, monkeypatch):
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # never the user's cache
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once
    start = time.monotonic()
    with pytest.raises(SAEError, match=r"cannot reach http://127\.0\.0\.1:9"):
        load_transcoders("gemma-scope-2-270m-pt-transcoders", layers=[4])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SAEError, match="could not be downloaded"):
        load_transcoders("gemma-scope-2-270m-pt-transcoders", layers=[4])
    assert time.monotonic() - start < 10
    # files already in the hub's cache load offline
    snap = tmp_path / "hub" / "models--google--gemma-scope-2-270m-pt" / "snapshots" / ("0" * 40)
    t = _write_gs2(snap / "transcoder_all" / "layer_4_width_16k_l0_small", 4)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("0" * 40)
    tc = load_transcoders("gemma-scope-2-270m-pt-transcoders", layers=[4])["mlp_in.4"]
    torch.testing.assert_close(tc(_x())[0], _gs2_expected(t, _x()))


def test_release_downloaded(tmp_path, monkeypatch):
    t = _write_gs2(tmp_path / "transcoder_all" / "layer_4_width_16k_l0_small", 4)
    monkeypatch.setattr(tcmod, "_hub_download", lambda repo, filename: str(tmp_path / filename))
    tc = load_transcoders("gemma-scope-2-270m-pt-transcoders", layers=[4])["mlp_in.4"]
    x = _x()
    torch.testing.assert_close(tc(x)[0], _gs2_expected(t, x))


def test_bad_input_names_the_problem(tmp_path):
    with pytest.raises(SAEError, match=r"neither a folder nor a known release id.*gemma-scope-2-270m-pt-transcoders"):
        load_transcoders("no-such-release")
    with pytest.raises(SAEError, match="holds no transcoders in a format we read"):
        load_transcoders(tmp_path)
    _write_gs2(tmp_path / "gs" / "layer_1_x", 1)
    with pytest.raises(SAEError, match="is a file; pass the folder"):
        load_transcoders(tmp_path / "gs" / "layer_1_x" / "params.safetensors")
    with pytest.raises(SAEError, match="layer numbers"):
        load_transcoders(tmp_path / "gs", layers=["1"])
    # Gemma Scope 2 files: a missing tensor, a wrong shape, a mismatched config, corrupt bytes
    p = tmp_path / "gs" / "layer_1_x" / "params.safetensors"
    good = load_file(str(p))
    for change, match in [
        ({"threshold": None}, r"lacks \['threshold'\]"),
        ({"w_dec": torch.zeros(D, F)}, "W_dec does not fit"),
        (
            {
                "b_dec": torch.zeros(D + 1),
                "w_dec": torch.zeros(F, D + 1),
                "affine_skip_connection": torch.zeros(D, D + 1),
            },
            "reads 16 and writes 17 wide",
        ),
        ({"affine_skip_connection": None}, "affine_connection=True but params.safetensors lacks"),
        ({"b_enc": torch.zeros(F, dtype=torch.int32)}, "floating point"),
    ]:
        save_file({k: v for k, v in (good | change).items() if v is not None}, str(p))
        with pytest.raises(SAEError, match=match):
            load_transcoders(tmp_path / "gs")
    p.write_bytes(b"junk")
    with pytest.raises(SAEError, match="corrupt or truncated"):
        load_transcoders(tmp_path / "gs")
    (tmp_path / "gs" / "layer_1_x" / "config.json").write_text("[1]")
    with pytest.raises(SAEError, match="JSON object"):
        load_transcoders(tmp_path / "gs")


def test_bad_circuit_tracer_and_saelens_folders(tmp_path):
    ct = tmp_path / "ct"
    ct.mkdir()
    _write_ct_layer(ct / "layer_0.safetensors", 0)
    for cfg_text, match in [
        ("model_kind: [", "not valid YAML"),
        ("- a list", "should hold a mapping"),
        ("model_kind: cross_layer_transcoder", r"load it with attribution.saes.load_clt"),
        ("model_kind: transcoder_set\nfeature_input_hook: hook_resid_mid", "lacks feature_output_hook"),
    ]:
        (ct / "config.yaml").write_text(cfg_text)
        with pytest.raises(SAEError, match=match):
            load_transcoders(ct)
    for over, match in [
        (
            {"transcoders": ["hf://google/gemma-scope-2-270m-pt/transcoder_all/x/params.safetensors"]},
            "on the Hugging Face hub",
        ),
        ({"transcoders": ["missing.safetensors"]}, "missing.safetensors does not exist"),
        ({"feature_input_hook": "ln2.hook_normalized"}, "before its learned scale"),
        ({"feature_input_hook": "hook_z"}, "has no equivalent here"),
        (
            {"feature_output_hook": "mlp.hook_out", "model_name": "google/gemma-3-270m"},
            "before the post-feedforward norm",
        ),
        ({"feature_output_hook": "hook_resid_mid"}, "reads and writes resid_mid.0, an SAE"),
        ({"feature_output_hook": "hook_mlp_out", "attribution": {"layers": [0, 1]}}, "one layer number per"),
    ]:
        _ct_config(ct, ["layer_0.safetensors"], **over)
        with pytest.raises(SAEError, match=match):
            load_transcoders(ct)
    _ct_config(ct, ["layer_0.safetensors"])
    save_file(
        {**load_file(str(ct / "layer_0.safetensors")), "W_enc": torch.zeros(D, F)}, str(ct / "layer_0.safetensors")
    )
    with pytest.raises(SAEError, match=r"W_enc does not fit.*circuit-tracer's layout: W_enc \[d_sae, d_in\]"):
        load_transcoders(ct)
    # SAELens: an SAE, and a transcoder without its output hook
    sae = tmp_path / "sae"
    _write_saelens(sae, "jumprelu", seed=0)
    with pytest.raises(SAEError, match=r"'jumprelu' is an SAE, not a transcoder.*load_sae"):
        load_transcoders(sae)
    cfg = json.loads((sae / "cfg.json").read_text())
    cfg["architecture"] = "jumprelu_transcoder"
    del cfg["metadata"]["hook_name_out"]
    (sae / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEError, match="names no hook_name_out"):
        load_transcoders(sae)


@pytest.fixture(scope="module")
def model():
    return tiny_model("gemma3", dtype=torch.float32)  # d_model 32, 3 layers


def test_checked_against_the_model(tmp_path, model):
    d = model.d_model
    tc = build("relu", d, F, "mlp_in.1", target="mlp_out.1")
    with pytest.warns(SAEWarning, match=r"every layer 0\.\.1"):  # circuit-tracer would want layer 0 too
        save_transcoders({"mlp_in.1": tc}, tmp_path / "ok", model_name="google/gemma-3-270m")
    assert list(load_transcoders(tmp_path / "ok", model=model)) == ["mlp_in.1"]
    _write_gs2(tmp_path / "narrow" / "layer_1_x", 1)  # 16 wide, the model 32
    with pytest.raises(SAEError, match=r"does not fit.*width d_in=16"):
        load_transcoders(tmp_path / "narrow", model=model)
    _write_gs2(tmp_path / "deep" / "layer_7_x", 7)
    with pytest.raises(SAEError, match=r"does not fit.*mlp_out\.7"):
        load_transcoders(tmp_path / "deep", model=model)
