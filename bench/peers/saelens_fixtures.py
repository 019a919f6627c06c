"""Tiny SAE folders written by SAELens itself, with SAELens's own encode/decode outputs, for tests/test_sae_files.py.

Regenerate (deterministic; a few seconds) with the SAELens venv that bench/peers/saelens_side_by_side.py uses:

    python3 -m venv /tmp/saelens-venv && /tmp/saelens-venv/bin/pip install sae-lens torch==2.13.0
    /tmp/saelens-venv/bin/python bench/peers/saelens_fixtures.py          # writes tests/fixtures/saelens/<name>/

Runs only in that venv and imports nothing from this project, so the tests compare our `load_sae` against
SAELens's reading of the same files without installing SAELens (it pulls transformer-lens and pins of its
own). Each folder holds what SAELens saved (`cfg.json`, `sae_weights.safetensors`, and for training
checkpoints `activation_scaler.json` / `activation_whitening.safetensors`) plus `io.safetensors`:
inputs `x`, SAELens's `feature_acts = encode(x)` and `recon = decode(feature_acts)`, and a random sparse
`f_rand` with `decode_rand = decode(f_rand)`. Its metadata records the SAELens and torch versions that made it.
A rerun with the same SAELens rewrites identical tensors; only the order of JSON keys may differ (SAELens
and safetensors write from unordered maps), so `git checkout` the folders whose tensors did not change.

Weights are random (d_in 16, d_sae 32) and chosen to hit the cases that differ between implementations:
negative JumpReLU thresholds, decoder rows far from unit norm (TopK's rescale_acts_by_decoder_norm), a cfg
without apply_b_dec_to_input, a pre-6.0 cfg layout, log_threshold weights, and each normalize_activations
mode SAELens writes. For the training-time normalisations the reference is SAELens's training pipeline:
`scaler.unscale(decode(encode(scaler.scale(x))))`, the function the SAE was trained to compute.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

D_IN, D_SAE, K = 16, 32, 4
HOOK, MODEL_NAME = "blocks.1.hook_resid_post", "tiny-test-model"
OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "saelens"


def _randomize(sae, gen, *, spread_norms: bool = False) -> None:
    """Random weights whose pre-activations straddle zero, so ReLU, thresholds and TopK all matter."""
    import torch

    with torch.no_grad():
        W_dec = torch.randn(D_SAE, D_IN, generator=gen)
        W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True)
        if spread_norms:  # decoder rows from 0.3x to 3x unit norm
            W_dec = W_dec * torch.exp(torch.empty(D_SAE, 1).uniform_(-1.2, 1.1, generator=gen))
        sae.W_dec.copy_(W_dec)
        sae.W_enc.copy_(torch.randn(D_IN, D_SAE, generator=gen) / math.sqrt(D_IN))
        sae.b_enc.copy_(0.3 * torch.randn(D_SAE, generator=gen))
        sae.b_dec.copy_(0.2 * torch.randn(D_IN, generator=gen))


def _metadata():
    from sae_lens.saes.sae import SAEMetadata

    return SAEMetadata(hook_name=HOOK, model_name=MODEL_NAME)


def _inputs(gen):
    import torch

    x = 1.5 * torch.randn(12, D_IN, generator=gen) + 0.3
    f_rand = torch.rand(5, D_SAE, generator=gen) * (torch.rand(5, D_SAE, generator=gen) < 0.2)
    return x, f_rand


def _write_io(folder: Path, encode, decode, gen, note: str) -> None:
    """decode=None for SAELens's per-input normalisations, whose decode needs the state its encode left
    (the input's norm or mean/std): then only x, feature_acts and recon (encode then decode) are written."""
    import sae_lens
    import torch
    from safetensors.torch import save_file

    x, f_rand = _inputs(gen)
    with torch.no_grad():
        if decode is None:
            tensors = {"x": x, "feature_acts": encode(x), "recon": encode.__self__(x)}
        else:
            feature_acts = encode(x)
            tensors = {
                "x": x,
                "feature_acts": feature_acts,
                "recon": decode(feature_acts),
                "f_rand": f_rand,
                "decode_rand": decode(f_rand),
            }
    meta = {"sae_lens_version": sae_lens.__version__, "torch_version": torch.__version__, "note": note}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "io.safetensors"), metadata=meta)


def _inference(folder: Path, cfg_cls, sae_cls, gen, *, spread_norms=False, edit=None, **cfg_kw):
    """An inference SAE saved with save_model; the reference is SAELens's own load_from_disk of the folder."""
    from sae_lens import SAE

    sae = sae_cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, metadata=_metadata(), **cfg_kw))
    _randomize(sae, gen, spread_norms=spread_norms)
    if edit is not None:
        edit(sae, gen)
    sae.save_model(folder)
    return SAE.load_from_disk(folder)


