"""Feature files for circuit-tracer's own viewer, from our feature indexes: what its feature-detail panel shows
when a feature node is clicked or hovered (top activating examples, the activation histogram and percentile,
the firing frequency, the promoted and suppressed tokens), written beside the graph JSON.

    files = write_viewer_features(graph, model, transcoders, "runs/kobe_ct", slug="kobe")
    # runs/kobe_ct/kobe.json, runs/kobe_ct/graph-metadata.json, runs/kobe_ct/features/kobe/<feature>.json
    python -m bench.peers.circuit_tracer_viewer runs/kobe_ct/kobe.json     # or circuit-tracer's serve("runs/kobe_ct")

Where circuit-tracer 0.5.0's frontend looks for a feature (frontend/assets in its wheel):
feature_examples/init-feature-examples.js, loadFeature (lines 85-92), requests `${scan}/${featureIndex}.json`
when the graph's `metadata.scan` starts with "./"; otherwise the Hugging Face hub repository named by the scan
(`index.json.gz` + byte ranges of `.bin` files) or `./features/<scan>/<index>.json`, which util.js's getFile
(lines 45-47) sends to Anthropic's CDN. `featureIndex` is the node's `feature`, cantor(layer, index) as
graphs.schema writes it (util-cg.js line 254; init-cg-feature-detail.js lines 54 and 125 pass it with the
scan). So the graph JSON written here says scan = "./data/features/<slug>" (SCAN), and each feature node's
file is <data folder>/features/<slug>/<cantor(layer, index)>.json: the page (index.html at the site's root)
fetches ./data/..., which both circuit-tracer's local_server and bench.peers.circuit_tracer_viewer serve from the
data folder (util.js lines 49-57 leave ./data/ alone: index.html line 41 sets isLocalServing). No other field
of the graph JSON is needed.

A feature file has the fields of circuit-tracer's frontend/feature_models.py (FeatureFile below, field by
field), of which the viewer reads:

- examples_quantiles[].quantile_name, .examples[] with tokens, tokens_acts_list (one activation per token),
  train_token_ind (the token the example is centred on), is_repeated_datapoint (drawn faded)
  (feature_examples/init-feature-examples-list.js lines 15-29, 127-149);
- act_min, act_max: the domain of the tokens' colour scale and the histogram's x axis
  (init-feature-examples.js lines 94-100, attribution_graph/render-act-histogram.js line 68);
- histogram (bar heights over [act_min, act_max]), quantile_values (the node's activation is shown as the
  first percentile i + 1 whose value it does not exceed, so 100 values), activation_frequency
  (render-act-histogram.js lines 44-68);
- top_logits, bottom_logits: the "Token Predictions" rows (init-feature-examples-logits.js lines 2-16).

From our index (attribution.explain): the card's top contexts (one per text, strongest first) are the one
"Top activations" group, their per-token activations the tokens' (tokens written as circuit-tracer's
frontend/utils.process_token writes them: newline, tab and carriage return as ⏎, → and ↵); the index's
10-bin histogram of the feature's non-zero activations is `histogram` over [0, its maximum]; quantile_values
are the percentiles of those activations read off the same histogram (linear within a bin: the index keeps
counts per bin, not the activations); activation_frequency is the share of indexed tokens it fires on;
top/bottom logits the logit lens's promoted and suppressed tokens. The viewer takes a feature's label
(explanation) from the node's `clerp` in the graph JSON, never from the feature file: feature nodes whose
clerp is empty get the index's label there. What the index does not keep is not served: examples below the
top (circuit-tracer's hub files add groups sampled from lower quantiles; the index keeps the top N_TOP).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from attribution.explain import Explainer, FeatureCard, FeatureIndex
from graphs.graph_nodes import GraphError
from graphs.schema import cantor_pairing, load_graph_json

SCAN = "./data/features/{slug}"  # the graph's metadata.scan: where the page fetches its feature files
FEATURES = "features"  # the feature files' folder in the data folder (then <slug>/<feature>.json)
GROUP = "Top activations"  # the one example group: the index's top contexts
N_QUANTILES = 100  # quantile_values: percentiles 1..100 (the viewer prints the node's as "<i>pct")
SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# --------------------------------------------------------------------------------------------------
# circuit-tracer 0.5.0's circuit_tracer/frontend/feature_models.py, field by field
# --------------------------------------------------------------------------------------------------
class Example(BaseModel):
    tokens_acts_list: list[float]
    train_token_ind: int
    is_repeated_datapoint: bool
    tokens: list[str]


class ExamplesQuantile(BaseModel):
    quantile_name: str
    examples: list[Example]


class FeatureFile(BaseModel):
    transcoder_id: str
    index: int
    examples_quantiles: list[ExamplesQuantile]
    top_logits: list[str]
    bottom_logits: list[str]
    act_min: float
    act_max: float
    quantile_values: list[float]
    histogram: list[float]
    activation_frequency: float


@dataclass
class ViewerFiles:
    """What write_viewer_features wrote."""

    data: Path  # the data folder: serve it as circuit-tracer's local_server serves its data_dir
    graph: Path  # data/<slug>.json, the graph JSON whose metadata.scan points at the feature files
    metadata: Path  # data/graph-metadata.json, the viewer's list of graphs
    scan: str  # the graph's metadata.scan, "./data/features/<slug>"
    features: dict[str, Path] = field(default_factory=dict)  # JSON node_id -> its feature's file
    missing: list[str] = field(default_factory=list)  # feature node ids with no index, so no file


def process_token(token: str) -> str:
    """A token as circuit-tracer's frontend/utils.process_token writes it for the viewer."""
    return token.replace("\n", "⏎").replace("\t", "→").replace("\r", "↵")


