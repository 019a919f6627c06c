"""What more data buys: a default SAE's quality against the tokens it has trained on.

    python -m studies.sae_curve [--hook resid_post.9] [--out bench/results/default_saes_curve.json]

The default SAEs train streamed (attribution.training.stream): every batch is text they have not seen, so
the explained variance and L0 of each batch, measured before the step that trains on it, are held-out
figures. EV is in the units the SAE trains in (each residual dimension standardised, so the massive
dimension weighs no more than any other; docs/training.md's tables give EV in model space). The trainer records
them every 10 steps (`sae.meta["curve"]`); this prints and saves them for one default SAE. The learning
rate decays to zero over the last 20% of steps, which lifts the final points: a GPU user extrapolating to
more tokens should read the slope before the decay.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hook", default=None, help="a default SAE's hook (default: the middle layer's)")
    p.add_argument("--out", default=str(RESULTS / "default_saes_curve.json"))
    args = p.parse_args(argv)
    from attribution import default_saes, load_model
    from attribution.training.defaults import middle_hook

    model = load_model()
    hook = args.hook or middle_hook(model)
    sae = default_saes(model, hook, train=False)[model.hook(hook).name]
    curve = sae.meta.get("curve")
    if not curve:
        raise SystemExit(f"the SAE at {hook} has no training curve (trained before v3?)")
    result = {"hook": sae.hook, "d_sae": sae.d_sae, "training": sae.meta.get("training"), **curve}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    return 0


def table(result: dict, every: int = 5) -> str:
    """Markdown rows (every `every`-th logged point and the last) of tokens, EV and L0."""
    n = len(result["tokens"])
    picks = sorted({*range(0, n, every), n - 1})
    lines = ["| training tokens | EV on the next batch (standardised units, as trained) | L0 |", "|---|---|---|"]
    for i in picks:
        t, ev, l0 = result["tokens"][i], result["explained_variance"][i], result["l0"][i]
        lines.append(f"| {t / 1e6:.2f}M | {ev:.3f} | {l0:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
