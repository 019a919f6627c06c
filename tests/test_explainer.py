"""The explain package's boundaries and its one adapter: explain imports nothing from training (training
only explain's public names), and the graph a case-study report includes shows the report's feature cards
in its tooltips, from the same Explainer that labels the report's tables."""

import ast
import json
import re
import warnings
from pathlib import Path

import pytest
import torch

import cases
from attribution import explain as explain_fn
from attribution import feature_indexes
from attribution.explain import Explainer
from graphs.labeler import labeler
from tests.conftest import PROMPTS, random_sae, tiny_model

ROOT = Path(__file__).resolve().parents[1]
HOOKS = ("resid_post.0", "resid_post.1", "resid_post.2")


def _imports(folder: Path) -> list[tuple[str, str, list[str]]]:
    """(file, module, names) of every import statement in the .py files under folder, at any depth."""
    out = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                out += [(path.name, a.name, []) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                out.append((path.name, node.module, [a.name for a in node.names]))
    return out


def test_explain_imports_nothing_from_training_and_training_only_public_names():
    found = _imports(ROOT / "attribution" / "explain")
    assert found and not [x for x in found if x[1].startswith("attribution.training")]
    assert {m for _, m, _ in found} >= {"attribution.tokens", "attribution.cache"}  # the parse sees them
    private = [
        x for x in _imports(ROOT / "attribution" / "training")
        if x[1].startswith("attribution.explain") and any(n.startswith("_") for n in x[2])
    ]  # fmt: skip
    assert not private
    assert not [x for x in _imports(ROOT / "attribution" / "explain") if "render" in x[1] or "jinja2" in x[1]]


@pytest.fixture(scope="module")
def model():
    return tiny_model("gemma3")


@pytest.fixture(scope="module")
def saes(model):
    return {h: random_sae(model, h, seed=i) for i, h in enumerate(HOOKS)}


@pytest.fixture
def ids(model, tmp_path, monkeypatch):
    monkeypatch.setenv("ATTRIBUTION_CACHE", str(tmp_path / "cache"))
    ids = torch.randint(4, model.hf.config.vocab_size, (8, 12), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = model.tokenizer.bos_token_id
    return ids


def test_one_adapter_for_every_labels_argument(model, saes, ids):
    indexes = feature_indexes(model, saes, tokens=ids, progress=False)
    given = labeler(model, saes, indexes, progress=False)
    for h, idx in indexes.items():
        alive = int(idx.t["count"].argmax())
        assert given.label(h, alive) == idx.label(alive) and given.label(h, None) == ""
        card = given.card(h, alive)
        assert card == explain_fn(model, saes[h], alive, index=idx, n_contexts=3) and len(card.contexts) <= 3
        assert given.max_activation(h, alive) == idx.max_activation(alive)
    only = labeler(model, saes, {HOOKS[0]: indexes[HOOKS[0]]}, progress=False)
    assert only.label(HOOKS[1], 1) == "" and only.card(HOOKS[1], 1) is None  # a given set is never extended
    named = labeler(model, saes, lambda h, f: f"{h}:{f}")
    assert named.label(HOOKS[2], 5) == f"{HOOKS[2]}:5" and named.card(HOOKS[2], 5) is None
    off = labeler(model, saes, False)
    assert off.label(HOOKS[0], 1) == "" and off.card(HOOKS[0], 1) is None and not off.available
    study = Explainer(model, saes, tokens=ids, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the indexes over `ids` are cached: loaded, not rebuilt or warned of
        assert study.label(HOOKS[1], 2) == indexes[HOOKS[1]].label(2)
    full = study.card(HOOKS[1], 2)
    tooltips = labeler(model, saes, study)  # a case study's explainer: its indexes and cards, 3 contexts a card
    assert tooltips.indexes is study.indexes and tooltips.label(HOOKS[1], 2) == full.label
    cut = tooltips.card(HOOKS[1], 2)
    assert cut.contexts == full.contexts[:3] and cut.histogram == full.histogram and len(full.contexts) > 3


def test_the_reports_graph_shows_the_reports_cards_in_its_tooltips(model, saes, ids, tmp_path):
    r = cases.run(PROMPTS[1], " tired", " happy", model=model, saes=saes, out=tmp_path / "r", n_ablate=10, cards=2,
                  graph=True, index_tokens=ids, steer=False, progress=False)  # fmt: skip
    page = Path(r.paths["graph.html"]).read_text(encoding="utf-8")
    nodes = json.loads(re.search(r"var GRAPH = (\{.*?\});</script>", page, re.S).group(1))["nodes"]
    feats = [n for n in nodes if n["kind"] == "feature"]  # each one's side-panel card is in its "head"
    assert feats and all("feature-card" in n["head"] and "fires on" in n["head"] for n in feats)
    assert all("promotes" in n["head"] and 'class="ctx"' in n["head"] for n in feats)
    # each tooltip's card is the feature's own, from the index the report's tables were labelled from
    indexes = feature_indexes(model, saes, tokens=ids, progress=False)
    for n in feats:
        hook, f = re.search(r"(resid_post\.\d) #(\d+): ", n["head"]).groups()
        assert f"fires on {indexes[hook].frequency(int(f)):.3%} of" in n["head"]
    assert "feature-card" in Path(r.paths["report.html"]).read_text(encoding="utf-8")
