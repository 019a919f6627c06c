"""The stages of a case study, in order, each a small function of the config and earlier results.

A stage returns a typed result, or a `Skip(stage, reason)` when it cannot or was told not to run; the
report keeps skips as data (`Report.skipped`) and the page reads them to say why a section is missing.
`cases.study.run` times the stages and assembles the report; a notebook can call them one by one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from cases import sources
from cases.config import CaseConfig
from cases.report import FeatureRow, Skip, Steering

if TYPE_CHECKING:
    from attribution.explain import Explainer

STAGES = ("load model", "SAEs", "attribution", "ablation", "labels", "cards", "steering", "graph", "replacement graph")


@dataclass
class Loaded:
    """The model, the metric on it, and the hooks the config names (canonical), all checked."""

    model: Any  # attribution.Model
    metric: Any  # attribution.LogitDiff
    hooks: list[str] | None


@dataclass
class Attributed:
    """The attribution and the two rankings drawn from it (row indices into `attr`)."""

    attr: Any  # attribution.Attribution
    features: bool  # any SAE feature active; if not, the rankings hold error (or whole) nodes
    by_attribution: torch.Tensor
    by_activation: torch.Tensor
    note: str | None  # said when the rankings fall back to error nodes


@dataclass
class Ablated:
    """The measured effect of every node in either ranking, and attribution's agreement with it."""

    effect: dict  # node key -> metric(clean) - metric(ablated)
    agreement: Any  # attribution.Agreement over the ranking by attribution


@dataclass
class Labelled:
    """Both rankings as table rows (labelled where a feature index exists) and the explainer behind them."""

    explainer: Explainer  # attribution.explain's: labels and cards, one index per SAE
    by_attribution: list[FeatureRow]
    by_activation: list[FeatureRow]
    skip: Skip | None  # no labels, and why


@dataclass
class Cards:
    """Feature cards for the top features by attribution: as data (for the JSON) and as objects."""

    dicts: list[dict]
    cards: list  # attribution.explain.FeatureCard


@dataclass
class GraphResult:
    """The pruned, checked feature graph's statistics (report.graph) and its offline page."""

    stats: dict
    html: str
    full: Any = None  # the unpruned graph, and the SAEs it was built with (the replacement stage compares)
    saes: Any = None


def load_model(config: CaseConfig) -> Loaded:
    """The model, with the prompt, answers and hooks checked on it before anything slow runs."""
    from attribution import LogitDiff, TokenizationError

    q = config.question
    model = sources.resolve_model(config.sources.model, progress=config.progress)
    model.tokenize(q.prompt)  # empty / too long
    metric = LogitDiff(model, q.good, q.bad)  # answers that are not one token
    if metric.good_ids.tolist() == metric.bad_ids.tolist():
        raise TokenizationError(f"good {q.good!r} and bad {q.bad!r} are the same token: the metric would be 0")
    hooks = config.sources.hooks
    return Loaded(model, metric, sources.check_hooks(model, None if hooks is None else list(hooks)))


def load_saes(config: CaseConfig, loaded: Loaded) -> dict:
    """{hook: SAE} in forward order (see cases.sources.resolve_saes)."""
    return sources.resolve_saes(loaded.model, config.sources.saes, loaded.hooks, progress=config.progress)


def attribution(config: CaseConfig, loaded: Loaded, saes: dict) -> Attributed:
    """Attribute the metric to every node; rank the top n_ablate by attribution and by plain activation."""
    from attribution import attribute

    m = config.measure
    attr = attribute(loaded.model, saes, config.question.prompt, loaded.metric, method=m.method, corrupt=m.corrupt)
    features = bool((attr.feature >= 0).any())
    note = None
    if not features and any(s.d_sae > 0 for s in saes.values()):
        note = "no SAE feature is active on this prompt, so the tables rank error nodes"
    by_act = _by_activation(attr, m.n_ablate, features=features)
    return Attributed(attr, features, attr.order(m.n_ablate, errors=not features), by_act, note)


