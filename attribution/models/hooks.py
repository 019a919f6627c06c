"""One naming scheme for hook points across model families, and the one table of every other spelling of them.

Names are `{kind}.{layer}` with kind in `resid_pre`, `attn_z`, `attn_out`, `resid_mid`, `mlp_in`, `mlp_out`,
`resid_post`, in the spirit of TransformerLens (`hook_resid_mid`, `mlp.hook_in`). `resid_mid` is the residual
stream between attention and MLP (the input of the MLP's norm) and `mlp_in` the MLP's normalised input (that
norm's output, after its learned scale): what the MLP reads, and where transcoders read. Each name maps to a
module of the Hugging Face model and whether the hook reads that module's input or output (and which element,
when the output is a tuple). `attn_out`/`mlp_out` are what the block adds to the residual stream (after Gemma's
post-norms), so resid_post = resid_pre + attn_out + mlp_out holds for sequential blocks. `attn_z` is the input of
the attention's output projection: every head's output (pattern times values) concatenated, head h at columns
h*d_head..(h+1)*d_head (width n_heads * d_head, not d_model): where edges are split by head (graphs.heads).

Other spellings (`to_hook` reads them all, `spelling` writes them), one row per hook point:

| ours | TransformerLens (`blocks.L.` + ...) | circuit-tracer | Hugging Face module (`<blocks>.L.` + ...) |
|---|---|---|---|
| resid_pre.L | hook_resid_pre | hook_resid_pre | input |
| attn_z.L | attn.hook_z ([pos, head, d_head]) | attn.hook_z | <o_proj>.input |
| attn_out.L | hook_attn_out | hook_attn_out | <attn>.output |
| resid_mid.L | hook_resid_mid, **hook_mlp_in** | hook_resid_mid | <mlp_norm>.input |
| mlp_in.L | mlp.hook_in (circuit-tracer's) | mlp.hook_in | <mlp_norm>.output |
| mlp_out.L | hook_mlp_out, mlp.hook_out (no post-norm) | hook_mlp_out | <mlp>.output |
| resid_post.L | hook_resid_post | hook_resid_post | output |

The TransformerLens trap: its `blocks.L.hook_mlp_in` is NOT our `mlp_in`. TransformerLens's block computes
`mlp_in = hook_mlp_in(resid_mid.clone()); normalized = ln2(mlp_in)`, so its hook_mlp_in is the residual stream
*before* the MLP's norm: our `resid_mid`. Its `ln2.hook_normalized` is the norm's output *before* the learned
scale, which none of our hooks is (an error says so). Our `mlp_in`, the norm's scaled output that the MLP reads,
has no hook in plain TransformerLens; circuit-tracer wraps each TransformerLens MLP in a `ReplacementMLP` whose
`hook_in` sees it (`blocks.L.mlp.hook_in`), and its nnsight mapping for Gemma 3 / Llama / Qwen 3 puts `mlp.hook_in`
at the output of `pre_feedforward_layernorm` / `post_attention_layernorm`: our `mlp_in`. So that is the spelling
written for `mlp_in` (a plain HookedTransformer lacks it and fails loudly, rather than splicing the wrong point).
`mlp.hook_out` is ReplacementMLP's output: our `mlp_out` where nothing follows the MLP (Llama, Qwen, GPT-2), but
before the post-feedforward norm in Gemma 2/3 (no hook of ours). Gemma Scope 2's `hf_hook_point_in/out` and
SAELens's `hf_hook_name` are Hugging Face module paths; which module is which depends on the family (Gemma's
`post_attention_layernorm.output` is attn_out, Llama's is mlp_in), so those are read with the family's names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from attribution.errors import HookError, ModelLoadError

KINDS = ("resid_pre", "attn_z", "attn_out", "resid_mid", "mlp_in", "mlp_out", "resid_post")  # order in a block
STYLES = ("ours", "transformerlens", "circuit-tracer", "hf")  # what `spelling` writes


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
    inner: tuple[str, str] | None = None  # post-norm families: the attention and MLP modules their post-norms read
    o_proj: str = ""  # the attention's output projection: attn_z is its input (every head's output, concatenated)


_GEMMA_POSTNORM = Family(
    "model.layers",
    "model.norm",
    ("post_attention_layernorm", None),
    ("post_feedforward_layernorm", None),
    "pre_feedforward_layernorm",
    ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"),
    1.0,
    (("self_attn.q_proj", "all"), ("self_attn.k_proj", "all")),
    ("self_attn", "mlp"),
    "self_attn.o_proj",
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
    o_proj="self_attn.o_proj",
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
        o_proj="attn.c_proj",
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
        o_proj="attention.dense",
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


def _block(fam: Family, block: str) -> tuple[tuple[str, str, str, int | None], ...]:
    """(kind, module, io, tuple index) of each hook point of one block, in execution order."""
    return (
        ("resid_pre", block, "input", None),
        ("attn_z", f"{block}.{fam.o_proj}", "input", None),
        ("attn_out", f"{block}.{fam.attn[0]}", "output", fam.attn[1]),
        ("resid_mid", f"{block}.{fam.mlp_norm}", "input", None),
        ("mlp_in", f"{block}.{fam.mlp_norm}", "output", None),
        ("mlp_out", f"{block}.{fam.mlp[0]}", "output", fam.mlp[1]),
        ("resid_post", block, "output", None),
    )


def hook_points(model_type: str, n_layers: int) -> dict[str, HookSpec]:
    """Every hook point of a model, in forward-pass order."""
    fam = family_of(model_type)
    specs: dict[str, HookSpec] = {}
    for layer in range(n_layers):
        for kind, module, io, index in _block(fam, f"{fam.layers}.{layer}"):
            name = f"{kind}.{layer}"
            specs[name] = HookSpec(name, layer, kind, module, io, index)
    return specs


# --- the table of spellings ----------------------------------------------------------------------------------

# kind -> TransformerLens hook names after `blocks.L.` (circuit-tracer's config.yaml writes them without it); the
# first is the one we write. Checked against the sources: TransformerLens's TransformerBlock.forward
# (components/transformer_block.py: `mlp_in = self.hook_mlp_in(resid_mid.clone()); normalized_resid_mid =
# self.ln2(mlp_in)`, so hook_mlp_in is pre-norm); circuit-tracer's ReplacementMLP
# (replacement_model/replacement_model_transformerlens.py: `x = self.hook_in(x); return self.hook_out(old_mlp(x))`
# around TransformerLens's MLP, which gets ln2's scaled output and, in Gemma 2/3, is followed by ln2_post); and its
# utils/tl_nnsight_mapping.py feature_hook_mapping: `mlp.hook_in` = output of Gemma 3's pre_feedforward_layernorm /
# Llama's, Qwen 3's post_attention_layernorm, `hook_resid_mid` = that norm's input, `hook_mlp_out` = Gemma's
# post_feedforward_layernorm output / Llama's mlp output, `mlp.hook_out` = the mlp output (Llama, Qwen 3 only),
# `ln2.hook_normalized` = the norm's `_norm` before its weight (Gemma 2).
TL_NAMES: dict[str, tuple[str, ...]] = {
    "resid_pre": ("hook_resid_pre",),
    "attn_z": ("attn.hook_z",),  # TransformerLens's is [pos, head, d_head]; ours the same values, heads concatenated
    "attn_out": ("hook_attn_out",),
    "resid_mid": ("hook_resid_mid", "hook_mlp_in"),  # hook_mlp_in: the copy of resid_mid fed to ln2, pre-norm
    "mlp_in": ("mlp.hook_in",),  # circuit-tracer's ReplacementMLP.hook_in: ln2's scaled output, what the MLP reads
    "mlp_out": ("hook_mlp_out", "mlp.hook_out"),  # mlp.hook_out only where no norm follows the MLP
    "resid_post": ("hook_resid_post",),
}
_TL_KIND = {name: kind for kind, names in TL_NAMES.items() for name in names}
# TransformerLens names (after `blocks.L.`) that are no hook point of ours, and why
TL_NO_EQUIVALENT = {
    "ln2.hook_normalized": "the MLP norm's output before its learned scale, which none of our hooks is "
    "(mlp_in is after it, resid_mid before the norm)",
    "ln1.hook_normalized": "the attention norm's output before its learned scale, which none of our hooks is",
}
_POST_MLP = "the MLP's output before the post-feedforward norm, which none of our hooks is (mlp_out is after it)"
_POST_ATTN = "the attention output before the post-attention norm, which none of our hooks is (attn_out is after it)"


@cache
def hf_names(fam: Family) -> dict[str, str]:
    """Hugging Face module paths after `<blocks>.L.` -> our kind, for one family ('input'/'output' of a module, as
    SAELens's hf_hook_name and Gemma Scope 2's hf_hook_point_in/out write them)."""
    out = {}
    for kind, module, io, _ in _block(fam, "B"):
        rel = module[len("B.") :]
        out[f"{rel}.{io}" if rel else io] = kind
    return out


@cache
def _hf_no_equivalent(fam: Family) -> dict[str, str]:
    """Module paths after `<blocks>.L.` that a family has but none of our hooks is: what its post-norms read."""
    if fam.inner is None:
        return {}
    (attn, mlp), (post_attn, post_mlp) = fam.inner, (fam.attn[0], fam.mlp[0])
    return {f"{attn}.output": _POST_ATTN, f"{post_attn}.input": _POST_ATTN} | {
        f"{mlp}.output": _POST_MLP,
        f"{post_mlp}.input": _POST_MLP,
    }


# model names that say their family, for files read without a model (the model, when given, decides)
_NAMED_FAMILIES = (
    (r"gemma-?[23](?!\d*b)", "gemma3_text"),  # not gemma-2b, a Gemma 1
    (r"gemma", "gemma"),
    (r"llama|mistral|qwen", "llama"),
    (r"gpt-?2", "gpt2"),
    (r"pythia|neox", "gpt_neox"),
)


def family_from_model_name(name: str | None) -> Family | None:
    """The family a model name (`google/gemma-3-270m`) says, or None when it says none: a hint for reading a
    dictionary's family-dependent hook names when no model is given."""
    name = str(name or "").lower()
    return next((FAMILIES[t] for pattern, t in _NAMED_FAMILIES if re.search(pattern, name)), None)


