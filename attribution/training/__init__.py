"""SAE training: a corpus, cached activations, the trainer, and held-out evaluation.

Its corpora are also the texts feature indexes are built over: registered here with attribution.explain
("default": the default training corpus, "real": the real-text training split), which imports no training.
"""

from attribution.explain import register_text
from attribution.training import corpus, defaults
from attribution.training.activation_cache import ActivationCache, collect, open_cache
from attribution.training.corpus import real_tokens, sample_tokens, text_tokens
from attribution.training.defaults import default_saes, default_specs
from attribution.training.evaluate import evaluate_sae
from attribution.training.text import real_text
from attribution.training.train import train_sae
from attribution.training.trainer import TrainConfig, TrainLog, fit
from attribution.training.transcoder_defaults import default_transcoders

register_text("default", defaults.index_tokens)
register_text("real", corpus.index_tokens)

__all__ = [
    "ActivationCache",
    "TrainConfig",
    "TrainLog",
    "collect",
    "default_saes",
    "default_specs",
    "default_transcoders",
    "evaluate_sae",
    "fit",
    "open_cache",
    "real_text",
    "real_tokens",
    "sample_tokens",
    "text_tokens",
    "train_sae",
]
