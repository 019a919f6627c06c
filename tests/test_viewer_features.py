"""graphs.viewer_features on tiny random models: the feature files circuit-tracer 0.5.0's viewer requests for
every feature node of a graph exist, have every field its feature-detail panel reads with the right types
and lengths, and hold the feature index's own top contexts, histogram, frequency, logit-lens tokens and
labels. (bench/peers/circuit_tracer_viewer.py checks the same files in the real viewer in Chromium.)"""

from __future__ import annotations

import json

import pytest
import torch

from attribution import LogitDiff, explain, feature_indexes
from graphs import GraphError, build_graph, load_graph_json
from graphs.schema import cantor_pairing
from graphs.viewer_features import percentiles, process_token, write_viewer_features
from tests.conftest import PROMPTS, random_sae, random_transcoders, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

N_EXAMPLES = 5
# every field of circuit-tracer's frontend/feature_models.py, and the type the viewer needs
FILE_FIELDS = {
    "transcoder_id": str,
    "index": int,
    "examples_quantiles": list,  # init-feature-examples-list.js: [{quantile_name, examples}]
    "top_logits": list,  # init-feature-examples-logits.js: "Token Predictions", Top
    "bottom_logits": list,  # ... Bottom
    "act_min": float,  # the colour scale's and the histogram's domain (init-feature-examples.js loadFeature)
    "act_max": float,
    "quantile_values": list,  # render-act-histogram.js: the node's activation as "<i>pct"
    "histogram": list,  # render-act-histogram.js: one bar per entry over [act_min, act_max]
    "activation_frequency": float,  # render-act-histogram.js: "Freq: x%"
}
EXAMPLE_FIELDS = {"tokens": list, "tokens_acts_list": list, "train_token_ind": int, "is_repeated_datapoint": bool}


def _tokens(model, n_seq=48, seq=16):
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, model.tokenizer.vocab_size, (n_seq, seq), generator=g)
    tokens[:, 0] = model.tokenizer.bos_token_id
    return tokens


@pytest.fixture(scope="module", params=["transcoders", "saes"])
def built(request, tmp_path_factory):
    """A pruned graph with features at several layers (a replacement graph with a transcoder per layer, or
    residual SAEs at two layers), its dictionaries' indexes over a fixed text, and the files written."""
    if request.param == "transcoders":
        model = tiny_model("gemma3", dtype=torch.float32)
        dicts = random_transcoders(model)
    else:
        model = tiny_model("gpt2", dtype=torch.float32)
        dicts = {h: random_sae(model, h, seed=i) for i, h in enumerate(["resid_post.0", "resid_post.2"])}
    graph = build_graph(model, dicts, PROMPTS[0], LogitDiff(model, "sad", "happy"), labels=False, progress=False)
    graph = graph.prune(node_threshold=0.9, edge_threshold=0.98, max_feature_nodes=20)
    indexes = feature_indexes(model, dicts, tokens=_tokens(model), progress=False)
    data = tmp_path_factory.mktemp("viewer") / "data"
    out = write_viewer_features(graph, model, dicts, data, slug="tiny", indexes=indexes, n_examples=N_EXAMPLES)
    return model, dicts, graph, indexes, out


def _requested(scan: str, node: dict) -> str:
    """The URL circuit-tracer's viewer fetches for a feature node (init-feature-examples.js loadFeature: a scan
    starting with "./" gives `${scan}/${featureIndex}.json`, featureIndex = the node's `feature`)."""
    assert scan.startswith("./") and not scan.startswith("./features/")  # util.js sends ./features/ to a CDN
    return f"{scan}/{node['feature']}.json"


def _served(data, url: str):
    """The file behind a ./data/... URL of index.html: the data folder, as circuit-tracer's local_server and
    bench.peers.circuit_tracer_viewer serve it."""
    assert url.startswith("./data/")
    return data / url[len("./data/") :]