def _family_of_specs(specs: dict[str, HookSpec]) -> Family | None:
    first = [(s.kind, s.module, s.io, s.index) for s in specs.values() if s.layer == 0]
    return next((f for f in FAMILIES.values() if first == list(_block(f, f"{f.layers}.0"))), None)


def _split_ours(name: str) -> tuple[str, int] | None:
    kind, _, layer = name.partition(".")
    return (kind, int(layer)) if kind in KINDS and layer.isdigit() else None


def _from_tl(name: str, fam: Family | None) -> str | None:
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    if not m:
        return None
    layer, rest = m.groups()
    if rest in TL_NO_EQUIVALENT:
        raise HookError(f"{name} is {TL_NO_EQUIVALENT[rest]}")
    if rest == "mlp.hook_out" and fam is not None and fam.inner is not None:
        raise HookError(f"{name} is {_POST_MLP}")
    return f"{_TL_KIND[rest]}.{layer}" if rest in _TL_KIND else None


def _hf_reading(name: str, fam: Family) -> tuple[str | None, str | None]:
    """(our name, None), (None, why none of ours is it), or (None, None) for a path this family does not have."""
    blocks = re.escape(fam.layers.rsplit(".", 1)[-1])
    m = re.fullmatch(rf"(?:[\w.]+\.)?{blocks}\.(\d+)\.(.+)", name)
    if not m:
        return None, None
    layer, rest = m.groups()
    if rest in _hf_no_equivalent(fam):
        return None, _hf_no_equivalent(fam)[rest]
    return (f"{hf_names(fam)[rest]}.{layer}" if rest in hf_names(fam) else None), None


