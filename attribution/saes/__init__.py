"""Sparse autoencoders: one file per architecture behind a registry, the SAELens on-disk format, and transcoder
sets (Gemma Scope 2, circuit-tracer and SAELens folders)."""

from attribution.saes import jumprelu, relu, topk  # noqa: F401  (register the architectures)
from attribution.saes.base import REGISTRY, SAE, build
from attribution.saes.io import SAEWarning, load_sae, model_names, save_sae
from attribution.saes.jumprelu import JumpReLUSAE
from attribution.saes.relu import ReLUSAE
from attribution.saes.topk import TopKSAE
from attribution.saes.transcoders import load_transcoders, save_transcoders
from attribution.saes.whole import WholeActivation

__all__ = [
    "REGISTRY",
    "SAE",
    "JumpReLUSAE",
    "ReLUSAE",
    "SAEWarning",
    "TopKSAE",
    "WholeActivation",
    "build",
    "load_sae",
    "load_transcoders",
    "model_names",
    "save_sae",
    "save_transcoders",
]