def percentiles(edges: list[float], counts: list[int], n: int = N_QUANTILES) -> list[float]:
    """The 1/n .. n/n quantiles of a histogram's values (`counts` between consecutive `edges`), each read
    off the histogram linearly within its bin; all `edges[0]` when the histogram is empty."""
    total = sum(counts)
    out = []
    for q in range(1, n + 1):
        target, below, value = q / n * total, 0, edges[0]
        for i, c in enumerate(counts):
            if c > 0 and below + c >= target:
                value = edges[i] + (target - below) / c * (edges[i + 1] - edges[i])
                break
            below += c
        out.append(float(value))
    return out


def feature_file(card: FeatureCard, index: FeatureIndex) -> dict:
    """One feature's file for circuit-tracer's viewer (see the module docstring), from its card and index."""
    t = index.t
    edges = [float(e) for e in t["hist_edges"][card.feature].tolist()]
    counts = [int(c) for c in t["hist"][card.feature].tolist()]
    examples = [
        Example(
            tokens=[process_token(s) for s in c.tokens],
            tokens_acts_list=[float(a) for a in c.acts],
            train_token_ind=c.position,
            is_repeated_datapoint=False,  # a card keeps one context per text
        )
        for c in card.contexts
    ]
    act_max = edges[-1] if edges[-1] > edges[0] else edges[0] + 1.0  # never fired in the text: any width
    return FeatureFile(
        transcoder_id=card.hook,
        index=card.feature,
        examples_quantiles=[ExamplesQuantile(quantile_name=GROUP, examples=examples)],
        top_logits=[process_token(s) for s, _ in card.promoted],
        bottom_logits=[process_token(s) for s, _ in card.suppressed],
        act_min=edges[0],
        act_max=act_max,
        quantile_values=percentiles(edges, counts),
        histogram=[float(c) for c in counts],
        activation_frequency=card.frequency,
    ).model_dump()