def ablation(config: CaseConfig, loaded: Loaded, saes: dict, attributed: Attributed) -> Ablated:
    """Really ablate both rankings' nodes (each once) and compare attribution with the effects."""
    from attribution import ablate, compare

    m, attr = config.measure, attributed.attr
    run = dict(mode=m.mode, corrupt=m.corrupt, progress=config.progress)
    prompt, metric = config.question.prompt, loaded.metric
    abl = ablate(loaded.model, saes, prompt, metric, [attr.node(int(i)) for i in attributed.by_attribution], **run)
    effect = dict(zip(abl.node_keys(), abl.effect.tolist()))
    extra = [attr.node(int(i)) for i in attributed.by_activation if attr.node(int(i)).key not in effect]
    if extra:
        more = ablate(loaded.model, saes, prompt, metric, extra, **run)
        effect.update(zip(more.node_keys(), more.effect.tolist()))
    return Ablated(effect, compare(attr, abl))


def labels(config: CaseConfig, loaded: Loaded, saes: dict, attributed: Attributed, ablated: Ablated) -> Labelled:
    """Both rankings as rows, labelled from the feature indexes of the hooks they show (built in one pass)."""
    from attribution.explain import Explainer

    o, attr = config.output, attributed.attr
    explainer = Explainer(loaded.model, saes, enabled=o.explain, tokens=o.index_tokens, progress=config.progress)
    both = torch.cat([attributed.by_attribution, attributed.by_activation])
    explainer.prepare(attr.hooks[int(h)] for h in attr.hook_idx[both].unique())
    return Labelled(
        explainer,
        _rows(attr, attributed.by_attribution, ablated.effect, explainer),
        _rows(attr, attributed.by_activation, ablated.effect, explainer),
        None if explainer.available else Skip("labels", explainer.reason),
    )


def cards(config: CaseConfig, labelled: Labelled) -> Cards | Skip:
    """Feature cards for the top `cards` distinct features by attribution."""
    if labelled.skip is not None:
        return Skip("cards", labelled.skip.reason)
    if not config.output.cards:
        return Skip("cards", "no feature cards were asked for (cards=0 / --cards 0)")
    seen = list(dict.fromkeys((r.hook, r.feature) for r in labelled.by_attribution if r.feature is not None))
    if not seen:
        return Skip("cards", "no feature among the top nodes by attribution to draw a card for")
    todo = tqdm(seen[: config.output.cards], desc="feature cards", disable=not config.progress, leave=False)
    made = [labelled.explainer.card(hook, feat) for hook, feat in todo]
    return Cards([c.to_dict() for c in made], made)


def steering(config: CaseConfig, loaded: Loaded, saes: dict, attributed: Attributed, labelled: Labelled):
    """Clamp one feature (the user's, or the largest positive attribution) -> Steering, or Skip."""
    if not config.steering.enabled:
        return Skip("steering", "steering was turned off (steer=False / --no-steer)")
    if not attributed.features:
        return Skip("steering", "steering skipped: the dictionary has no features to clamp")
    return _steer(config, loaded, saes, attributed.attr, labelled)


def graph(config: CaseConfig, loaded: Loaded, saes: dict, labelled: Labelled) -> GraphResult | Skip | None:
    """Build, prune, check and export the feature graph (None when not asked for: the page has no section)."""
    if not config.graph.build:
        return None
    try:
        from graphs import build_graph
        from graphs.labeler import labeler
        from pages.graph_page import page
    except ImportError as exc:
        return Skip("graph", f"graph skipped: graphs.build_graph is not available ({exc})")
    out, explainer = config.output.out, labelled.explainer
    out.mkdir(parents=True, exist_ok=True)
    labels = explainer if explainer.available else False  # the report's own labels and cards, one index
    model, prompt, metric = loaded.model, config.question.prompt, loaded.metric
    full = build_graph(model, saes, prompt, metric, labels=labels, progress=config.progress)
    g = full.prune(node_threshold=0.8, edge_threshold=0.98, max_feature_nodes=60)  # 60: a graph a reader can follow
    result, stats = _graph_stats(model, saes, g, metric)
    stats["groups"] = contrast_groups(model, saes, g, metric, config.graph.groups)
    cards = labeler(model, saes, explainer).card if explainer.available else None  # tooltips: 3 contexts a card
    text = page(g, check=result, cards=cards)  # faithfulness and completeness in the title
    (out / "graph.html").write_text(text, encoding="utf-8")  # the page the report also embeds, rendered once
    g.to_json(out / "graph.json")
    stats |= {"html": str(out / "graph.html"), "json": str(out / "graph.json")}
    return GraphResult(stats, text, full, saes)


