"""Hook points, batching and metrics on tiny random models of every supported family."""

import json

import pytest
import torch

from attribution import HookError, LogitDiff, ModelLoadError, TokenizationError, load_model, trace
from attribution.metrics import Rows, evaluate
from attribution.models import KINDS
from tests.conftest import PROMPTS, tiny_hf, tiny_model


def test_hook_table_is_uniform(family):
    m = tiny_model(family)
    assert list(m.hooks) == [f"{k}.{layer}" for layer in range(3) for k in KINDS]
    assert m.hook("blocks.1.hook_resid_post").name == "resid_post.1"  # TransformerLens spelling
    with pytest.raises(HookError, match="resid_post"):
        m.hook("resid_post.7")
    with pytest.raises(HookError):
        m.hook("mlp.1")


def test_residual_stream_adds_up(family):
    """resid_post = resid_pre + attn_out + mlp_out, and resid_pre.{L+1} = resid_post.{L}."""
    m = tiny_model(family)
    acts = trace(m, m.tokenize(PROMPTS[0]), capture=list(m.hooks)).acts
    for layer in range(3):
        total = acts[f"resid_pre.{layer}"] + acts[f"attn_out.{layer}"] + acts[f"mlp_out.{layer}"]
        torch.testing.assert_close(total, acts[f"resid_post.{layer}"])
        if layer:
            torch.testing.assert_close(acts[f"resid_pre.{layer}"], acts[f"resid_post.{layer - 1}"])


def test_batched_equals_one_at_a_time(family):
    m = tiny_model(family)
    batch = m.tokenize(PROMPTS)
    assert batch.lengths == [12, 6, 4] and batch.width == 12
    tr = trace(m, batch, capture=["resid_post.1"])
    metric = LogitDiff(m, "sad", "happy")
    rows = Rows.of(batch)
    batched = evaluate(metric, m, tr.hidden, rows)
    for b, p in enumerate(PROMPTS):
        one = trace(m, m.tokenize(p), capture=["resid_post.1"])
        torch.testing.assert_close(tr.acts["resid_post.1"][b, batch.offset(b) :], one.acts["resid_post.1"][0])
        full = metric(m.logits(p))  # full unembedding of a plain HF forward
        torch.testing.assert_close(batched[b : b + 1], full)


def test_logit_diff_position_and_per_prompt_answers(family):
    m = tiny_model(family)
    logits = m.logits(PROMPTS[1])
    metric = LogitDiff(m, ["sad", "tired"], ["happy", "home"], position=2)
    batch = m.tokenize(PROMPTS[:2])
    got = evaluate(metric, m, trace(m, batch).hidden, Rows.of(batch))
    ids = [m.token_id(w) for w in ("tired", "home")]
    torch.testing.assert_close(got[1], logits[0, 2, ids[0]] - logits[0, 2, ids[1]])


def test_bad_inputs_have_clear_errors():
    m = tiny_model("gemma3")
    with pytest.raises(TokenizationError, match=r"is 2 tokens \['sad', 'happy'\]"):
        LogitDiff(m, "sad happy", "happy")
    with pytest.raises(TokenizationError, match="empty prompt"):
        m.tokenize("   ")
    with pytest.raises(TokenizationError, match="longer than the model's context of 64"):
        m.tokenize("the cat ran " * 30)
    with pytest.raises(TokenizationError, match="one of each"):
        LogitDiff(m, ["sad", "happy"], ["happy"])


def test_model_loading_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "missing.gguf")
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        load_model(tmp_path)
    hf = tiny_hf("llama")
    hf.save_pretrained(tmp_path / "m")
    hf.tokenizer.save_pretrained(tmp_path / "m")
    assert load_model(tmp_path / "m").n_layers == 3  # a local folder loads
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="could not load the weights"):
        load_model(tmp_path / "m")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF but truncated")
    with pytest.raises(ModelLoadError, match="could not read GGUF"):
        load_model(bad)


