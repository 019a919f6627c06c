"""How much of the Kobe metric do SAE features carry, by SAE site? A measurement behind docs/graphs.md.

    python -m studies.kobe_sites --site resid_post     # the default SAEs (residual stream, every other block)
    python -m studies.kobe_sites --site mlp_out        # MLP outputs of the same blocks, same recipe (trained once)

For each site it prints, with error terms kept and features recomputed downstream (graphs.interventions):
- the metric with every active feature at one layer zero-ablated (what that layer's features carry);
- m(model), m(empty) (every active feature at every layer ablated) and the faithfulness of the N features of
  largest |attribution| (N = 30, 60, 120, 400), zero and mean ablation;
- the attribution summed over error nodes and over feature nodes.
A site whose features carry little of the metric cannot give a small faithful graph, whatever the pruning.
"""

from __future__ import annotations

import argparse

import torch

PROMPT = "Fact: The capital of the state where Kobe Bryant played basketball is"
CAPS = (30, 60, 120, 400)


def site_saes(model, site: str, progress: bool = True) -> dict:
    """{hook: SAE}: the default SAEs for resid_post, else the default recipe trained at `site` (cached)."""
    from dataclasses import replace

    from attribution import default_saes, load_sae
    from attribution.cache import build_once, cache_dir, model_fingerprint
    from attribution.saes import save_sae
    from attribution.training.activation_cache import cached_activations
    from attribution.training.defaults import default_corpus, default_specs, fit_spec

    if site == "resid_post":
        return default_saes(model, progress=progress)
    every = list(default_specs(model).values())
    narrow = min(s.d_sae for s in every)  # the every-other-block recipe (the middle block's wide one left out)
    specs = [replace(s, hook=model.hook(s.hook.replace("resid_post", site)).name) for s in every if s.d_sae == narrow]
    hooks = [s.hook for s in specs]
    root = cache_dir() / "experiments" / model_fingerprint(model) / f"{site}-v1"
    shared = {}  # the activations, collected on the first SAE that needs training

    def train(spec, out) -> None:
        if not shared:
            train_ids, _ = default_corpus(model, progress)
            shared["cache"] = cached_activations(model, hooks, train_ids, f"sites-{site}", progress=progress)
        save_sae(fit_spec(model, spec, shared["cache"].tensor(spec.hook), progress), out)

    def load(path):
        return load_sae(path, model=model)

    return {s.hook: build_once(root / s.hook, load, lambda out, s=s: train(s, out)) for s in specs}


@torch.no_grad()
def measure(model, saes: dict, prompt: str = PROMPT, good: str = " Sacramento", bad: str = " Albany") -> dict:
    from attribution import LogitDiff, attribute
    from attribution.engine import trace
    from attribution.spliced import ablation_values
    from graphs.interventions import RowEdit, run_rows

    metric = LogitDiff(model, good, bad)
    hooks = list(saes)
    with torch.enable_grad():
        attr = attribute(model, saes, prompt, metric)
    batch = model.tokenize(prompt)
    acts = trace(model, batch, capture=hooks, stop_early=True).acts
    valid = batch.node_mask()[0]  # [pos]
    active = {h: (saes[h].encode(acts[h])[0] != 0) & valid[:, None] for h in hooks}  # [pos, d_sae]
    keep_errors = torch.ones(batch.width, dtype=torch.bool)
    is_feature = attr.feature >= 0
    order = torch.where(is_feature, attr.value.abs(), torch.zeros_like(attr.value)).argsort(descending=True)
    out = {
        "errors_attribution": float(attr.value[~is_feature].sum()),
        "features_attribution": float(attr.value[is_feature].sum()),
    }
    for mode in ("zero", "mean"):
        values = ablation_values(model, saes, batch, mode)
        rows = [{}, {h: RowEdit(~active[h], keep_errors) for h in hooks}]
        rows += [{h: RowEdit(~active[h], keep_errors)} for h in hooks]
        for cap in CAPS:
            kept = {h: torch.zeros_like(a) for h, a in active.items()}
            for i in order[:cap].tolist():
                kept[hooks[int(attr.hook_idx[i])]][int(attr.position[i]), int(attr.feature[i])] = True
            rows.append({h: RowEdit(~(active[h] & ~kept[h]), keep_errors) for h in hooks})
        m = run_rows(model, saes, batch, metric, rows, values).tolist()
        model_m, empty = m[0], m[1]
        layers, graphs = m[2 : 2 + len(hooks)], m[2 + len(hooks) :]
        out[mode] = {
            "model": model_m,
            "empty": empty,
            "carried": {h: model_m - v for h, v in zip(hooks, layers, strict=True)},
            "faithfulness": {cap: (g - empty) / (model_m - empty) for cap, g in zip(CAPS, graphs, strict=True)},
        }
    return out


def main(argv=None) -> None:
    from attribution import load_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--site", default="resid_post", choices=("resid_post", "mlp_out", "attn_out"))
    args = ap.parse_args(argv)
    model = load_model()
    r = measure(model, site_saes(model, args.site))
    print(f"site {args.site}: attribution summed over errors {r['errors_attribution']:+.3f}, "
          f"over features {r['features_attribution']:+.3f}")  # fmt: skip
    for mode in ("zero", "mean"):
        x = r[mode]
        scores = "  ".join(f"F@{c} {f:+.3f}" for c, f in x["faithfulness"].items())
        print(f"{mode}: model {x['model']:+.3f}, empty {x['empty']:+.3f}  {scores}")
        print("  features carry: " + ", ".join(f"{h} {v:+.2f}" for h, v in x["carried"].items()))


if __name__ == "__main__":
    main()