def write_viewer_features(
    graph,
    model,
    saes: dict,
    data: str | Path,
    *,
    slug: str = "graph",
    explainer: Explainer | None = None,
    indexes: dict[str, FeatureIndex] | None = None,
    tokens=None,
    n_examples: int = 16,
    progress: bool = True,
) -> ViewerFiles:
    """The graph's JSON and one feature file per feature of its kept feature nodes, in the `data` folder laid
    out as circuit-tracer's viewer reads it (see the module docstring); returns what it wrote.

    saes: the dictionaries the graph was built with ({hook: SAE or transcoder}, any number of layers).
    The indexes: `explainer`'s (a case study's or graph labeller's: its indexes and cards are reused), else
    `indexes` ({hook: FeatureIndex}), else each dictionary's index over `tokens` (see
    attribution.explain.feature_index: loaded from the cache, built there on first use). n_examples: top
    contexts per feature (each feature's costs one forward of that many texts). A feature without an index
    gets no file (its node id is listed in `missing`; the viewer's panel then stays empty for it).
    """
    if not isinstance(slug, str) or not SLUG.match(slug):
        raise GraphError(f"slug must be a file name of letters, digits, '.', '_' and '-', got {slug!r}")
    if isinstance(n_examples, bool) or not isinstance(n_examples, int) or n_examples < 1:
        raise GraphError(f"n_examples must be a whole number >= 1, got {n_examples!r}")
    data = Path(data)
    if data.exists() and not data.is_dir():
        raise GraphError(f"{data} is a file; write_viewer_features writes a folder (the viewer's data folder)")
    saes = {model.hook(h).name: s for h, s in saes.items()}
    feats = [x for x in graph.nodes if x.kind == "feature"]
    unknown = sorted({x.hook for x in feats} - set(saes))
    if unknown:
        raise GraphError(f"the graph has features at {unknown}, for which no dictionary was given: pass them all")
    if explainer is None:
        explainer = Explainer(model, saes, indexes=indexes, tokens=tokens, n_contexts=n_examples, progress=progress)
    else:
        explainer = explainer.with_contexts(n_examples)
    explainer.prepare(sorted({x.hook for x in feats}))

    scan = SCAN.format(slug=slug)
    folder = data / FEATURES / slug
    shutil.rmtree(folder, ignore_errors=True)  # this slug's files of an earlier write
    folder.mkdir(parents=True)
    out = ViewerFiles(data=data, graph=data / f"{slug}.json", metadata=data / "graph-metadata.json", scan=scan)
    written: dict[int, Path | None] = {}  # cantor(layer, index) -> its file (None: no index)
    labels: dict[int, str] = {}
    for x in feats:
        key = cantor_pairing(graph.layers[x.hook], x.feature)
        if key not in written:
            index = explainer.index(x.hook)
            card = explainer.card(x.hook, x.feature) if index is not None else None
            written[key] = None
            if card is not None:
                written[key] = folder / f"{key}.json"
                written[key].write_text(json.dumps(feature_file(card, index)))
                labels[key] = card.label
        node_id = f"{graph.layers[x.hook]}_{x.feature}_{x.position}"  # as graphs.schema names it
        if written[key] is None:
            out.missing.append(node_id)
        else:
            out.features[node_id] = written[key]

    doc = graph.to_json(slug=slug)
    meta = doc["metadata"]
    meta["info"] = {"model": meta["scan"], **(meta.get("info") or {})}  # the scan was the model's name
    meta["scan"] = scan
    for node in doc["nodes"]:
        if node["feature_type"] == "cross layer transcoder" and not node["clerp"]:
            node["clerp"] = labels.get(node["feature"], "")
    load_graph_json(doc)  # still a valid graph file
    out.graph.write_text(json.dumps(doc, indent=1))
    graphs = json.loads(out.metadata.read_text())["graphs"] if out.metadata.exists() else []
    graphs = [g for g in graphs if g.get("slug") != slug] + [meta]  # as circuit-tracer's add_graph_metadata
    out.metadata.write_text(json.dumps({"graphs": graphs}, indent=2))
    return out
