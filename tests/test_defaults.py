"""default_saes on a tiny model: the layer plan, one shared corpus, training once, then loading from the cache."""

import dataclasses

import pytest
import torch

import attribution.training.defaults as defaults
from attribution import AttributionError, TopKSAE, default_saes
from tests.conftest import tiny_model


@pytest.fixture
def model(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTRIBUTION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(defaults, "CORPUS", "sampled")  # no network: the tiny model's own samples
    monkeypatch.setattr(defaults, "SEQ_LEN", 16)
    monkeypatch.setattr(defaults, "BATCH_WINDOWS", 8)
    real = defaults.default_specs

    def quick(model):  # the real plan, with a corpus a tiny model can afford
        return {h: dataclasses.replace(s, tokens=24_000, lr=3e-3) for h, s in real(model).items()}

    monkeypatch.setattr(defaults, "default_specs", quick)
    return tiny_model("gemma3", dtype=torch.float32)


def test_layer_plan():
    m = tiny_model("gemma3", dtype=torch.float32)
    specs = defaults.default_specs(m)  # 3 layers: every other one (0) and the middle one (1), which is wider
    assert list(specs) == ["resid_post.0", "resid_post.1"]
    assert specs["resid_post.1"].d_sae == 4 * specs["resid_post.0"].d_sae


def test_default_saes_train_once_then_load(model, monkeypatch):
    with pytest.raises(AttributionError, match="python -m attribution saes"):
        default_saes(model, train=False)
    saes = default_saes(model, progress=False)
    assert list(saes) == ["resid_post.0", "resid_post.1"]
    for hook, sae in saes.items():
        assert isinstance(sae, TopKSAE) and sae.hook == hook and sae.k == 32
        ev = sae.meta["eval"]
        assert ev["explained_variance"] > 0.3 and ev["l0"] <= 32 and ev["ce_zero"] > ev["ce_sae"]

    def no_training(*a, **k):
        raise AssertionError("cached default SAEs should not be retrained")

    monkeypatch.setattr(defaults, "_train", no_training)
    again = default_saes(model, ["resid_post.1"], train=False)
    assert torch.equal(again["resid_post.1"].W_dec, saes["resid_post.1"].W_dec)


def test_default_saes_bad_hooks(model):
    with pytest.raises(AttributionError, match="residual stream"):
        default_saes(model, ["mlp_out.1"], progress=False)
    with pytest.raises(AttributionError, match=r"resid_post\.7"):
        default_saes(model, ["resid_post.7"], progress=False)


def test_quick_dictionary_serves_the_middle_hook_until_the_full_set_is_built(model, monkeypatch, capsys):
    from cases import sources

    assert not defaults.is_built(model)
    saes = sources.resolve_saes(model, "default", ["middle"], progress=False)
    (sae,) = saes.values()
    assert sae.hook == "resid_post.1" and sae.meta["default_spec"]["quick"] and sae.meta["corpus"]["train_tokens"]
    assert "using the quick dictionary" in capsys.readouterr().err
    assert "(the quick dictionary)" in sources.describe(sae)
    assert not defaults.is_built(model, ["resid_post.1"])  # the quick one is not the full default
    default_saes(model, progress=False)
    assert defaults.is_built(model)
    (full,) = sources.resolve_saes(model, "default", ["middle"], progress=False).values()
    assert full.d_sae == defaults.default_specs(model)["resid_post.1"].d_sae and not full.meta["default_spec"]["quick"]
    assert "quick" not in capsys.readouterr().err


def test_default_transcoders_train_once_then_load(model, monkeypatch):
    import attribution.training.transcoder_defaults as transcoders

    with pytest.raises(AttributionError, match="python -m attribution transcoders"):
        transcoders.default_transcoders(model, train=False)
    tcs = transcoders.default_transcoders(model, progress=False, tokens=8_000, d_sae=64, k=8)
    assert list(tcs) == [f"resid_mid.{L}" for L in range(model.n_layers)]
    for hook, tc in tcs.items():
        assert tc.is_transcoder and tc.target == hook.replace("resid_mid", "mlp_out") and tc.W_skip is not None
        assert tc.meta["eval"]["l0"] <= 8

    def no_training(*a, **k):
        raise AssertionError("cached default transcoders should not be retrained")

    monkeypatch.setattr(transcoders, "_train", no_training)
    again = transcoders.default_transcoders(model, [1], progress=False, tokens=8_000, d_sae=64, k=8)
    assert torch.equal(again["resid_mid.1"].W_dec, tcs["resid_mid.1"].W_dec)


def test_more_tokens_continue_the_set_trained_on_fewer(model, monkeypatch):
    """`attribution transcoders --tokens N`: a set of the same recipe trained on fewer tokens is continued
    from its kept state (only the batches it did not cover are run), and its state replaced by the new one."""
    import attribution.training.stream as stream
    import attribution.training.transcoder_defaults as transcoders

    recipe = {"d_sae": 64, "k": 8}
    first = transcoders.default_transcoders(model, progress=False, tokens=4_000, **recipe)
    states = transcoders.kept_states(model, transcoders.default_transcoder_specs(model, tokens=4_000, **recipe))
    assert states[4_000].is_file() and first["resid_mid.0"].meta["corpus"]["continued_from"] is None
    batches = []
    real = stream._continue
    monkeypatch.setattr(stream, "_continue", lambda *a: (batches.append(n := real(*a)), n)[1])
    more = transcoders.default_transcoders(model, progress=False, tokens=8_000, **recipe)
    per_batch = defaults.BATCH_WINDOWS * (defaults.SEQ_LEN - 1)
    assert batches == [-(-4_000 // per_batch)]  # the first set's batches were not run again
    tc = more["resid_mid.0"]
    assert tc.meta["corpus"]["continued_from"] == 4_000 and tc.meta["training"]["tokens_seen"] >= 8_000
    assert not torch.equal(tc.W_dec, first["resid_mid.0"].W_dec)
    states = transcoders.kept_states(model, transcoders.default_transcoder_specs(model, tokens=8_000, **recipe))
    assert sorted(t for t, f in states.items() if f.is_file()) == [8_000]  # the older state is superseded
    other = transcoders.default_transcoders(model, progress=False, tokens=8_000, d_sae=64, k=4)  # another recipe
    assert other["resid_mid.0"].meta["corpus"]["continued_from"] is None
