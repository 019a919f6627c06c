"""Is there a California feature? The contrast search of the multi-hop study, default SAEs v2 beside v3.

    python -m studies.california [--out bench/results/california.json]

For each set of default SAEs in the cache (v2: trained on 120k tokens the model sampled itself; v3: on 2M
tokens of English prose), `attribution.contrast` ranks every feature by how much more often it fires at the
last token of sentences that imply California without naming it ("He grew up in Pasadena") than of the same
sentences about places in other states (`cases.multihop.CALIFORNIA`, 60 + 60 prompts). Per layer it reports
the best score (share of positive prompts fired on minus share of negative ones), and for the best three
features of each layer, whether and where they fire on the Kobe prompt: a California feature in the paper's
sense fires once the state is implied, i.e. after "Kobe Bryant played basketball".
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
PER_LAYER = 3


def sets(model) -> dict[str, dict]:
    """{"v2": {hook: SAE}, "v3": {...}}: every version of the default SAEs found in the cache (the widest
    SAE per hook and version)."""
    from attribution.saes import load_sae
    from attribution.training.defaults import quick_spec, saes_dir

    found: dict[str, dict] = {}
    quick = quick_spec(model).folder
    for folder in sorted(saes_dir(model).glob("resid_post.*-v*")):
        m = re.fullmatch(r"(resid_post\.\d+)-topk(\d+)-.*-(v\d+)", folder.name)
        if not m or not (folder / "cfg.json").exists():
            continue
        hook, width, version = m.group(1), int(m.group(2)), m.group(3)
        if folder.name == quick:
            continue  # the quick dictionary, not a default SAE
        have = found.setdefault(version, {})
        if hook not in have or have[hook].d_sae < width:
            have[hook] = load_sae(folder, model=model)
    return {v: dict(sorted(s.items(), key=lambda kv: model.hooks[kv[0]].order)) for v, s in sorted(found.items())}


@torch.no_grad()
def measure(model, saes: dict) -> dict:
    from attribution import contrast
    from attribution.engine import trace
    from cases.multihop import CALIFORNIA, PROMPT

    matches = contrast(model, saes, list(CALIFORNIA[0]), list(CALIFORNIA[1]), top=None)
    batch = model.tokenize(PROMPT)
    acts = trace(model, batch, capture=list(saes), stop_early=True).acts
    tokens = batch.tokens[0]
    after = next(i for i, t in enumerate(tokens) if "basketball" in t)  # the state is implied from here on
    out = {}
    for hook, sae in saes.items():
        best = [m for m in matches if m.hook == hook][:PER_LAYER]
        f = sae.encode(acts[hook])[0]  # [pos, d_sae]
        rows = []
        for m in best:
            col = f[1:, m.feature]  # <bos> left out
            pos = int(col.argmax()) + 1
            rows.append(
                {
                    "feature": m.feature,
                    "score": m.score,
                    "fires_on_positive": m.positive,
                    "fires_on_negative": m.negative,
                    "kobe_max_activation": float(col.max()),
                    "kobe_max_at": tokens[pos],
                    "kobe_fires_after_basketball": bool((f[after:, m.feature] > 0).any()),
                }
            )
        out[hook] = {"d_sae": sae.d_sae, "best_score": best[0].score if best else 0.0, "best": rows}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(RESULTS / "california.json"))
    args = p.parse_args(argv)
    from attribution import load_model

    model = load_model()
    results = {version: measure(model, saes) for version, saes in sets(model).items()}
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    return 0


def table(results: dict) -> str:
    """Markdown: per layer, each version's best score and whether its best feature fires on the Kobe prompt
    after the state is implied."""
    versions = list(results)
    hooks = sorted({h for r in results.values() for h in r}, key=lambda h: int(h.split(".")[1]))
    head = "| layer | " + " | ".join(f"{v}: best score, its feature on the Kobe prompt" for v in versions) + " |"
    lines = [head, "|---|" + "---|" * len(versions)]
    for h in hooks:
        cells = []
        for v in versions:
            r = results[v].get(h)
            if r is None or not r["best"]:
                cells.append("—")
                continue
            b = r["best"][0]
            where = f"max {b['kobe_max_activation']:.2f} at {b['kobe_max_at']!r}"
            fires = "fires after 'basketball'" if b["kobe_fires_after_basketball"] else "silent after 'basketball'"
            cells.append(f"{b['score']:+.2f} (f{b['feature']}, {b['fires_on_positive']:.0%} vs "
                         f"{b['fires_on_negative']:.0%}); {fires}, {where}")  # fmt: skip
        lines.append(f"| {h} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
