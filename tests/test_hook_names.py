"""The one table of hook-point spellings (attribution.models.hooks): ours, TransformerLens's, circuit-tracer's and
Hugging Face module paths (SAELens's hf_hook_name, Gemma Scope 2's hf_hook_point_in/out), read and written for every
kind in every family; TransformerLens's `hook_mlp_in` trap; names with no equivalent; and the SAE files that use it."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from attribution import HookError, SAEError, load_sae, load_transcoders, save_sae
from attribution.models.hooks import (
    FAMILIES,
    KINDS,
    STYLES,
    canonical,
    family_from_model_name,
    from_transformerlens,
    hook_points,
    parse_hook,
    spelling,
    to_hook,
)
from tests.conftest import random_sae, tiny_model

SAELENS = Path(__file__).parent / "fixtures" / "saelens"


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_every_kind_round_trips_through_every_spelling(model_type):
    fam, specs = FAMILIES[model_type], hook_points(model_type, 3)
    for kind in KINDS:
        hook = f"{kind}.2"
        for style in STYLES:
            written = spelling(hook, style, fam)
            read = f"blocks.2.{written}" if style == "circuit-tracer" else written  # relative to the block
            assert to_hook(read, fam) == hook, (style, written)
            assert to_hook(read, specs) == hook, (style, written)
            assert parse_hook(read, specs).name == hook, (style, written)
        spec = specs[hook]
        assert spelling(hook, "hf", fam) == f"{spec.module}.{spec.io}"  # the module the hook reads
        for tl in ("transformerlens", "circuit-tracer", "ours"):  # these do not depend on the family
            assert spelling(hook, tl) == spelling(hook, tl, fam)


def test_the_transformerlens_hook_mlp_in_trap():
    # TransformerLens's hook_mlp_in is resid_mid.clone() fed to ln2: the residual BEFORE the MLP's norm
    for read in (to_hook, from_transformerlens, canonical):
        assert read("blocks.9.hook_mlp_in") == "resid_mid.9"
        assert read("blocks.9.hook_resid_mid") == "resid_mid.9"
    # our mlp_in (the norm's scaled output, what the MLP reads) is circuit-tracer's mlp.hook_in
    assert to_hook("blocks.9.mlp.hook_in") == "mlp_in.9"
    assert spelling("mlp_in.9", "transformerlens") == "blocks.9.mlp.hook_in"
    assert spelling("mlp_in.9", "circuit-tracer") == "mlp.hook_in"
    assert spelling("resid_mid.9", "transformerlens") == "blocks.9.hook_resid_mid"
    assert spelling("mlp_in.9", "hf", FAMILIES["gemma3"]) == "model.layers.9.pre_feedforward_layernorm.output"
    assert spelling("mlp_in.9", "hf", FAMILIES["llama"]) == "model.layers.9.post_attention_layernorm.output"
    assert spelling("mlp_in.9", "hf", FAMILIES["gpt2"]) == "transformer.h.9.ln_2.output"
    m = tiny_model("gemma3")
    assert m.hook("blocks.1.hook_mlp_in").name == "resid_mid.1"
    assert m.hook("blocks.1.mlp.hook_in").name == "mlp_in.1"
    assert m.hook("model.layers.1.pre_feedforward_layernorm.output").name == "mlp_in.1"
    assert tiny_model("llama").hook("model.layers.1.post_attention_layernorm.output").name == "mlp_in.1"


def test_names_with_no_equivalent_say_why():
    gemma, llama = FAMILIES["gemma3"], FAMILIES["llama"]
    with pytest.raises(HookError, match="before its learned scale"):
        to_hook("blocks.3.ln2.hook_normalized")
    with pytest.raises(HookError, match="before the post-feedforward norm"):
        to_hook("blocks.3.mlp.hook_out", gemma)
    assert to_hook("blocks.3.mlp.hook_out", llama) == "mlp_out.3"  # nothing follows Llama's MLP
    with pytest.raises(HookError, match="before the post-feedforward norm"):
        to_hook("model.layers.3.mlp.output", gemma)
    with pytest.raises(HookError, match="before the post-attention norm"):
        to_hook("model.layers.3.self_attn.output", gemma)
    assert to_hook("model.layers.3.mlp.output", llama) == "mlp_out.3"
    # a module path that means different points in different families needs the family
    with pytest.raises(HookError, match=r"depends on the model family.*attn_out\.3.*mlp_in\.3"):
        to_hook("model.layers.3.post_attention_layernorm.output")
    assert to_hook("model.layers.3.post_attention_layernorm.output", gemma) == "attn_out.3"
    assert to_hook("model.layers.3.post_attention_layernorm.output", llama) == "mlp_in.3"
    ambiguous = "model.layers.3.post_attention_layernorm.output"
    assert canonical(ambiguous) == ambiguous  # canonical never raises: a name it cannot convert stays as given
    with pytest.raises(HookError, match="has no equivalent here"):
        to_hook("blocks.3.attn.hook_pattern")
    assert to_hook("blocks.3.attn.hook_z") == "attn_z.3"  # the heads' outputs, concatenated (graphs.heads)
    with pytest.raises(HookError, match="must be a string"):
        to_hook(3)
    with pytest.raises(HookError, match="depends on the model family"):
        spelling("mlp_in.3", "hf")
    with pytest.raises(HookError, match="unknown hook spelling style"):
        spelling("mlp_in.3", "nnsight")
    m = tiny_model("gemma3")
    with pytest.raises(HookError, match=r"unknown hook point 'blocks\.1\.ln2\.hook_normalized'.*learned scale"):
        m.hook("blocks.1.ln2.hook_normalized")
    with pytest.raises(HookError, match=r"unknown hook point.*post-feedforward norm"):
        m.hook("model.layers.1.mlp.output")
    assert family_from_model_name("google/gemma-3-270m") is gemma
    assert family_from_model_name("Qwen/Qwen3-0.6B") is llama and family_from_model_name("tiny") is None


def test_saelens_hook_mlp_in_loads_before_the_norm(tmp_path):
    """A SAELens SAE trained at TransformerLens's blocks.L.hook_mlp_in reads the residual before the MLP's norm."""
    folder = Path(shutil.copytree(SAELENS / "standard", tmp_path / "standard"))
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["metadata"]["hook_name"] = "blocks.1.hook_mlp_in"
    (folder / "cfg.json").write_text(json.dumps(cfg))
    assert load_sae(folder).hook == "resid_mid.1"
    cfg["metadata"]["hook_name"] = "blocks.1.ln2.hook_normalized"
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEError, match=r"before its learned scale.*pass hook="):
        load_sae(folder)


def test_save_sae_writes_the_same_point_in_transformerlens_spelling(tmp_path):
    m = tiny_model("gemma3")
    sae = random_sae(m, "mlp_in.1")
    folder = save_sae(sae, tmp_path / "mlp_in")
    text = (folder / "cfg.json").read_text()
    assert "hook_mlp_in" not in text
    cfg = json.loads(text)
    assert cfg["metadata"]["hook_name"] == "blocks.1.mlp.hook_in" and cfg["hook"] == "mlp_in.1"
    assert load_sae(folder, model=m).hook == "mlp_in.1"
    del cfg["hook"]  # as a reader without our field sees it: metadata.hook_name alone names the same point
    (folder / "cfg.json").write_text(json.dumps(cfg))
    assert load_sae(folder, model=m).hook == "mlp_in.1"
    for hook in ("resid_mid.2", "resid_post.0"):
        cfg = json.loads((save_sae(random_sae(m, hook), tmp_path / hook) / "cfg.json").read_text())
        assert to_hook(cfg["metadata"]["hook_name"]) == hook


def test_saelens_transcoder_at_hook_mlp_in_reads_resid_mid(tmp_path):
    d, f = 16, 24
    g = torch.Generator().manual_seed(0)
    t = {"W_enc": torch.randn(d, f, generator=g), "W_dec": torch.randn(f, d, generator=g)}
    t |= {"b_enc": torch.randn(f, generator=g), "b_dec": torch.randn(d, generator=g)}
    tmp_path.joinpath("tc").mkdir()
    save_file(t, str(tmp_path / "tc" / "sae_weights.safetensors"))
    meta = {"hook_name": "blocks.2.hook_mlp_in", "hook_name_out": "blocks.2.hook_mlp_out"}
    cfg = {"architecture": "transcoder", "d_in": d, "d_sae": f, "apply_b_dec_to_input": False, "metadata": meta}
    (tmp_path / "tc" / "cfg.json").write_text(json.dumps(cfg))
    assert list(load_transcoders(tmp_path / "tc")) == ["resid_mid.2"]
    # Hugging Face names are read with the family: the model's, or the one its model_name says
    meta |= {"hf_hook_name": "model.layers.2.post_attention_layernorm.output", "model_name": "meta-llama/Llama-3.2-1B"}
    meta["hf_hook_name_out"] = "model.layers.2.mlp.output"
    (tmp_path / "tc" / "cfg.json").write_text(json.dumps(cfg))
    tc = load_transcoders(tmp_path / "tc")["mlp_in.2"]
    assert tc.target == "mlp_out.2"
    meta["model_name"] = "tiny"
    (tmp_path / "tc" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEError, match="depends on the model family"):
        load_transcoders(tmp_path / "tc")
