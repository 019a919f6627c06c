"""Errors that name the problem and the fix.

Every user-facing failure (bad answer word, mismatched SAE, missing weights, NaNs) is raised as one of
these, so a user never has to read a traceback from deep inside torch to learn what went wrong.
"""


class AttributionError(ValueError):
    """Base class: a problem with the user's input or files, with the fix in the message."""


class TokenizationError(AttributionError):
    """An answer word is not exactly one token, or a prompt is empty or too long."""


class HookError(AttributionError):
    """A hook-point name the model does not have."""


class SAEError(AttributionError):
    """An SAE that does not fit the model, or whose files are missing or corrupt."""


class ModelLoadError(AttributionError):
    """Model weights that are missing or corrupt, or a model family we cannot map."""


class CacheError(AttributionError):
    """A cached entry that is truncated or corrupt: the message names it and how to remove it."""


class NumericalError(AttributionError, ArithmeticError):
    """NaN or inf appeared in activations, gradients or the metric."""


def check_finite(tensor, what: str) -> None:
    """Raise NumericalError if `tensor` holds NaN/inf, naming where it appeared."""
    import torch

    if not torch.isfinite(tensor).all():
        n_bad = int((~torch.isfinite(tensor)).sum())
        raise NumericalError(
            f"{what} contains {n_bad} NaN/inf value(s). Check the model and SAE weights for NaNs "
            "(load_sae checks its own), and run in float32 if you used a low-precision dtype."
        )