def test_every_feature_node_has_the_file_the_viewer_requests(built):
    _, _, graph, _, out = built
    doc = json.loads(out.graph.read_text())
    load_graph_json(doc)
    assert doc["metadata"]["scan"] == out.scan and doc["metadata"]["info"]["model"] == graph.model["name"]
    nodes = [n for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder"]
    layers = {int(n["layer"]) for n in nodes}
    assert len(nodes) >= 5 and len(layers) >= 2  # features of several layers
    wanted = set()
    for n in nodes:
        layer, index, _ = (int(v) for v in n["node_id"].split("_"))
        assert n["feature"] == cantor_pairing(layer, index)
        path = _served(out.data, _requested(out.scan, n))
        assert path.is_file() and out.features[n["node_id"]] == path
        wanted.add(path)
    assert set((out.data / "features" / "tiny").iterdir()) == wanted and out.missing == []
    meta = json.loads(out.metadata.read_text())["graphs"]
    assert [(m["slug"], m["scan"]) for m in meta] == [("tiny", out.scan)]


def test_files_have_every_field_the_viewer_reads(built):
    *_, out = built
    for path in set(out.features.values()):
        f = json.loads(path.read_text())
        assert set(f) == set(FILE_FIELDS)
        for k, t in FILE_FIELDS.items():
            assert isinstance(f[k], t) or (t is float and isinstance(f[k], int)), (path, k)
        assert f["act_min"] < f["act_max"] and 0 < f["activation_frequency"] <= 1
        assert all(isinstance(s, str) for s in f["top_logits"] + f["bottom_logits"]) and f["top_logits"]
        assert len(f["histogram"]) == 10 and len(f["quantile_values"]) == 100
        q = f["quantile_values"]
        assert q == sorted(q) and f["act_min"] <= q[0] and q[-1] == pytest.approx(f["act_max"])
        (group,) = f["examples_quantiles"]
        assert set(group) == {"quantile_name", "examples"} and isinstance(group["quantile_name"], str)
        assert 1 <= len(group["examples"]) <= N_EXAMPLES
        for e in group["examples"]:
            assert set(e) == set(EXAMPLE_FIELDS)
            assert all(isinstance(e[k], t) for k, t in EXAMPLE_FIELDS.items())
            assert len(e["tokens"]) == len(e["tokens_acts_list"]) and 0 <= e["train_token_ind"] < len(e["tokens"])
            assert all(isinstance(s, str) for s in e["tokens"])
            assert all(isinstance(a, float) for a in e["tokens_acts_list"])


def test_values_are_the_feature_index(built):
    model, dicts, graph, indexes, out = built
    doc = json.loads(out.graph.read_text())
    seen = set()
    for x in graph.nodes:
        if x.kind != "feature" or (x.hook, x.feature) in seen:
            continue
        seen.add((x.hook, x.feature))
        idx, i = indexes[x.hook], x.feature
        f = json.loads(out.features[f"{graph.layers[x.hook]}_{i}_{x.position}"].read_text())
        assert f["transcoder_id"] == x.hook and f["index"] == i
        card = explain(model, dicts[x.hook], i, index=idx, n_contexts=N_EXAMPLES)
        examples = f["examples_quantiles"][0]["examples"]
        assert [e["tokens"] for e in examples] == [[process_token(t) for t in c.tokens] for c in card.contexts]
        assert [e["tokens_acts_list"] for e in examples] == [c.acts for c in card.contexts]
        assert [e["train_token_ind"] for e in examples] == [c.position for c in card.contexts]
        # the centred token's activation is the index's top activation of that text, strongest first
        tops = [e["tokens_acts_list"][e["train_token_ind"]] for e in examples]
        assert tops[0] == pytest.approx(float(idx.t["top_acts"][i, 0]), rel=1e-4)
        assert tops == sorted(tops, reverse=True)
        assert f["histogram"] == [float(c) for c in idx.t["hist"][i].tolist()]
        assert f["act_min"] == 0.0 and f["act_max"] == pytest.approx(idx.max_activation(i), rel=1e-6)
        assert f["activation_frequency"] == pytest.approx(idx.frequency(i))
        assert f["top_logits"] == [t for t, _ in card.promoted]
        assert f["bottom_logits"] == [t for t, _ in card.suppressed]
        # the label is the node's clerp (the viewer reads no label from the feature file)
        key = cantor_pairing(graph.layers[x.hook], i)
        features = [n for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder"]
        clerps = {n["clerp"] for n in features if n["feature"] == key}
        assert clerps == {idx.label(i)}


def test_percentiles_read_off_the_histogram():
    edges, counts = [0.0, 1.0, 2.0, 3.0], [1, 3, 0]
    q = percentiles(edges, counts, n=4)  # 1, 2, 3, 4 of 4 values
    assert q == pytest.approx([1.0, 1 + 1 / 3, 1 + 2 / 3, 2.0])
    assert percentiles(edges, [0, 0, 0], n=3) == [0.0, 0.0, 0.0]


def test_rewrites_other_graphs_kept_and_bad_input(built, tmp_path):
    model, dicts, graph, indexes, _ = built
    data = tmp_path / "data"
    first = write_viewer_features(graph, model, dicts, data, slug="a", indexes=indexes, n_examples=2)
    stale = data / "features" / "a" / "999999.json"
    stale.write_text("{}")
    write_viewer_features(graph, model, dicts, data, slug="b", indexes=indexes, n_examples=2)
    again = write_viewer_features(graph, model, dicts, data, slug="a", indexes=indexes, n_examples=2)
    assert not stale.exists() and again.features == first.features
    meta = json.loads((data / "graph-metadata.json").read_text())["graphs"]
    assert sorted(m["slug"] for m in meta) == ["a", "b"]
    # a dictionary without an index: its nodes get no file, and no label made up
    some = dict(list(indexes.items())[:1])
    part = write_viewer_features(graph, model, dicts, tmp_path / "part", slug="p", indexes=some, n_examples=2)
    unindexed = [x for x in graph.nodes if x.kind == "feature" and x.hook not in some]
    assert unindexed and part.missing == [f"{graph.layers[x.hook]}_{x.feature}_{x.position}" for x in unindexed]
    assert len(part.features) + len(part.missing) == sum(x.kind == "feature" for x in graph.nodes)
    doc = json.loads(part.graph.read_text())
    ids = set(part.missing)
    assert all(n["clerp"] == "" for n in doc["nodes"] if n["node_id"] in ids)
    with pytest.raises(GraphError, match="slug"):
        write_viewer_features(graph, model, dicts, data, slug="../x", indexes=indexes)
    with pytest.raises(GraphError, match="no dictionary"):
        write_viewer_features(graph, model, dict(list(dicts.items())[:1]), data, slug="c", indexes=indexes)
