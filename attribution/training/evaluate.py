"""How good an SAE is, on held-out tokens: explained variance, L0, dead features, and CE loss recovered.

CE loss recovered = (CE(zero-ablated) - CE(with SAE)) / (CE(zero-ablated) - CE(clean)): 1.0 when splicing
the reconstruction (no error term) costs nothing, 0.0 when it is as bad as zeroing the hook. Both
interventions touch every position but <bos>, which the SAEs are not trained on. For a transcoder the
reconstruction is of its target hook (e.g. the MLP's output), from its input hook, and that target is what
is replaced or zeroed.

For a transcoder with a skip path, `features_on_rest` is what its features explain of the part of the target
the linear skip leaves (target - x W_skip, centred): 1 - Var(target - output) / Var(target - x W_skip). Its
total EV can be high while its features explain nothing (the skip alone can explain 0.6 of an MLP's output);
this number says whether the features carry the MLP's nonlinear computation.
"""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from attribution.compute import model_autocast
from attribution.engine import Set, trace
from attribution.models.model import Batch
from attribution.splice import place


@torch.no_grad()
def evaluate_sae(
    model, sae, tokens: Tensor, *, batch_size: int = 16, dtype: torch.dtype | str | None = None, progress: bool = True
) -> dict:
    """Quality of `sae` on `tokens` ([n_seq, seq], rows starting with <bos>).

    dtype: the matmul dtype of the model and the 262k-wide unembedding under autocast; None chooses
    (attribution.compute: bfloat16 where the device does it natively, ~4x faster with AMX, else float32).
    In bf16 the CE values carry ~1e-2 of rounding, far below the clean / zero-ablated gap they are compared
    to. Statistics are accumulated on the model's device.
    """
    hook = model.hook(sae.hook).name
    out = model.hook(sae.target).name if sae.is_transcoder else hook  # where the reconstruction goes
    place(model, sae)
    ce = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    n_pred = 0
    dev = model.device
    sq_err = torch.zeros(model.d_model, dtype=torch.float64, device=dev)
    sum_x = torch.zeros(model.d_model, dtype=torch.float64, device=dev)
    sum_x2 = torch.zeros(model.d_model, dtype=torch.float64, device=dev)
    rest = torch.zeros(2, model.d_model, dtype=torch.float64, device=dev)  # sum, sum of squares of target - skip
    l0, n_tok = 0.0, 0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=dev)
    for start in tqdm(range(0, len(tokens), batch_size), desc=f"evaluating {hook}", disable=not progress):
        ids = tokens[start : start + batch_size].to(dev)
        n, seq = ids.shape
        batch = Batch.from_ids(ids, model.device)
        with model_autocast(model, dtype):
            clean = trace(model, batch, capture=[hook, out])
            x = clean.acts[out]  # [n, seq, d_model]; <bos> (position 0) is left as it is in every run
            x_hat, f = sae(clean.acts[hook][:, 1:])  # decode(encode(x)), plus a transcoder's skip path
            ce["clean"] += _ce_sum(model, clean.hidden, ids)
            for name, value in (("sae", x_hat), ("zero", torch.zeros_like(x[:, 1:]))):
                edit = Set(torch.cat([x[:, :1], value.to(x.dtype)], dim=1))
                ce[name] += _ce_sum(model, trace(model, batch, edits={out: edit}).hidden, ids)
        x = x[:, 1:].reshape(-1, model.d_model).double()  # the clean activation (upstream of the edit)
        f = f.reshape(-1, sae.d_sae)
        sq_err += (x - x_hat.reshape(-1, model.d_model).double()).pow(2).sum(0)
        sum_x += x.sum(0)
        sum_x2 += x.pow(2).sum(0)
        if getattr(sae, "W_skip", None) is not None:
            r = x - sae.skip(clean.acts[hook][:, 1:]).reshape(-1, model.d_model).double()
            rest += torch.stack([r.sum(0), r.pow(2).sum(0)])
        l0 += float((f != 0).sum())
        fired |= (f != 0).any(0)
        n_tok += x.shape[0]
        n_pred += n * (seq - 1)
    ce = {k: v / n_pred for k, v in ce.items()}
    var_x = (sum_x2 - sum_x.pow(2) / n_tok).sum()
    var_rest = (rest[1] - rest[0].pow(2) / n_tok).sum()
    return {
        "ce_clean": ce["clean"],
        "ce_sae": ce["sae"],
        "ce_zero": ce["zero"],
        "ce_loss_recovered": (ce["zero"] - ce["sae"]) / (ce["zero"] - ce["clean"]),
        "explained_variance": float(1 - sq_err.sum() / var_x),
        "features_on_rest": float(1 - sq_err.sum() / var_rest) if float(var_rest) > 0 else None,
        "l0": l0 / n_tok,
        "dead_fraction": float((~fired).float().mean()),
        "eval_tokens": n_tok,
    }


def _ce_sum(model, hidden: Tensor, ids: Tensor, chunk: int = 512) -> float:
    """Summed next-token cross-entropy, unembedding `chunk` positions at a time (262k logits each)."""
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    target = ids[:, 1:].reshape(-1)
    total = 0.0
    for i in range(0, len(h), chunk):
        logits = model.unembed(h[i : i + chunk]).float()
        total += float(torch.nn.functional.cross_entropy(logits, target[i : i + chunk], reduction="sum"))
    return total
