"""Cross-layer transcoders (CLTs): a feature reads one layer's MLP input and writes the MLP outputs of that
layer and of up to `reach - 1` layers after it, so one feature can stand for computation that several MLPs
share (Ameisen et al. 2025, "Circuit tracing"; circuit-tracer's CrossLayerTranscoder).

It is held as one per-layer transcoder per layer (`layers`: an SAE reading resid_mid.L / mlp_in.L and writing
mlp_out.L, with that layer's encoder, its decoder into its own layer, its b_dec and skip path) plus the decoders
that write further ahead (`W_ahead[L]` [d_sae, reach_L - 1, d_out], reach_L = min(reach, n_layers - L)). So
every per-layer tool (labels, encoder columns, the skip path) works on `clt.layers[hook]`, and reach 1 is
exactly a per-layer set. The output at layer l:

    mlp_out.l ~= b_dec_l + x_l W_skip_l + sum_{s = l - reach + 1 .. l} f_s(x_s) W_dec[s -> l]
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attribution.errors import SAEError
from attribution.saes.base import SAE, build

READS = ("resid_mid", "mlp_in")


class CrossLayerTranscoder(nn.Module):
    """Per-layer encoders and skip paths (`layers`, {read hook: SAE}) and the decoders ahead (`W_ahead`)."""

    def __init__(self, layers: list[SAE], reach: int):
        super().__init__()
        if not layers:
            raise SAEError("a cross-layer transcoder needs one transcoder per layer; got none")
        if isinstance(reach, bool) or not isinstance(reach, int) or reach < 1:
            raise SAEError(f"reach (how many layers a feature writes, its own included) must be >= 1, got {reach!r}")
        widths = {(s.d_in, s.d_sae, s.W_dec.shape[1]) for s in layers}
        if len(widths) > 1 or not all(s.is_transcoder for s in layers):
            raise SAEError(f"a cross-layer transcoder's layers are transcoders of one shape; got {layers}")
        self.n_layers, self.reach = len(layers), reach
        self.layers = nn.ModuleList(layers)
        d_sae, d_out, dtype = layers[0].d_sae, layers[0].W_dec.shape[1], layers[0].W_dec.dtype
        self.W_ahead = nn.ParameterList(
            nn.Parameter(torch.zeros(d_sae, self.reach_of(s) - 1, d_out, dtype=dtype)) for s in range(self.n_layers)
        )
        self.meta: dict = {}

    @classmethod
    def create(
        cls,
        n_layers: int,
        d_model: int,
        d_sae: int,
        *,
        reach: int = 4,
        architecture: str = "topk",
        reads: str = "resid_mid",
        skip: bool = True,
        dtype: torch.dtype = torch.float32,
        **options,
    ) -> CrossLayerTranscoder:
        """A zero CLT for a model with n_layers blocks of width d_model (`options`: the architecture's, k=32)."""
        if reads not in READS:
            raise SAEError(f"a cross-layer transcoder reads one of {READS} at each layer, not {reads!r}")
        layers = [
            build(
                architecture, d_model, d_sae, f"{reads}.{s}", target=f"mlp_out.{s}", skip=skip, dtype=dtype, **options
            )
            for s in range(n_layers)
        ]
        return cls(layers, reach)

    # --- shape --------------------------------------------------------------------------------------------

    @property
    def d_sae(self) -> int:
        return self.layers[0].d_sae

    @property
    def d_in(self) -> int:
        return self.layers[0].d_in

    @property
    def architecture(self) -> str:
        return self.layers[0].architecture

    @property
    def hooks(self) -> list[str]:
        """The read hooks, layer by layer (resid_mid.0, ...)."""
        return [s.hook for s in self.layers]

    def reach_of(self, layer: int) -> int:
        """How many layers a feature of `layer` writes (its own included): fewer near the last layer."""
        return min(self.reach, self.n_layers - layer)

    def decoders(self, layer: int) -> Tensor:
        """[d_sae, reach_of(layer), d_out]: what each feature of `layer` writes at layer, layer + 1, ..."""
        return torch.cat([self.layers[layer].W_dec[:, None], self.W_ahead[layer]], dim=1)

    def sources(self, layer: int) -> range:
        """The layers whose features write to `layer`'s MLP output."""
        return range(max(0, layer - self.reach + 1), layer + 1)

    # --- the maths ----------------------------------------------------------------------------------------

    def encode(self, xs: list[Tensor]) -> list[Tensor]:
        """Each layer's features, [..., d_in] -> [..., d_sae], from each layer's input."""
        self._count(xs)
        return [sae.encode(x) for sae, x in zip(self.layers, xs)]

    def decode(self, fs: list[Tensor], xs: list[Tensor] | None = None) -> list[Tensor]:
        """Each layer's output [..., d_out] from every layer's features (and its skip path, given the inputs)."""
        self._count(fs)
        out = []
        for layer, sae in enumerate(self.layers):
            y = sae.decode(fs[layer])
            for s in self.sources(layer)[:-1]:
                y = y + fs[s].to(self.W_ahead[s].dtype) @ self.W_ahead[s][:, layer - s - 1]
            out.append(y if xs is None else y + sae.skip(xs[layer]))
        return out

    def forward(self, xs: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """(outputs, features), each a list over layers."""
        fs = self.encode(xs)
        return self.decode(fs, xs), fs

    def check(self, model=None) -> None:
        """Raise SAEError for NaN/inf weights, or a CLT that does not fit `model` (one layer per block; the layer
        count first, as it says more than a missing hook)."""
        if model is not None and model.n_layers != self.n_layers:
            raise SAEError(
                f"{self!r} has {self.n_layers} layers but {model.name!r} has {model.n_layers}; load the CLT "
                "trained for this model."
            )
        for sae in self.layers:
            sae.check(model)
        for s, w in enumerate(self.W_ahead):
            if not torch.isfinite(w).all():
                raise SAEError(f"{self!r}: the decoders ahead of layer {s} hold NaN/inf; retrain or reload it.")

    def _count(self, xs) -> None:
        if len(xs) != self.n_layers:
            raise SAEError(f"{self!r} takes one tensor per layer ({self.n_layers}), got {len(xs)}")

    def __repr__(self) -> str:
        return (
            f"CrossLayerTranscoder({self.hooks[0].split('.')[0]}, {self.n_layers} layers, d_sae={self.d_sae}, "
            f"reach={self.reach}, {self.architecture})"
        )
