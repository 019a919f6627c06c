"""The generic case study: attribute a logit difference, check it by ablation, explain, steer, report.

One call does what the paper's case studies do for a prompt and a pair of answers:
1. attribution of `good - bad` to every SAE feature at every position (one forward + one backward);
2. real ablations of the top `n_ablate` features by attribution and of the top `n_ablate` by plain
   activation, so the report can show how much better attribution ranks what matters;
3. labels and feature cards for the top features (attribution.explain), where available;
4. steering with the top feature (clamped to 0, 5x and 10x its maximum activation);
5. the feature graph (graphs.build_graph) when `graph=True`;
6. report.html (offline), report.json and CSV tables in `out`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cases.report import FeatureRow, Ranking, Report

KS = (10, 20, 50, 100)


def run(
    prompt: str,
    good: str,
    bad: str,
    *,
    model=None,
    saes=None,
    hooks: list[str] | str | None = None,
    out: str | Path = "runs/case",
    method: str = "grad_x_act",
    mode: str = "zero",
    top: int = 20,
    n_ablate: int = 100,
    corrupt: str | None = None,
    graph: bool = False,
    groups: dict[str, tuple[list[str], list[str]]] | None = None,
    steer: bool | str | tuple[str, int] = True,
    explain: bool = True,
    index_tokens=None,
    cards: int = 5,
    steer_tokens: int = 12,
    clamps: str | tuple[float, ...] = (0.0, 5.0, 10.0),
    title: str = "Case study",
    progress: bool = True,
) -> Report:
    """Run one case study and write its report into `out`; returns the Report (tables, statistics, paths).

    model: an attribution.Model, or anything load_model takes (None: the embedded gemma-3-270m).
    saes: None/"default" (the project's SAEs), "whole" (no features: activation patching), SAE folder(s),
    SAE objects or {hook: SAE}. hooks: restrict to (or, for "default"/"whole", choose) these hooks.
    method/mode/corrupt: as in attribution.attribute / attribution.ablate.
    top: rows shown in the page's tables (report.json and the CSVs hold all `n_ablate`).
    steer: False, True (the feature of largest positive attribution), or the feature to clamp, as
    (hook, feature) or "hook:feature"; clamps: multiples of its maximum activation to clamp it to.
    groups: with the graph, supernodes found by contrast, {name: (positive prompts, negative prompts)}
        (graphs.Graph.group_by_contrast), each ablated as one unit.
    explain: labels and feature cards from attribution.explain; index_tokens: ids [n_seq, seq] to index the
    features over (default: explain's corpus). cards: how many feature cards. steer_tokens: greedy tokens.
    """
    from attribution import AttributionError, LogitDiff, TokenizationError, ablate, attribute, compare
    from attribution.explain import Explainer
    from cases import sources
    from graphs.render import render

    sources.check_prompt(prompt)
    if n_ablate < 2 or top < 1 or cards < 0 or steer_tokens < 0:
        raise AttributionError(
            f"need n_ablate >= 2 (a correlation), top >= 1, cards >= 0, steer_tokens >= 0; got "
            f"n_ablate={n_ablate}, top={top}, cards={cards}, steer_tokens={steer_tokens}"
        )
    clamps = _multiples(clamps)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AttributionError(f"--out {out} is a file; give a folder for the report")
    bar = tqdm(total=8, desc=title, disable=not progress, leave=False)
    clock = _Clock(bar)

    with clock("load model"):
        model = sources.resolve_model(model, progress=progress)
        model.tokenize(prompt)  # empty / too long, before anything slow
        metric = LogitDiff(model, good, bad)  # answers that are not one token
        if metric.good_ids.tolist() == metric.bad_ids.tolist():
            raise TokenizationError(f"good {good!r} and bad {bad!r} are the same token: the metric would be 0")
        sources.check_hooks(model, hooks)
    with clock("SAEs"):
        saes = sources.resolve_saes(model, saes, hooks, progress=progress)
    with clock("attribution"):
        attr = attribute(model, saes, prompt, metric, method=method, corrupt=corrupt)
    has_features = bool((attr.feature >= 0).any())
    notes = []
    if not has_features and any(s.d_sae > 0 for s in saes.values()):
        notes.append("no SAE feature is active on this prompt, so the tables rank error nodes")
    by_attr = attr.order(n_ablate, errors=not has_features)
    by_act = _by_activation(attr, n_ablate, features=has_features)
    with clock("ablation"):
        nodes = [attr.node(int(i)) for i in by_attr]
        abl = ablate(model, saes, prompt, metric, nodes, mode=mode, corrupt=corrupt, progress=progress)
        effect = dict(zip(abl.node_keys(), abl.effect.tolist()))
        extra = [attr.node(int(i)) for i in by_act if attr.node(int(i)).key not in effect]
        if extra:
            abl2 = ablate(model, saes, prompt, metric, extra, mode=mode, corrupt=corrupt, progress=progress)
            effect.update(zip(abl2.node_keys(), abl2.effect.tolist()))
        agreement = compare(attr, abl)

    with clock("labels"):
        explainer = Explainer(model, saes, enabled=explain, tokens=index_tokens, progress=progress)
        if not explainer.available:
            notes.append(explainer.reason)
        explainer.prepare(attr.hooks[int(h)] for h in attr.hook_idx[torch.cat([by_attr, by_act])].unique())
        rows_attr = _rows(attr, by_attr, effect, explainer)
        rows_act = _rows(attr, by_act, effect, explainer)
    report = Report(
        title=title,
        prompt=prompt,
        good=good,
        bad=bad,
        tokens=list(attr.tokens[0]),
        model=repr(model),
        saes={h: sources.describe(s) for h, s in saes.items()},
        method=method,
        mode=mode,
        corrupt=corrupt,
        metric=float(attr.metric[0]),
        baseline=None if attr.baseline is None else float(attr.baseline[0]),
        top_attribution=rows_attr,
        top_activation=rows_act,
        agreement=agreement.__dict__,
        rankings=_rankings(rows_attr, rows_act, effect),
        feature_attribution=float(attr.value[attr.feature >= 0].sum()),
        error_attribution=float(attr.value[attr.feature < 0].sum()),
        position_attribution=_by_position(attr, has_features),
        shown=top,
        notes=notes,
    )

    with clock("cards"):
        if explainer.available and cards:
            seen = list(dict.fromkeys((r.hook, r.feature) for r in rows_attr if r.feature is not None))
            for hook, feat in tqdm(seen[:cards], desc="feature cards", disable=not progress, leave=False):
                card = explainer.card(hook, feat)
                report.cards.append(card.to_dict())
                report.card_html.append(render("card.html.j2", card=card))

    with clock("steering"):
        if not steer:
            notes.append("steering was turned off (steer=False / --no-steer)")
        elif not has_features:
            notes.append("steering skipped: the dictionary has no features to clamp")
        else:
            report.steering = _steer(
                model, saes, prompt, metric, attr, rows_attr, explainer, steer_tokens, steer, clamps
            )

    graph_html = None
    with clock("graph"):
        if graph:
            report.graph, graph_html = _graph(
                model, saes, prompt, metric, out, explainer, notes, progress, groups or {}
            )
            if report.graph is not None:
                report.paths |= {"graph.html": report.graph["html"], "graph.json": report.graph["json"]}

    from cases import html

    report.write(out)
    report.paths["report.html"] = str(out / "report.html")
    report.timings = clock.times | {"total": round(time.perf_counter() - clock.t0, 3)}
    html.write(report, out / "report.html", graph_html=graph_html)
    report.write(out)  # again, so report.json holds the final timings and paths
    bar.close()
    return report


class _Clock:
    """Times each stage and advances the stage progress bar."""

    def __init__(self, bar):
        self.bar, self.times, self.t0 = bar, {}, time.perf_counter()

    def __call__(self, stage: str):
        import contextlib

        @contextlib.contextmanager
        def timed():
            self.bar.set_postfix_str(stage)
            t = time.perf_counter()
            try:
                yield
            except BaseException:
                self.bar.close()  # so an error message is not tangled with a half-drawn bar
                raise
            self.times[stage] = round(time.perf_counter() - t, 3)
            self.bar.update(1)

        return timed()


def _multiples(clamps) -> tuple[float, ...]:
    """Clamp multiples from a sequence or a comma-separated string ("0,5,10")."""
    from attribution import AttributionError

    try:
        values = tuple(float(x) for x in (clamps.split(",") if isinstance(clamps, str) else clamps))
    except (TypeError, ValueError):
        values = ()
    if not values or not all(math.isfinite(v) for v in values):
        raise AttributionError(f"clamps={clamps!r}: give multiples of the maximum activation, e.g. 0,5,10")
    return values


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


def _rankings(rows_attr, rows_act, effect: dict) -> dict[str, Ranking]:
    from attribution.compare import pearson, spearman

    best = np.sort(np.abs(np.array(list(effect.values()))))[::-1]

    def ranking(by, rows, score, target):
        s, t = np.array([score(r) for r in rows]), np.array([target(r) for r in rows])
        mag = np.abs([r.effect for r in rows])
        n = len(rows)
        captured = {k: _share(mag[:k].sum(), best[:k].sum()) for k in KS if k <= n} or {
            n: _share(mag.sum(), best[:n].sum())
        }
        return Ranking(by, n, pearson(s, t), spearman(s, t), captured)

    return {
        "attribution": ranking("attribution", rows_attr, lambda r: r.attribution, lambda r: r.effect),
        "activation": ranking("activation", rows_act, lambda r: r.activation, lambda r: abs(r.effect)),
    }


def _share(a: float, b: float) -> float:
    return float(a / b) if b > 0 else float("nan")


def _by_position(attr, features: bool) -> list[float]:
    """Per prompt position, the attribution of its strongest node (features, or whole nodes)."""
    out = [0.0] * len(attr.tokens[0])
    keep = (attr.prompt == 0) & ((attr.feature >= 0) if features else (attr.feature < 0))
    for pos, v in zip(attr.position[keep].tolist(), attr.value[keep].tolist()):
        if abs(v) > abs(out[pos]):
            out[pos] = v
    return out


def _steer(model, saes, prompt, metric, attr, rows_attr, explainer, n_tokens, choice, multiples):
    """Steer with `choice` ((hook, feature) or "hook:feature"), or by default with the feature of largest
    positive attribution (the one that pushes toward `good`)."""
    from attribution import SAEError
    from cases.steer import steer

    if choice is True:
        feats = [r for r in rows_attr if r.feature is not None]
        row = next((r for r in feats if r.attribution > 0), feats[0])
        hook, feature, label = row.hook, row.feature, row.label
        why = "the feature with the largest positive attribution"
    else:
        try:
            hook, feature = choice.rsplit(":", 1) if isinstance(choice, str) else choice
            feature = int(str(feature).removeprefix("f"))
        except ValueError:
            raise SAEError(f"steer={choice!r}: name the feature as HOOK:FEATURE, e.g. resid_post.9:1234") from None
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
        model, saes[hook], prompt, metric, feature, max_activation=peak, max_source=source, n_tokens=n_tokens,
        label=label, multiples=multiples,
    )  # fmt: skip
    result.chosen = why
    return result


def _graph(model, saes, prompt, metric, out: Path, explainer, notes: list[str], progress: bool, groups: dict):
    """Build, prune, check and export the feature graph; (stats, its HTML) or (None, None) with a note."""
    try:
        from graphs import GraphError, build_graph
    except ImportError as exc:
        notes.append(f"graph skipped: graphs.build_graph is not available ({exc})")
        return None, None
    out.mkdir(parents=True, exist_ok=True)
    labels = explainer if explainer.available else False  # the report's own labels and cards, one index
    g = build_graph(model, saes, prompt, metric, labels=labels, progress=progress)
    g.prune(node_threshold=0.8, edge_threshold=0.98, max_feature_nodes=60)  # 60: a graph a reader can follow
    check = g.check()
    kinds = [n.kind for n in g.nodes]
    stats = {
        "feature nodes": kinds.count("feature"),
        "error nodes": kinds.count("error"),
        "edges": len(g.edges),
        "faithfulness": float(check.faithfulness) if check.defined else None,
        "completeness": float(check.completeness) if check.defined else None,
        "check": str(check),
        "layers": [
            {
                "hook": x.hook,
                "carried": x.carried,
                "graph": x.graph - x.empty,
                "faithfulness": x.faithfulness if x.defined else None,
            }
            for x in g.check_layers()
        ],
        "groups": {},
    }
    for name, (positive, negative) in groups.items():
        try:
            matches = g.group_by_contrast(name, positive, negative)
        except GraphError as exc:
            stats["groups"][name] = {"error": str(exc)}
            continue
        members = [g.node(i) for i in g.groups[name]]
        stats["groups"][name] = {
            "features": [str(m) for m in matches],
            "nodes": len(members),
            "kept": sum(g.kept(x.id) for x in members),
            "ablation": g.ablate_group(name),  # metric change, zero ablation of every member at once
        }
    g.to_html(out / "graph.html")
    g.to_json(out / "graph.json")
    stats |= {"html": str(out / "graph.html"), "json": str(out / "graph.json")}
    return stats, (out / "graph.html").read_text(encoding="utf-8")
