"""Where a case study's model and SAEs come from, with every input checked before anything slow runs.

`saes` may be "default" (the project's trained SAEs, trained on first use and cached), "whole" (the
featureless WholeActivation dictionary: classic activation patching, no training needed), a folder path,
a list of paths and/or SAE objects, or a {hook: SAE} dict.
"""

from __future__ import annotations

import sys
from pathlib import Path


def check_prompt(prompt) -> str:
    """Reject an empty prompt before a model is even loaded."""
    from attribution import TokenizationError

    if not isinstance(prompt, str):
        raise TokenizationError(f"the prompt must be a string, got {type(prompt).__name__} {prompt!r:.60}; pass text")
    if not prompt.strip():
        raise TokenizationError(f"empty prompt {prompt!r}: give some text to attribute, e.g. --prompt 'John feels'")
    return prompt


def resolve_model(model, progress: bool = True):
    """A loaded `attribution.Model` from anything `load_model` accepts (None: the embedded default)."""
    from attribution import Model, load_model

    return model if isinstance(model, Model) else load_model(model, progress=progress)


def check_hooks(model, hooks) -> list[str] | None:
    """Canonical names of `hooks` (a list or a comma-separated string); HookError for unknown ones.
    "middle" names the residual stream after the middle block, where the paper's single-layer studies live."""
    if hooks is None:
        return None
    if isinstance(hooks, str):
        hooks = [h.strip() for h in hooks.split(",") if h.strip()]
    from attribution.training.defaults import middle_hook

    hooks = [middle_hook(model) if h == "middle" else h for h in hooks]
    return [model.hook(h).name for h in hooks]


def resolve_saes(model, saes, hooks: list[str] | None = None, *, quick: bool = True, progress: bool = True) -> dict:
    """{hook: SAE} in forward order, checked against `model`; `hooks` restricts (or, for "default" and
    "whole", chooses) the hooks. quick: for "default" at the middle hook alone while the full default SAEs
    are not built, the quick dictionary (minutes to train, where the full set takes ~25 min), said so on
    stderr and in the SAE's description."""
    from attribution import SAE, SAEError, WholeActivation, load_sae
    from attribution.splice import prepare_saes

    hooks = check_hooks(model, hooks)
    if saes is None:
        saes = "default"
    if isinstance(saes, str | Path) and str(saes) in ("default", "whole"):
        if str(saes) == "whole":
            return prepare_saes(
                model, WholeActivation.at(model, hooks or [f"resid_post.{i}" for i in range(model.n_layers)])
            )
        try:
            from attribution import default_saes
        except ImportError as exc:
            raise SAEError(
                f"the default SAEs are not available in this installation ({exc}); "
                "pass SAE folders (--saes PATH) or --saes whole"
            ) from None
        from attribution.training.defaults import is_built, middle_hook, quick_sae

        if quick and hooks == [middle_hook(model)] and not is_built(model, hooks):
            sae = quick_sae(model, progress=progress)
            print(
                f"using the quick dictionary at {sae.hook} ({sae.d_sae} features, "
                f"{sae.meta['corpus']['train_tokens']:,} training tokens): the full default SAEs are not built "
                "yet; `python -m attribution saes` builds them (~37 min on a 2-core AMX CPU), and later runs "
                "use them",
                file=sys.stderr,
            )
            return prepare_saes(model, {sae.hook: sae})
        return prepare_saes(model, default_saes(model, hooks, progress=progress))
    if isinstance(saes, str | Path | SAE):
        saes = [saes]
    if not isinstance(saes, dict):
        items = list(saes)
        if any(str(s) in ("default", "whole") for s in items if isinstance(s, str | Path)):
            raise SAEError("'default' and 'whole' stand alone: do not mix them with SAE folders")
        loaded = [s if isinstance(s, SAE) else load_sae(s, model=model) for s in items]
        saes = {}
        for s in loaded:
            name = model.hook(s.hook).name
            if name in saes:
                raise SAEError(f"two SAEs given for {name}: give one SAE per hook")
            saes[name] = s
    saes = prepare_saes(model, saes)
    if not saes:
        raise SAEError("no SAEs given: pass at least one SAE folder, 'default' or 'whole'")
    if hooks is not None:
        missing = [h for h in hooks if h not in saes]
        if missing:
            raise SAEError(f"no SAE at {missing}; the SAEs given are at {list(saes)}")
        saes = {h: s for h, s in saes.items() if h in hooks}
    return saes


def describe(sae) -> str:
    """One line about an SAE for the report: architecture, width, and its held-out quality if recorded."""
    if sae.d_sae == 0:
        return "whole activation (no features)"
    meta = getattr(sae, "meta", {}) or {}
    quick = " (the quick dictionary)" if meta.get("default_spec", {}).get("quick") else ""
    text = f"{sae.architecture} SAE{quick}, {sae.d_sae} features"
    evals = meta.get("eval", meta)
    bits = [
        f"{name} {evals[key]:.3g}"
        for key, name in (("explained_variance", "EV"), ("l0", "L0"), ("ce_loss_recovered", "CE recovered"))
        if isinstance(evals.get(key), int | float)
    ]
    return text + (f" ({', '.join(bits)})" if bits else "")
