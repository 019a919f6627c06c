"""Hook points, batching and metrics on tiny random models of every supported family."""

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
