"""The sparsify format (attribution.saes.formats.sparsify, which bench/peers/sparsify_side_by_side.py and
sparsify_transcoder_side_by_side.py use): a sparsify TopK SparseCoder (autoencoder or transcoder) converted into our
TopKSAE, on random weights shaped like sparsify's (no sparsify install needed:
its eager forward is a few lines, written out below)."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from attribution import load_sae
from attribution.errors import SAEError
from attribution.saes.formats.sparsify import convert, from_sparsify

D_IN, D_SAE, K = 16, 64, 4


def their_state(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(D_SAE, D_IN, generator=g)
    return {
        "encoder.weight": torch.randn(D_SAE, D_IN, generator=g) / D_IN**0.5,  # nn.Linear: [out, in]
        "encoder.bias": torch.randn(D_SAE, generator=g) * 0.1,
        "W_dec": w_dec / w_dec.norm(dim=1, keepdim=True),  # unit rows, as it keeps them
        "b_dec": torch.randn(D_IN, generator=g) * 3,
    }


def their_forward(state: dict, x: torch.Tensor) -> torch.Tensor:
    """sparsify 1.3.3's SparseCoder.forward output (sae_out) for an autoencoder: fused_encoder on x - b_dec
    (relu(linear) then topk), then eager_decode (embedding_bag over W_dec's rows) + b_dec."""
    pre = F.relu(F.linear(x - state["b_dec"], state["encoder.weight"], state["encoder.bias"]))
    acts, idx = pre.topk(K, dim=-1, sorted=False)
    return F.embedding_bag(idx, state["W_dec"], per_sample_weights=acts, mode="sum") + state["b_dec"]


def test_converted_sae_computes_their_forward(tmp_path):
    state = their_state()
    cfg = {"activation": "topk", "k": K, "num_latents": D_SAE, "transcode": False, "d_in": D_IN}
    save_file(state, str(tmp_path / "sae.safetensors"))  # the two files its save_to_disk writes
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    sae = from_sparsify(tmp_path, "resid_post.9")
    assert (sae.d_in, sae.d_sae, sae.k, sae.apply_b_dec_to_input) == (D_IN, D_SAE, K, True)
    x = torch.randn(200, D_IN, generator=torch.Generator().manual_seed(1)) * 4 + 2
    x_hat, f = sae(x)
    torch.testing.assert_close(x_hat, their_forward(state, x), rtol=1e-5, atol=1e-5)
    assert int((f != 0).sum(-1).max()) <= K
    loaded = load_sae(tmp_path, hook="blocks.9.hook_resid_post")  # load_sae finds the format; its cfg names no hook
    assert loaded.hook == "resid_post.9"
    torch.testing.assert_close(loaded(x)[0], x_hat, rtol=0, atol=0)
    with pytest.raises(SAEError, match=r"sparsify SAE.*pass hook="):
        load_sae(tmp_path)


def their_transcoder_forward(state: dict, x: torch.Tensor) -> torch.Tensor:
    """sparsify 1.3.3's SparseCoder.forward output for a transcoder (cfg transcode): the encoder reads x itself
    (no b_dec subtracted), eager decode + b_dec, then the skip connection x @ W_skip.mT where it has one."""
    pre = F.relu(F.linear(x, state["encoder.weight"], state["encoder.bias"]))
    acts, idx = pre.topk(K, dim=-1, sorted=False)
    out = F.embedding_bag(idx, state["W_dec"], per_sample_weights=acts, mode="sum") + state["b_dec"]
    return out + x @ state["W_skip"].mT if "W_skip" in state else out


@pytest.mark.parametrize("skip", [True, False])
def test_converted_transcoder_computes_their_forward(tmp_path, skip):
    g = torch.Generator().manual_seed(2)
    state = their_state()
    state["W_dec"] = torch.randn(D_SAE, D_IN, generator=g) * 0.3  # a transcoder's rows are not renormalised
    if skip:
        state["W_skip"] = torch.randn(D_IN, D_IN, generator=g) * 0.2  # [d_out, d_in]: not symmetric, so the
    cfg = {"k": K, "num_latents": D_SAE, "transcode": True, "skip_connection": skip, "d_in": D_IN}  # layout counts
    save_file(state, str(tmp_path / "sae.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    tc = from_sparsify(tmp_path, "resid_mid.9", target="mlp_out.9")
    assert (tc.hook, tc.target, tc.is_transcoder, tc.apply_b_dec_to_input) == ("resid_mid.9", "mlp_out.9", True, False)
    assert (tc.W_skip is not None) == skip
    x = torch.randn(200, D_IN, generator=torch.Generator().manual_seed(1)) * 4 + 2
    y, f = tc(x)
    torch.testing.assert_close(y, their_transcoder_forward(state, x), rtol=1e-5, atol=1e-5)
    assert int((f != 0).sum(-1).max()) <= K
    with pytest.raises(SAEError, match="target="):
        from_sparsify(tmp_path, "resid_mid.9")  # its cfg.json does not say what it writes
    with pytest.raises(SAEError, match="from_sparsify"):
        load_sae(tmp_path, hook="resid_mid.9")


def test_other_sparse_coders_are_refused():
    state = their_state()
    with pytest.raises(SAEError, match="target="):
        convert(state, {"k": K, "transcode": True}, "resid_post.9")
    with pytest.raises(SAEError):
        convert(state, {"k": K, "activation": "groupmax"}, "resid_post.9")
    with pytest.raises(SAEError):
        convert({**state, "W_skip": torch.zeros(D_IN, D_IN)}, {"k": K}, "resid_post.9")
    with pytest.raises(SAEError):
        convert(state, {"k": K}, "resid_post.9", target="mlp_out.9")
