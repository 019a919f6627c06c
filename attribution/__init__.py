"""Circuit attribution and ablation with sparse-autoencoder features.

Data flow: prompt -> model + spliced SAEs (x = decode(f) + e) -> activations and gradients ->
attributions (linear estimates) and ablations (real effects) -> compare.
SAEs are trained by `train_sae` / `default_saes` and explained by `explain`.
"""

from attribution.ablate import Ablation, ablate
from attribution.attribute import Attribution, attribute
from attribution.compare import Agreement, compare
from attribution.compute import compute_dtype, native_bf16
from attribution.engine import trace
from attribution.errors import (
    AttributionError,
    CacheError,
    HookError,
    ModelLoadError,
    NumericalError,
    SAEError,
    TokenizationError,
)
from attribution.explain import FeatureCard, FeatureIndex, explain, feature_index, feature_indexes
from attribution.find import Match, contrast
from attribution.metrics import LogitDiff
from attribution.models import Batch, HookSpec, Model, load_model
from attribution.nodes import Node
from attribution.saes import (
    SAE,
    JumpReLUSAE,
    ReLUSAE,
    TopKSAE,
    WholeActivation,
    load_clt,
    load_sae,
    load_transcoders,
    save_clt,
    save_sae,
    save_transcoders,
)
from attribution.spliced import SplicedRun, run_with_saes
from attribution.training import TrainConfig, default_saes, default_transcoders, train_sae

__all__ = [
    "SAE",
    "Ablation",
    "Agreement",
    "Attribution",
    "AttributionError",
    "Batch",
    "CacheError",
    "FeatureCard",
    "FeatureIndex",
    "HookError",
    "HookSpec",
    "JumpReLUSAE",
    "LogitDiff",
    "Match",
    "Model",
    "ModelLoadError",
    "Node",
    "NumericalError",
    "ReLUSAE",
    "SAEError",
    "SplicedRun",
    "TokenizationError",
    "TopKSAE",
    "TrainConfig",
    "WholeActivation",
    "ablate",
    "attribute",
    "compare",
    "compute_dtype",
    "contrast",
    "default_saes",
    "default_transcoders",
    "explain",
    "feature_index",
    "feature_indexes",
    "load_clt",
    "load_model",
    "load_sae",
    "load_transcoders",
    "native_bf16",
    "run_with_saes",
    "save_clt",
    "save_sae",
    "save_transcoders",
    "trace",
    "train_sae",
]

# Last: register the pages that draw these results (attribution.display). pages imports nothing heavy at
# import time, and nothing below the facades imports pages.
import pages  # noqa: F401