def _from_hf(name: str, fam: Family | None) -> str | None:
    families = {"": fam} if fam is not None else FAMILIES
    readings: dict[tuple[str | None, str | None], list[str]] = {}  # what each family makes of it
    for model_type, f in families.items():
        reading = _hf_reading(name, f)
        if reading != (None, None):
            readings.setdefault(reading, []).append(model_type)
    if len(readings) > 1:
        said = "; ".join(f"{', '.join(t)}: {ours or why}" for (ours, why), t in readings.items())
        raise HookError(
            f"{name} is a Hugging Face module path whose meaning depends on the model family ({said}); "
            "give the model (or its family) to read it."
        )
    ours, why = next(iter(readings), (None, None))
    if why is not None:
        raise HookError(f"{name} is {why}")
    return ours


def _lookup(name: str, where) -> str | None:
    """Our name for `name` in any spelling; None when it is no spelling we know; HookError for a known point that
    none of ours is. `where`: the model's hook specs, its Family, or None (a family-dependent name then means what
    it means without post-norms, and a Hugging Face path must mean one thing in every family)."""
    if _split_ours(name):
        return name
    fam = _family_of_specs(where) if isinstance(where, dict) else where
    return _from_tl(name, fam) or _from_hf(name, fam)


def to_hook(name: str, where: dict[str, HookSpec] | Family | None = None) -> str:
    """Our name (`mlp_in.9`) of a hook point in any spelling: ours, TransformerLens (`blocks.9.hook_resid_post`;
    `blocks.9.hook_mlp_in` is resid_mid.9, see the module docstring), circuit-tracer's (`blocks.9.mlp.hook_in`),
    or a Hugging Face module path (`model.layers.9.pre_feedforward_layernorm.output`, read with `where`'s family).
    Raises HookError naming why for a name with no equivalent. The layer is not checked against a model."""
    if not isinstance(name, str):
        raise HookError(f"a hook name must be a string such as 'resid_post.3', got {type(name).__name__} {name!r}")
    ours = _lookup(name, where)
    if ours is None:
        tl = ", ".join(sorted(_TL_KIND))
        raise HookError(
            f"hook {name!r} has no equivalent here; known: '<kind>.<layer>' with kind in {list(KINDS)}, "
            f"TransformerLens / circuit-tracer blocks.<L>.{{{tl}}}, and Hugging Face module paths "
            "<blocks>.<L>.{input, output, <module>.input, <module>.output} of the family's norms and sub-layers."
        )
    return ours


