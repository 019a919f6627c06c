"""SAE training: the trainer on activation streams (corpus and activation caching come next)."""

from attribution.training.trainer import TrainConfig, TrainLog, fit

__all__ = ["TrainConfig", "TrainLog", "fit"]
