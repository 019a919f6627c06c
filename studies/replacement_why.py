"""Why the Kobe replacement graph misses its targets: where the error nodes' influence sits, layer by layer,
beside each transcoder's held-out quality, and what the model itself predicts.

    python -m studies.replacement_why   # writes bench/results/replacement_why_v<transcoder version>.json

(about a minute on 2 cores; the v1 transcoders' file is bench/results/replacement_why.json)

Per layer: the influence on the metric (graphs.prune.influence, circuit-tracer's) of the layer's feature
nodes and of its error nodes in the full graph, the transcoder's explained variance and CE loss recovered on
held-out documents; the tokens' influence; and the model's top next tokens and the answers' probabilities.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from attribution import LogitDiff, load_model
from attribution.engine import trace
from attribution.training.transcoder_defaults import VERSION, default_transcoders
from graphs import build_graph
from graphs.scores import graph_scores

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Fact: The capital of the state where Kobe Bryant played basketball is"


def layer_influence(g, hooks: list[str]) -> list[dict]:
    """Per layer (hooks in layer order): the influence on the metric of its feature nodes and of its error
    nodes in the full graph, summed over positions."""
    rows = []
    for layer, hook in enumerate(hooks):
        nodes = [x for x in g.full_nodes if x.hook == hook]
        rows.append(
            {
                "layer": layer,
                "feature_influence": sum(x.influence for x in nodes if x.kind == "feature"),
                "error_influence": sum(x.influence for x in nodes if x.kind == "error"),
            }
        )
    return rows


def main(out: str | Path | None = None) -> dict:
    model = load_model()
    tcs = default_transcoders(model, train=False)
    metric = LogitDiff(model, " Sacramento", " Albany")
    g = build_graph(model, tcs, PROMPT, metric, labels=False, progress=False)
    layers = []
    for row, (hook, tc) in zip(layer_influence(g, list(tcs)), tcs.items(), strict=True):
        ev = tc.meta.get("eval", {})
        features = sum(x.kind == "feature" and x.hook == hook for x in g.full_nodes)
        layers.append(
            row
            | {
                "features": features,
                "explained_variance": ev.get("explained_variance"),
                "ce_loss_recovered": ev.get("ce_loss_recovered"),
            }
        )
    tokens = sum(x.influence for x in g.full_nodes if x.kind == "token")
    errors = sum(r["error_influence"] for r in layers)
    batch = model.tokenize(PROMPT)
    with torch.no_grad():
        logits = model.unembed(trace(model, batch).hidden[0, -1])
    probs = logits.double().softmax(-1)
    top = probs.topk(10)
    s = graph_scores(g, pruned=False)
    result = {
        "prompt": PROMPT,
        "full_graph": {"replacement_score": s.replacement, "completeness_score": s.completeness},
        "token_influence": tokens,
        "error_influence": errors,
        "feature_influence": sum(r["feature_influence"] for r in layers),
        "error_influence_layers_0_3": sum(r["error_influence"] for r in layers[:4]),
        "layers": layers,
        "model_top_tokens": [[model.tokenizer.decode([int(i)]), float(p)] for p, i in zip(top.values, top.indices)],
        "p_good": float(probs[int(metric.good_ids[0])]),
        "p_bad": float(probs[int(metric.bad_ids[0])]),
    }
    result["transcoders_version"] = VERSION
    out = out or ROOT / "bench" / "results" / f"replacement_why_v{VERSION}.json"
    Path(out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
