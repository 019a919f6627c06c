"""How exact is the emotion study's steering in float32? The engine's clamp (x + (f' - f) W_dec, engine.Splice)
against the former splice (decode(f') + e), both against float64.

    python -m studies.steering_precision        # writes bench/results/steering_precision.json

The four rows of `python -m cases emotion`'s steering panel (unedited, clamp 0, 5x, 10x max of feature 2366 of
the middle SAE, from position 14 on), the metric logit(" sad") - logit(" happy") at step 0, computed in float64
(the reference) and in float32 with each formula; also the same prompt's metric in a batch of one, to show the
float32 noise that batch composition alone makes.
"""

from __future__ import annotations

import copy
import json
import sys

import torch

from bench.ratios import RESULTS

PROMPT = 'John says, "I want to be alone right now." John feels'
FEATURE, START, HOOK = 2366, 14, "resid_post.9"
VALUES = [None, 0.0, 33.81082773208618, 67.62165546417236]  # the report's clamps: 0, 5x and 10x max


def _metrics(model, sae, form: str) -> list[float]:
    from attribution import LogitDiff
    from attribution.engine import Splice, trace
    from attribution.metrics import Rows

    batch = model.batch_of_ids([model.encode(PROMPT)] * len(VALUES))
    keep = torch.ones(len(VALUES), batch.width, sae.d_sae, dtype=torch.bool)
    to = torch.zeros(len(VALUES), batch.width, sae.d_sae, dtype=sae.W_dec.dtype)
    for r, v in enumerate(VALUES):
        if v is not None:
            keep[r, START:, FEATURE], to[r, START:, FEATURE] = False, v
    if form == "engine":
        edit = Splice(sae, keep, to)
    else:

        def edit(x):  # the former run_with_saes splice: decode(f') + e, e = x - decode(f)
            f = sae.encode(x)
            return sae.decode(torch.where(keep, f, to)) + (x - sae.decode(f))

    with torch.no_grad():
        hidden = trace(model, batch, edits={HOOK: edit}).hidden
    return [float(v) for v in LogitDiff(model, " sad", " happy")(model.unembed(hidden), Rows.copies(0, len(VALUES)))]


def main() -> dict:
    from attribution import LogitDiff, load_model
    from attribution.engine import trace
    from attribution.training.defaults import default_saes

    out = {}
    base = load_model(progress=False)
    sae32 = default_saes(base, hooks=[HOOK])[HOOK]  # the float32 model's SAE (a float64 model has its own cache)
    for dtype in (torch.float64, torch.float32):
        model = base if dtype == torch.float32 else load_model(dtype=dtype, progress=False)
        sae = copy.deepcopy(sae32).to(dtype=dtype)
        for form in ("engine", "former"):
            out[f"{str(dtype)[6:]}_{form}"] = _metrics(model, sae, form)
        with torch.no_grad():
            one = trace(model, model.tokenize(PROMPT)).hidden
        out[f"{str(dtype)[6:]}_alone"] = float(LogitDiff(model, " sad", " happy")(model.unembed(one)))
    ref = out["float64_engine"]
    for form in ("engine", "former"):
        out[f"float32_{form}_abs_error"] = [abs(a - b) for a, b in zip(out[f"float32_{form}"], ref)]
    out["float32_batch_of_4_vs_alone"] = abs(out["float32_engine"][0] - out["float32_alone"])
    (RESULTS / "steering_precision.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
    sys.exit(0)
