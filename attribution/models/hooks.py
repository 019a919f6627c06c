"""One naming scheme for hook points across model families.

Names are `{kind}.{layer}` with kind in `resid_pre`, `attn_out`, `resid_mid`, `mlp_in`, `mlp_out`,
`resid_post`, in the spirit of TransformerLens (`hook_resid_mid`, `mlp.hook_in`). `resid_mid` is the residual
stream between attention and MLP (the input of the MLP's norm) and `mlp_in` the MLP's normalised input (that
norm's output): where transcoders read. Each name maps to a module of the Hugging Face model and whether
the hook reads that module's input or output (and which element, when the output is a tuple).
`attn_out`/`mlp_out` are what the block adds to the residual stream (after Gemma's post-norms), so
resid_post = resid_pre + attn_out + mlp_out holds for sequential blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

from attribution.errors import HookError, ModelLoadError

KINDS = ("resid_pre", "attn_out", "resid_mid", "mlp_in", "mlp_out", "resid_post")  # execution order in a block


@dataclass(frozen=True)
class HookSpec:
    name: str  # e.g. "resid_post.9"
    layer: int
    kind: str  # one of KINDS
    module: str  # dotted path from the HF model root, e.g. "model.layers.9"
    io: str  # "input" or "output"
    index: int | None = None  # element of a tuple output, or None for a plain tensor

    @property
    def order(self) -> tuple[int, int]:
        """Sort key: hooks run in this order during a forward pass."""
        return (self.layer, KINDS.index(self.kind))


@dataclass(frozen=True)
class Family:
    """Where a model family keeps its blocks, final norm and sub-layer outputs."""

    layers: str  # path of the ModuleList of blocks
    final_norm: str
    attn: tuple[str, int | None]  # (sub-module of a block, tuple index) for attn_out
    mlp: tuple[str, int | None]
    mlp_norm: str  # the norm in front of the MLP: resid_mid is its input, mlp_in its output
    norms: tuple[str, ...] = ()  # a block's RMS norms, in execution order (frozen in replacement graphs)
    norm_offset: float = 0.0  # RMSNorm scales by (offset + weight): Gemma 1.0, Llama 0.0
    qk: tuple[tuple[str, str], ...] = ()  # (module, layout) of the query/key projections (see models.frozen)


_GEMMA_POSTNORM = Family(
    "model.layers",
    "model.norm",
    ("post_attention_layernorm", None),
    ("post_feedforward_layernorm", None),
    "pre_feedforward_layernorm",
    ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"),
    1.0,
    (("self_attn.q_proj", "all"), ("self_attn.k_proj", "all")),
)
_LLAMA_LIKE = Family(
    "model.layers",
    "model.norm",
    ("self_attn", 0),
    ("mlp", None),
    "post_attention_layernorm",
    ("input_layernorm", "post_attention_layernorm"),
    0.0,
    (("self_attn.q_proj", "all"), ("self_attn.k_proj", "all")),
)

FAMILIES: dict[str, Family] = {
    "gemma3_text": _GEMMA_POSTNORM,
    "gemma3": _GEMMA_POSTNORM,
    "gemma2": _GEMMA_POSTNORM,
    "gemma": _LLAMA_LIKE,
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gpt2": Family(
        "transformer.h",
        "transformer.ln_f",
        ("attn", 0),
        ("mlp", None),
        "ln_2",
        ("ln_1", "ln_2"),
        0.0,
        (("attn.c_attn", "thirds"),),
    ),
    "gpt_neox": Family(
        "gpt_neox.layers",
        "gpt_neox.final_layer_norm",
        ("attention", 0),
        ("mlp", None),
        "post_attention_layernorm",
        ("input_layernorm", "post_attention_layernorm"),
        0.0,
        (("attention.query_key_value", "heads"),),
    ),
}


def family_of(model_type: str) -> Family:
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise ModelLoadError(
            f"model family {model_type!r} has no hook-point mapping. Supported: {sorted(FAMILIES)}. "
            "Add an entry to attribution.models.hooks.FAMILIES naming its blocks, final norm, "
            "attention and MLP modules."
        ) from None


def hook_points(model_type: str, n_layers: int) -> dict[str, HookSpec]:
    """Every hook point of a model, in forward-pass order."""
    fam = family_of(model_type)
    specs: dict[str, HookSpec] = {}
    for layer in range(n_layers):
        block = f"{fam.layers}.{layer}"
        for kind, module, io, index in (
            ("resid_pre", block, "input", None),
            ("attn_out", f"{block}.{fam.attn[0]}", "output", fam.attn[1]),
            ("resid_mid", f"{block}.{fam.mlp_norm}", "input", None),
            ("mlp_in", f"{block}.{fam.mlp_norm}", "output", None),
            ("mlp_out", f"{block}.{fam.mlp[0]}", "output", fam.mlp[1]),
            ("resid_post", block, "output", None),
        ):
            name = f"{kind}.{layer}"
            specs[name] = HookSpec(name, layer, kind, module, io, index)
    return specs


def parse_hook(name: str, specs: dict[str, HookSpec]) -> HookSpec:
    """Look a hook name up, accepting TransformerLens spellings such as `blocks.9.hook_resid_post`."""
    if not isinstance(name, str):
        raise HookError(f"a hook name must be a string such as 'resid_post.3', got {type(name).__name__} {name!r}")
    canonical = from_transformerlens(name) or name
    if canonical in specs:
        return specs[canonical]
    n_layers = len(specs) // len(KINDS)
    raise HookError(
        f"unknown hook point {name!r}. Hook names are '<kind>.<layer>' with kind in {list(KINDS)} and "
        f"layer in 0..{n_layers - 1}, e.g. 'resid_post.{n_layers // 2}'."
    )


def from_transformerlens(name: str) -> str | None:
    """`blocks.9.hook_resid_post` -> `resid_post.9`; None for a name not in TransformerLens's spelling."""
    parts = name.split(".")
    if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit() and parts[2].startswith("hook_"):
        kind = parts[2][len("hook_") :]
        if kind in KINDS:
            return f"{kind}.{parts[1]}"
    return None


def canonical(name: str) -> str:
    """A hook name in this library's spelling (TransformerLens spellings converted, others as given)."""
    return (from_transformerlens(name) or name) if isinstance(name, str) else name