def _graph_stats(model, saes: dict, g, metric) -> tuple[Any, dict]:
    """The pruned graph's check (graphs.Check) and its statistics: size, faithfulness, completeness, and
    layer by layer what it keeps."""
    from graphs import check, check_layers

    result = check(model, saes, g, metric)
    kinds = [n.kind for n in g.nodes]
    return result, {
        "feature nodes": kinds.count("feature"),
        "error nodes": kinds.count("error"),
        "edges": len(g.edges),
        "faithfulness": float(result.faithfulness) if result.defined else None,
        "completeness": float(result.completeness) if result.defined else None,
        "check": str(result),
        "layers": [
            {
                "hook": x.hook,
                "carried": x.carried,
                "graph": x.graph - x.empty,
                "faithfulness": x.faithfulness if x.defined else None,
            }
            for x in check_layers(model, saes, g, metric)
        ],
    }


def contrast_groups(model, saes: dict, g, metric, groups: dict, swaps: dict | None = None) -> dict:
    """Each group found by contrast and ablated as one unit (or the error that says why none was found), and
    swapped for another group's features where `swaps` names it (graphs.interventions.swap_group)."""
    from graphs import GraphError, ablate_group, group_by_contrast
    from graphs.interventions import swap_group

    found = {}
    for name, (positive, negative) in groups.items():
        try:
            matches = group_by_contrast(model, saes, g, name, positive, negative)
        except GraphError as exc:
            found[name] = {"error": str(exc)}
            continue
        members = [g.node(i) for i in g.groups[name]]
        found[name] = {
            "features": [str(m) for m in matches],
            "nodes": len(members),
            "kept": sum(g.kept(x.id) for x in members),
            "ablation": ablate_group(model, saes, g, name, metric),  # zero ablation of every member at once
        }
        if swaps and name in swaps:
            found[name]["swap"] = swap_group(model, saes, g, name, *swaps[name])
    return found


def _by_activation(attr, k: int, *, features: bool):
    """Row indices of the k largest plain activations (feature nodes; whole/error norms if no features)."""
    keep = (attr.prompt == 0) & ((attr.feature >= 0) if features else (attr.feature < 0))
    idx = keep.nonzero().squeeze(-1)
    return idx[attr.activation[idx].argsort(descending=True, stable=True)][:k]


def _rows(attr, order, effect: dict, explainer) -> list[FeatureRow]:
    rows = []
    for rank, i in enumerate(order.tolist(), 1):
        n = attr.node(i)
        rows.append(
            FeatureRow(
                rank, n.hook, n.position, n.token, n.feature, n.activation, n.attribution, float(effect[n.key]),
                explainer.label(n.hook, n.feature),
            )
        )  # fmt: skip
    return rows


def _steer(config: CaseConfig, loaded: Loaded, saes: dict, attr, labelled: Labelled) -> Steering:
    """Steer with the configured feature, or by default with the feature of largest positive attribution
    (the one that pushes toward `good`)."""
    from attribution import SAEError
    from cases.steer import steer

    model, explainer, options = loaded.model, labelled.explainer, config.steering
    if options.feature is None:
        feats = [r for r in labelled.by_attribution if r.feature is not None]
        row = next((r for r in feats if r.attribution > 0), feats[0])
        hook, feature, label = row.hook, row.feature, row.label
        why = "the feature with the largest positive attribution"
    else:
        hook, feature = options.feature
        hook = model.hook(hook).name
        if hook not in saes:
            raise SAEError(f"cannot steer a feature at {hook}: no SAE there; SAEs are at {list(saes)}")
        if not 0 <= feature < saes[hook].d_sae:
            raise SAEError(f"feature {feature} does not exist: the SAE at {hook} has {saes[hook].d_sae}")
        label, why = explainer.label(hook, feature), "chosen by the user"
    peak = explainer.max_activation(hook, feature)
    if peak is not None and peak > 0:
        source = f"the feature index (its largest activation over {explainer.index(hook).n_tokens:,} indexed tokens)"
    else:
        sel = (attr.hook_idx == attr.hooks.index(hook)) & (attr.feature == feature) & (attr.prompt == 0)
        if not sel.any():
            raise SAEError(f"{hook} f{feature} does not fire on the prompt and no feature index gives its maximum")
        peak = float(attr.activation[sel].max())
        source = "this prompt (no feature index: largest activation over the prompt's tokens)"
    result = steer(
        model, saes[hook], config.question.prompt, loaded.metric, feature, max_activation=peak, max_source=source,
        n_tokens=options.tokens, label=label, multiples=options.clamps,
    )  # fmt: skip
    result.chosen = why
    return result