def _edit_cfg(folder: Path, fn) -> None:
    cfg = json.loads((folder / "cfg.json").read_text())
    fn(cfg)
    (folder / "cfg.json").write_text(json.dumps(cfg))


def build_all(out: Path) -> list[str]:
    import torch
    from sae_lens import (
        SAE,
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        JumpReLUSAE,
        JumpReLUSAEConfig,
        JumpReLUTrainingSAE,
        StandardSAE,
        StandardSAEConfig,
        StandardTrainingSAE,
        StandardTrainingSAEConfig,
        TopKSAE,
        TopKSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )
    from sae_lens.training.activation_scaler import ActivationScaler, ActivationWhitening
    from safetensors.torch import load_file, save_file

    made = []

    def fixture(name: str, note: str, make) -> None:
        folder = out / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        gen = torch.Generator().manual_seed(len(made) + 1)
        encode, decode = make(folder, gen)
        _write_io(folder, encode, decode, gen, note)
        made.append(name)

    def plain(sae):
        return sae.encode, sae.decode

    def negative_thresholds(sae, gen):
        with torch.no_grad():  # half the thresholds below zero: SAELens still zeroes negative pre-activations
            sae.threshold.copy_(0.6 * torch.randn(D_SAE, generator=gen))

    fixture(
        "standard",
        "StandardSAE (ReLU), apply_b_dec_to_input=True",
        lambda f, g: plain(_inference(f, StandardSAEConfig, StandardSAE, g, apply_b_dec_to_input=True)),
    )
    fixture(
        "standard_no_b_dec_in",
        "StandardSAE, apply_b_dec_to_input=False",
        lambda f, g: plain(_inference(f, StandardSAEConfig, StandardSAE, g, apply_b_dec_to_input=False)),
    )

    def no_apply_key(folder, gen):
        _inference(folder, StandardSAEConfig, StandardSAE, gen, apply_b_dec_to_input=True)
        _edit_cfg(folder, lambda cfg: cfg.pop("apply_b_dec_to_input"))
        return plain(SAE.load_from_disk(folder))  # SAELens's default for the missing key

    fixture("standard_cfg_without_apply_b_dec", "cfg.json without apply_b_dec_to_input", no_apply_key)
    fixture(
        "jumprelu",
        "JumpReLUSAE with negative thresholds",
        lambda f, g: plain(
            _inference(f, JumpReLUSAEConfig, JumpReLUSAE, g, apply_b_dec_to_input=True, edit=negative_thresholds)
        ),
    )
    fixture(
        "jumprelu_no_b_dec_in",
        "JumpReLUSAE with negative thresholds, apply_b_dec_to_input=False",
        lambda f, g: plain(
            _inference(f, JumpReLUSAEConfig, JumpReLUSAE, g, apply_b_dec_to_input=False, edit=negative_thresholds)
        ),
    )

    def log_threshold(folder, gen):
        def positive(sae, g):
            with torch.no_grad():
                sae.threshold.copy_(0.05 + 0.5 * torch.rand(D_SAE, generator=g))

        _inference(folder, JumpReLUSAEConfig, JumpReLUSAE, gen, apply_b_dec_to_input=False, edit=positive)
        w = load_file(str(folder / "sae_weights.safetensors"))
        w["log_threshold"] = torch.log(w.pop("threshold"))
        save_file(w, str(folder / "sae_weights.safetensors"))
        # SAELens converts log_threshold (exp) when its training class loads the folder
        return plain(JumpReLUTrainingSAE.load_from_disk(folder))

    fixture("jumprelu_log_threshold", "JumpReLU weights storing log_threshold instead of threshold", log_threshold)
    fixture(
        "topk",
        "TopKSAE k=4, rescale_acts_by_decoder_norm=False",
        lambda f, g: plain(_inference(f, TopKSAEConfig, TopKSAE, g, k=K, apply_b_dec_to_input=True)),
    )
    fixture(
        "topk_rescale",
        "TopKSAE k=4, rescale_acts_by_decoder_norm=True with decoder norms 0.3-3",
        lambda f, g: plain(
            _inference(
                f,
                TopKSAEConfig,
                TopKSAE,
                g,
                k=K,
                rescale_acts_by_decoder_norm=True,
                apply_b_dec_to_input=True,
                spread_norms=True,
            )
        ),
    )

    def batchtopk(folder, gen):
        cfg = BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, metadata=_metadata())
        sae = BatchTopKTrainingSAE(cfg)
        _randomize(sae, gen, spread_norms=True)
        sae.topk_threshold = torch.tensor(0.4)
        sae.save_inference_model(folder)  # saved as a JumpReLU SAE with the batch threshold
        return plain(SAE.load_from_disk(folder))

    fixture("batchtopk_inference", "BatchTopK training SAE saved by save_inference_model (as jumprelu)", batchtopk)

    def legacy(activation: str):
        def make(folder, gen):
            sae = StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=_metadata()))
            _randomize(sae, gen)
            w = {k: v.contiguous() for k, v in sae.state_dict().items()}
            w["scaling_factor"] = torch.ones(D_SAE)  # older releases wrote an all-ones scaling factor
            save_file(w, str(folder / "sae_weights.safetensors"))
            cfg = {  # a pre-6.0 cfg: no architecture, no sae_lens_version, no apply_b_dec_to_input
                "model_name": MODEL_NAME,
                "hook_point": HOOK,
                "hook_point_layer": 1,
                "hook_point_head_index": None,
                "d_in": D_IN,
                "d_sae": D_SAE,
                "dtype": "float32",
                "device": "cpu",
                "activation_fn_str": activation,
                "normalize_activations": False,
                "context_size": 128,
            }
            if activation == "topk":
                cfg["activation_fn_kwargs"] = {"k": K}
            (folder / "cfg.json").write_text(json.dumps(cfg))
            return plain(SAE.load_from_disk(folder))

        return make

    fixture("legacy_relu", "pre-6.0 cfg layout (hook_point, activation_fn_str relu)", legacy("relu"))
    fixture("legacy_topk", "pre-6.0 cfg layout (activation_fn_str topk, activation_fn_kwargs k)", legacy("topk"))

    def checkpoint(cfg_cls, sae_cls, scaler_fn, **cfg_kw):
        """A mid-training checkpoint: the training cfg and weights (save_model) plus the activation scaler."""

        def make(folder, gen):
            sae = sae_cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, metadata=_metadata(), **cfg_kw))
            _randomize(sae, gen, spread_norms=True)
            sae.save_model(folder)
            scaler = scaler_fn(gen)
            scaler.save(str(folder / "activation_scaler.json"))
            sae = sae_cls.load_from_disk(folder)
            return (lambda x: sae.encode(scaler.scale(x))), (lambda f: scaler.unscale(sae.decode(f)))

        return make

    fixture(
        "topk_checkpoint_expected_average",
        "TopK training checkpoint, normalize_activations=expected_average_only_in, activation_scaler.json",
        checkpoint(
            TopKTrainingSAEConfig,
            TopKTrainingSAE,
            lambda g: ActivationScaler(scaling_factor=2.7),
            k=K,
            normalize_activations="expected_average_only_in",
        ),
    )

    def whitening(gen):
        A = torch.randn(D_IN, D_IN, generator=gen) / math.sqrt(D_IN) + torch.eye(D_IN)
        return ActivationScaler(
            whitening=ActivationWhitening(
                mean=0.3 * torch.randn(D_IN, generator=gen), matrix=A, inverse_matrix=torch.linalg.inv(A)
            )
        )

    for b_dec_in in (True, False):
        fixture(
            "standard_checkpoint_whitening" + ("" if b_dec_in else "_no_b_dec_in"),
            f"Standard training checkpoint, covariance_whitening, apply_b_dec_to_input={b_dec_in}",
            checkpoint(
                StandardTrainingSAEConfig,
                StandardTrainingSAE,
                whitening,
                normalize_activations="covariance_whitening",
                apply_b_dec_to_input=b_dec_in,
            ),
        )

    for mode in ("constant_norm_rescale", "layer_norm", "expected_average_only_in"):
        stateful = mode != "expected_average_only_in"  # its decode needs what its encode saw
        fixture(  # per-input normalisations, and a scale that is not in the folder: ours refuses these
            f"standard_{mode}",
            f"StandardSAE, normalize_activations={mode} (SAELens's own encode/decode)",
            lambda f, g, mode=mode, stateful=stateful: (lambda sae: (sae.encode, None if stateful else sae.decode))(
                _inference(f, StandardSAEConfig, StandardSAE, g, normalize_activations=mode)
            ),
        )
    return made


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(OUT), help="folder for the fixtures (default %(default)s)")
    args = ap.parse_args()
    made = build_all(Path(args.out))
    print(f"wrote {len(made)} fixtures to {args.out}: {', '.join(made)}")


if __name__ == "__main__":
    main()
