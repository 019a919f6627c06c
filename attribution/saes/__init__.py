"""Sparse autoencoders: one file per architecture behind a registry (with its typed options), and one file per
on-disk format (attribution.saes.formats: ours, SAELens, Gemma Scope 2, circuit-tracer, sparsify) behind
load_sae / save_sae, load_transcoders / save_transcoders and load_clt / save_clt (cross-layer transcoders)."""

from attribution.saes import jumprelu, relu, topk  # noqa: F401  (register the architectures)
from attribution.saes.base import REGISTRY, SAE, Options, build
from attribution.saes.clt import CrossLayerTranscoder
from attribution.saes.io import SAEWarning, load_sae, model_names, save_sae
from attribution.saes.jumprelu import JumpReLUSAE
from attribution.saes.relu import ReLUSAE
from attribution.saes.topk import TopKOptions, TopKSAE
from attribution.saes.transcoders import load_clt, load_transcoders, save_clt, save_transcoders
from attribution.saes.whole import WholeActivation

__all__ = [
    "REGISTRY",
    "SAE",
    "CrossLayerTranscoder",
    "JumpReLUSAE",
    "Options",
    "ReLUSAE",
    "SAEWarning",
    "TopKOptions",
    "TopKSAE",
    "WholeActivation",
    "build",
    "load_clt",
    "load_sae",
    "load_transcoders",
    "model_names",
    "save_clt",
    "save_sae",
    "save_transcoders",
]
