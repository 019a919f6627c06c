"""Circuit attribution and ablation with sparse-autoencoder features.

Data flow: prompt -> model + spliced SAEs (x = decode(f) + e) -> activations and gradients ->
attributions (linear estimates) and ablations (real effects) -> compare.
"""

from attribution.ablate import Ablation, ablate
from attribution.attribute import Attribution, attribute
from attribution.compare import Agreement, compare
from attribution.errors import (
    AttributionError,
    HookError,
    ModelLoadError,
    NumericalError,
    SAEError,
    TokenizationError,
)
from attribution.metrics import LogitDiff
from attribution.models import Batch, HookSpec, Model, load_model
from attribution.nodes import Node
from attribution.saes import SAE, JumpReLUSAE, ReLUSAE, TopKSAE, WholeActivation, load_sae, save_sae
from attribution.splice import SplicedRun, run_with_saes, trace

__all__ = [
    "SAE",
    "Ablation",
    "Agreement",
    "Attribution",
    "AttributionError",
    "Batch",
    "HookError",
    "HookSpec",
    "JumpReLUSAE",
    "LogitDiff",
    "Model",
    "ModelLoadError",
    "Node",
    "NumericalError",
    "ReLUSAE",
    "SAEError",
    "SplicedRun",
    "TokenizationError",
    "TopKSAE",
    "WholeActivation",
    "ablate",
    "attribute",
    "compare",
    "load_model",
    "load_sae",
    "run_with_saes",
    "save_sae",
    "trace",
]
