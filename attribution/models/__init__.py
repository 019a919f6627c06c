"""Models: loading (embedded default, folders, GGUF, hubs) and uniform hook points."""

from attribution.models.hooks import KINDS, HookSpec, hook_points
from attribution.models.loading import cache_dir, load_model
from attribution.models.model import Batch, Model

__all__ = ["KINDS", "Batch", "HookSpec", "Model", "cache_dir", "hook_points", "load_model"]