def spelling(hook: str, style: str, family: Family | None = None) -> str:
    """`hook` (any spelling) written in `style`: 'ours' (`mlp_in.9`), 'transformerlens' (`blocks.9.mlp.hook_in`),
    'circuit-tracer' (`mlp.hook_in`, relative to the block, as its config.yaml writes it) or 'hf' (the module path,
    `model.layers.9.pre_feedforward_layernorm.output`; needs the family)."""
    kind, layer = _split_ours(to_hook(hook, family))  # type: ignore[misc]
    if style == "ours":
        return f"{kind}.{layer}"
    if style == "transformerlens":
        return f"blocks.{layer}.{TL_NAMES[kind][0]}"
    if style == "circuit-tracer":
        return TL_NAMES[kind][0]
    if style == "hf":
        if family is None:
            raise HookError(f"a Hugging Face module path depends on the model family: give one to spell {hook!r}")
        suffix = {k: s for s, k in hf_names(family).items()}[kind]
        return f"{family.layers}.{layer}.{suffix}"
    raise HookError(f"unknown hook spelling style {style!r}; known: {list(STYLES)}")


def parse_hook(name: str, specs: dict[str, HookSpec]) -> HookSpec:
    """Look a hook name up in any spelling `to_hook` reads, such as TransformerLens's `blocks.9.hook_resid_post`."""
    if not isinstance(name, str):
        raise HookError(f"a hook name must be a string such as 'resid_post.3', got {type(name).__name__} {name!r}")
    if name in specs:
        return specs[name]
    try:
        ours, why = _lookup(name, specs), ""
    except HookError as exc:
        ours, why = None, f": {exc}"
    if ours in specs:
        return specs[ours]
    n_layers = len(specs) // len(KINDS)
    raise HookError(
        f"unknown hook point {name!r}{why}. Hook names are '<kind>.<layer>' with kind in {list(KINDS)} and "
        f"layer in 0..{n_layers - 1}, e.g. 'resid_post.{n_layers // 2}'."
    )


def from_transformerlens(name: str) -> str | None:
    """`blocks.9.hook_resid_post` -> `resid_post.9` (and `blocks.9.hook_mlp_in` -> `resid_mid.9`); None for a name
    not in TransformerLens's spelling or with no equivalent (to_hook says why)."""
    try:
        return _from_tl(name, None)
    except HookError:
        return None


def canonical(name: str) -> str:
    """A hook name in this library's spelling (other spellings that mean one point converted, others as given)."""
    if not isinstance(name, str):
        return name
    try:
        return _lookup(name, None) or name
    except HookError:
        return name
