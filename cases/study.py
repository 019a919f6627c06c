"""The generic case study: attribute a logit difference, check it by ablation, explain, steer, report.

One call does what the paper's case studies do for a prompt and a pair of answers, as the stages of
cases.stages (each timed, each returning a typed result or a Skip):
1. attribution of `good - bad` to every SAE feature at every position (one forward + one backward);
2. real ablations of the top `n_ablate` features by attribution and of the top `n_ablate` by plain
   activation, so the report can show how much better attribution ranks what matters;
3. labels and feature cards for the top features (attribution.explain), where available;
4. steering with the top feature (clamped to 0, 5x and 10x its maximum activation);
5. the feature graph (graphs.build_graph) when the config asks for it;
6. report.html (offline), report.json and CSV tables in the output folder.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
from tqdm.auto import tqdm

from cases import stages
from cases.config import CaseConfig
from cases.report import Ranking, Report, Skip

KS = (10, 20, 50, 100)


def run(config: CaseConfig | str, good: str | None = None, bad: str | None = None, /, **keywords) -> Report:
    """Run one case study and write its report; returns the Report (tables, statistics, skips, paths).

    config: a CaseConfig (cases.config), or the prompt followed by the good and bad answers and
    CaseConfig.from_keywords's keywords (model=, saes=, hooks=, out=, n_ablate=, steer=, explain=, ...).
    """
    if not isinstance(config, CaseConfig):
        config = CaseConfig.from_keywords(config, good, bad, **keywords)
    elif good is not None or bad is not None or keywords:
        raise TypeError("cases.run(config) takes the CaseConfig alone; change it with dataclasses.replace")
    out = config.output.out
    if out.exists() and not out.is_dir():
        from attribution import AttributionError

        raise AttributionError(f"--out {out} is a file; give a folder for the report")
    bar = tqdm(total=len(stages.STAGES), desc=config.question.title, disable=not config.progress, leave=False)
    clock = _Clock(bar)

    with clock("load model"):
        loaded = stages.load_model(config)
    with clock("SAEs"):
        saes = stages.load_saes(config, loaded)
    with clock("attribution"):
        attributed = stages.attribution(config, loaded, saes)
    with clock("ablation"):
        ablated = stages.ablation(config, loaded, saes, attributed)
    with clock("labels"):
        labelled = stages.labels(config, loaded, saes, attributed, ablated)
    report = _report(config, loaded, saes, attributed, ablated, labelled)
    with clock("cards"):
        cards = stages.cards(config, labelled)
        if isinstance(cards, Skip):
            report.skip(cards)
        else:
            report.cards, report.feature_cards = cards.dicts, cards.cards
    with clock("steering"):
        steering = stages.steering(config, loaded, saes, attributed, labelled)
        if isinstance(steering, Skip):
            report.skip(steering)
        else:
            report.steering = steering
    with clock("graph"):
        graph = stages.graph(config, loaded, saes, labelled)
        if isinstance(graph, Skip):
            report.skip(graph)
        elif graph is not None:
            report.graph = graph.stats
            report.paths |= {"graph.html": graph.stats["html"], "graph.json": graph.stats["json"]}
    with clock("replacement graph"):
        from cases import replacement_stage

        rep = replacement_stage.stage(config, loaded, None if isinstance(graph, Skip) else graph)
        if rep is not None:
            report.replacement = rep.stats
            report.paths |= {"replacement.html": rep.stats["html"], "replacement.json": rep.stats["json"]}

    from pages import report_page

    report.write(out)
    report.paths["report.html"] = str(out / "report.html")
    report.timings = clock.times | {"total": round(time.perf_counter() - clock.t0, 3)}
    report_page.write(
        report, out / "report.html", graph_html=None if graph is None or isinstance(graph, Skip) else graph.html
    )
    report.write(out)  # again, so report.json holds the final timings and paths
    bar.close()
    return report


def _report(config: CaseConfig, loaded, saes, attributed, ablated, labelled) -> Report:
    """The measured part of the report: tables, agreement, rankings, attribution by position."""
    from cases import sources

    q, attr = config.question, attributed.attr
    report = Report(
        title=q.title,
        prompt=q.prompt,
        good=q.good,
        bad=q.bad,
        tokens=list(attr.tokens[0]),
        model=repr(loaded.model),
        saes={h: sources.describe(s) for h, s in saes.items()},
        method=config.measure.method,
        mode=config.measure.mode,
        corrupt=config.measure.corrupt,
        metric=float(attr.metric[0]),
        baseline=None if attr.baseline is None else float(attr.baseline[0]),
        top_attribution=labelled.by_attribution,
        top_activation=labelled.by_activation,
        agreement=ablated.agreement.__dict__,
        rankings=_rankings(labelled.by_attribution, labelled.by_activation, ablated.effect),
        feature_attribution=float(attr.value[attr.feature >= 0].sum()),
        error_attribution=float(attr.value[attr.feature < 0].sum()),
        position_attribution=_by_position(attr, attributed.features),
        shown=config.output.top,
        notes=[] if attributed.note is None else [attributed.note],
    )
    if labelled.skip is not None:
        report.skip(labelled.skip)
    return report


class _Clock:
    """Times each stage and advances the stage progress bar."""

    def __init__(self, bar):
        self.bar, self.times, self.t0 = bar, {}, time.perf_counter()

    def __call__(self, stage: str):
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