def test_converted_folders_carry_no_null_quantization_config(tmp_path):
    """A dequantised GGUF's config says quantization_config: null; the saved folder drops it, so tools with
    older transformers (circuit-tracer's pin) load it, and it still loads here with every weight equal."""
    from attribution.models.loading import save_portable

    hf = tiny_hf("gemma3")
    hf.config.quantization_config = None  # what the GGUF conversion sets before saving
    save_portable(hf, hf.tokenizer, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == hf.config.model_type
    back = load_model(tmp_path / "m", dtype=torch.float64)
    for (name, a), (_, b) in zip(hf.state_dict().items(), back.hf.state_dict().items()):
        assert torch.equal(a.double(), b.double()), name


def test_final_norm_gain_is_what_the_norm_multiplies_each_dimension_by(family):
    """norm(x) = gain * x / rms(x) for an RMSNorm; the LayerNorm's weight for GPT-2 (which also centres)."""
    m = tiny_model(family)
    with torch.no_grad():
        for p in m.hf.parameters():  # random gains: a freshly built norm's are all ones (or all zeros for gemma)
            if p.ndim == 1:
                p.uniform_(0.5, 2.0)
    gain = m.final_norm_gain
    norm = m.hf.get_submodule(m.family.final_norm)
    assert gain.shape == (m.d_model,)
    if isinstance(norm, torch.nn.LayerNorm):
        assert torch.equal(gain, norm.weight)
    else:
        x = torch.randn(3, m.d_model, dtype=m.dtype)
        rms = x.pow(2).mean(-1, keepdim=True).sqrt()
        assert torch.allclose(norm(x), gain * x / rms, rtol=1e-4)
    assert not torch.allclose(gain, torch.ones_like(gain))
    assert torch.equal(tiny_model(family, linear_head=True).final_norm_gain, torch.ones(m.d_model, dtype=m.dtype))


def test_load_model_leaves_the_callers_model_and_tokenizer_alone():
    """Our Model wraps a copy that shares the weights: eval(), frozen weights and any dtype/device conversion
    happen there, and the pad id lives in our Model, not in the caller's tokenizer."""
    hf = tiny_hf("llama")
    hf.train()
    hf.tokenizer.pad_token, hf.tokenizer.padding_side = None, "right"  # nnsight would set both in place
    params = {n: (p.dtype, p.requires_grad, p.data_ptr()) for n, p in hf.named_parameters()}
    for dtype in (None, torch.float64, "bfloat16"):
        m = load_model(hf, dtype=dtype)
        assert m.dtype == (torch.float32 if dtype is None else {"bfloat16": torch.bfloat16}.get(dtype, dtype))
        assert {n: (p.dtype, p.requires_grad, p.data_ptr()) for n, p in hf.named_parameters()} == params
        assert hf.training and all(mod.training for mod in hf.modules())
        assert hf.tokenizer.pad_token is None and hf.tokenizer.padding_side == "right"
        assert not m.hf.training and not any(p.requires_grad for p in m.hf.parameters())
        assert m.pad_id == hf.tokenizer.eos_token_id
        m.tokenize(["the cat ran", "mary went home and felt"])  # padding works without a pad token
    shared = load_model(hf)  # same dtype: no weight is copied
    assert shared.hf.model.embed_tokens.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    bf16 = tiny_hf("gemma3").to(torch.bfloat16)
    assert load_model(bf16).dtype == torch.bfloat16  # dtype=None keeps the handed model's dtype


@pytest.mark.parametrize("enabled", [True, False])
def test_quiet_load_restores_the_global_progress_settings(tmp_path, enabled):
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    hf = tiny_hf("gpt2")
    hf.save_pretrained(tmp_path)
    hf.tokenizer.save_pretrained(tmp_path)
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    enable_progress_bars()
    disable_progress_bars("huggingface_hub.some_group")  # a caller's per-group choice
    try:

        def state():
            group = are_progress_bars_disabled("huggingface_hub.some_group")
            return hf_logging.is_progress_bar_enabled(), are_progress_bars_disabled(), group

        before = state()
        load_model(tmp_path, progress=False)
        assert state() == before
        assert before[0] is enabled and before[2] is True
    finally:
        hf_logging.enable_progress_bar()
        enable_progress_bars()
