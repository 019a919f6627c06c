"""The SAE base class and the architecture registry.

A transcoder is the same dictionary reading one hook and writing another (`target`, e.g. mlp_in.L -> mlp_out.L),
optionally with a linear skip path (`W_skip`: output = decode(encode(x)) + x @ W_skip); `is_transcoder` tells
them apart.

All SAEs work in the model's own activation space: a scalar input normalisation used in training is
folded into the weights when the SAE is saved, so `decode(encode(x))` reconstructs x directly and the
gradient with respect to feature i is simply `W_dec[i] . dL/dx`.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from attribution.errors import SAEError

REGISTRY: dict[str, type[SAE]] = {}


@dataclasses.dataclass(frozen=True)
class Options:
    """An architecture's own hyper-parameters, typed (none here; TopK's `TopKOptions` has k). Saved in cfg.json
    beside the fields every SAE has, and the architecture's `Options` class checks what `build` is given."""


COMMON = ("apply_b_dec_to_input", "dtype", "target", "skip")  # what every architecture takes (SAE.__init__)


def register(name: str):
    def deco(cls):
        REGISTRY[name] = cls
        cls.architecture = name
        return cls

    return deco


class SAE(nn.Module):
    """f(x) = act(W_enc^T (x - b_dec?) + b_enc); x_hat = f @ W_dec + b_dec.

    Subclasses only define `activation(pre)`. Shapes: W_enc [d_in, d_sae], b_enc [d_sae],
    W_dec [d_sae, d_in], b_dec [d_in] (the SAELens layout).

    Device and dtype: attribute, ablate, build_graph and friends move an SAE to the model's device (in
    place) and keep it in its own dtype. Inputs are cast to the SAE's dtype on the way in (`pre_acts`),
    and what goes back into the model is cast to the model's dtype, so a float32 SAE on a bf16 model
    encodes in float32 and the model runs in bf16.
    """

    architecture = "base"
    min_features = 1  # WholeActivation, the featureless dictionary, sets 0
    Options: type[Options] = Options  # the architecture's typed hyper-parameters

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        hook: str,
        *,
        apply_b_dec_to_input: bool = False,
        dtype: torch.dtype = torch.float32,
        target: str | None = None,
        skip: bool = False,
        options: Options | None = None,
    ):
        super().__init__()
        options = type(self).Options() if options is None else options
        if type(options) is not type(self).Options:
            raise SAEError(f"a {self.architecture} SAE takes {type(self).Options.__name__}, got {options!r}")
        self.options = options
        if d_in < 1 or d_sae < self.min_features:
            raise SAEError(f"d_in and d_sae must be >= 1, got d_in={d_in}, d_sae={d_sae}")
        if skip and target is None:
            raise SAEError("a skip path (W_skip) belongs to a transcoder: give the hook it writes, target=...")
        if target is not None and apply_b_dec_to_input:
            raise SAEError(
                "a transcoder reads one hook and writes another: b_dec is an output bias, so "
                "apply_b_dec_to_input must be False"
            )
        self.hook = hook
        self.target = target  # the hook a transcoder writes (None: an SAE, which reconstructs `hook`)
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, dtype=dtype))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d_in, dtype=dtype))
        self.W_skip = nn.Parameter(torch.zeros(d_in, d_in, dtype=dtype)) if skip else None  # [d_in, d_out]
        self.meta: dict = {}  # training statistics and provenance, saved in cfg.json

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    @property
    def is_transcoder(self) -> bool:
        return self.target is not None

    def extra_config(self) -> dict:
        """Architecture-specific scalars saved in cfg.json (e.g. k for TopK): its options."""
        return dataclasses.asdict(self.options)

    def pre_acts(self, x: Tensor) -> Tensor:  # [..., d_in] -> [..., d_sae]
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x.to(self.W_enc.dtype) @ self.W_enc + self.b_enc

    def activation(self, pre: Tensor) -> Tensor:
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor:
        """Feature activations, [..., d_in] -> [..., d_sae]."""
        return self.activation(self.pre_acts(x))

    def decode(self, f: Tensor) -> Tensor:
        """Reconstruction, [..., d_sae] -> [..., d_in]."""
        return f @ self.W_dec + self.b_dec

    def skip(self, x: Tensor) -> Tensor | float:
        """A transcoder's linear path from its input to its output, [..., d_in] -> [..., d_out] (0 without)."""
        return 0.0 if self.W_skip is None else x.to(self.W_skip.dtype) @ self.W_skip

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(output, features): the reconstruction of x (an SAE) or of the target hook (a transcoder)."""
        f = self.encode(x)
        return self.decode(f) + self.skip(x), f

    def check(self, model=None) -> None:
        """Raise SAEError if weights hold NaN/inf, or the SAE does not fit `model`'s hook point."""
        state = tuple((p.data_ptr(), p._version) for p in self.parameters())
        if state != getattr(self, "_finite_state", None):  # scanning 10^8 weights per call is not free
            self._check_finite()
            self._finite_state = state
        if model is not None:
            spec = model.hook(self.hook)
            if self.d_in != model.d_model:
                raise SAEError(
                    f"SAE at {spec.name!r} has width d_in={self.d_in}, but the model's {spec.name} is "
                    f"{model.d_model} wide. This SAE was trained for another model; load one for this model."
                )

    def _check_finite(self) -> None:
        for name, p in self.named_parameters():
            if not torch.isfinite(p).all():
                raise SAEError(
                    f"SAE at {self.hook!r}: parameter {name} contains NaN/inf. The weights are "
                    "corrupt or training diverged; retrain or reload them."
                )

    def __repr__(self) -> str:
        to = f", target={self.target!r}" + (", skip" if self.W_skip is not None else "") if self.target else ""
        return f"{type(self).__name__}(hook={self.hook!r}{to}, d_in={self.d_in}, d_sae={self.d_sae})"


def build(architecture: str, d_in: int, d_sae: int, hook: str, *, options: Options | None = None, **kw) -> SAE:
    """An SAE of a registered architecture. `kw`: what every SAE takes (apply_b_dec_to_input, dtype, target,
    skip) and the architecture's options by name (`k=32` for topk), or those as one typed `options=`."""
    try:
        cls = REGISTRY[architecture]
    except KeyError:
        raise SAEError(f"unknown SAE architecture {architecture!r}; known: {sorted(REGISTRY)}") from None
    named = {k: kw.pop(k) for k in list(kw) if k not in COMMON}
    if named:
        if options is not None:
            raise SAEError(f"give a {architecture} SAE's options either as options= or by name, not both: {named}")
        fields = [f.name for f in dataclasses.fields(cls.Options)]
        unknown = sorted(set(named) - set(fields))
        if unknown:
            takes = f"only {fields}" if fields else "none"
            raise SAEError(f"a {architecture} SAE has no option {unknown}; its options are {takes}.")
        options = cls.Options(**named)
    return cls(d_in, d_sae, hook, options=options, **kw)
