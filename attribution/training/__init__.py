"""SAE training: a corpus, cached activations, the trainer, and held-out evaluation."""

from attribution.training.activations import ActivationCache, collect, open_cache
from attribution.training.corpus import sample_tokens, text_tokens
from attribution.training.defaults import default_saes, default_specs
from attribution.training.evaluate import evaluate_sae
from attribution.training.text import real_text, real_tokens
from attribution.training.train import train_sae
from attribution.training.trainer import TrainConfig, TrainLog, fit

__all__ = [
    "ActivationCache",
    "TrainConfig",
    "TrainLog",
    "collect",
    "default_saes",
    "default_specs",
    "evaluate_sae",
    "fit",
    "open_cache",
    "real_text",
    "real_tokens",
    "sample_tokens",
    "text_tokens",
    "train_sae",
]
