"""Cross-layer vs per-layer transcoders at equal tokens and equal L0: does a CLT lower the error share of graphs?

    python -m studies.clt_experiment --tokens 400000 --limit 10   # bench/results/clt_experiment_t0.4M.json

One stream of the default corpus trains both from the same forward passes (attribution.training.stream), so
they see the same tokens in the same order: the default per-layer recipe (TopK, k per layer, the skip path
fitted by least squares first and kept fixed, schedule-free sign-SGD) and a CLT with the same width, k, skip
paths and optimiser whose features also write up to `reach - 1` layers ahead (attribution.saes.clt). Both are
kept in the cache (the CLT in circuit-tracer's CLT layout), so a rerun only rebuilds the graphs.

Measured: per layer on the corpus's held-out documents, the EV of the MLP output and what the features explain
of the part the skip path leaves (centred), L0; on the two-hop suite's prompts the model answers top-1, each
set's replacement graph: circuit-tracer's scores full and pruned to <= 100 features, and per layer the share of
the influence that error nodes carry (issue 21, part 7).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from attribution import LogitDiff, load_model
from attribution.compute import machine, model_autocast
from attribution.engine import trace
from attribution.models.model import Batch
from attribution.saes import build, load_clt, load_sae, save_clt, save_sae
from attribution.saes.clt import CrossLayerTranscoder
from attribution.tokens import OUTLIER, keep_tokens
from attribution.training import defaults
from attribution.training.stream import Dictionary, train_dictionaries
from attribution.training.transcoder_defaults import budget_tag, default_transcoder_specs, fit_skip
from cases.suite_prompts import check, load_suite
from graphs import build_graph
from graphs.scores import graph_scores
from studies.replacement_why import layer_influence

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "cases" / "suites" / "two_hop.jsonl"
MAX_FEATURES = 100


def train(model, tokens: int, reach: int, d_sae: int | None, k: int, progress: bool = True):
    """({read hook: per-layer transcoder}, CLT), trained from one stream on `tokens` tokens, kept in the cache."""
    specs = default_transcoder_specs(model, tokens=tokens, k=k, **({} if d_sae is None else {"d_sae": d_sae}))
    spec = next(iter(specs.values()))
    root = defaults.saes_dir(model) / f"clt-experiment-{budget_tag(tokens)}-w{spec.d_sae}-k{k}-r{reach}"
    if (root / "clt" / "config.yaml").is_file():
        tcs = {h: load_sae(root / "per_layer" / h, device=model.device) for h in specs}
        return tcs, load_clt(root / "clt", model=model, device=model.device), root
    train_ids, _ = defaults.default_corpus(model, tokens, progress)
    t0 = time.perf_counter()
    skips = fit_skip(model, {h: s.target for h, s in specs.items()}, train_ids, progress=progress)
    skip_s = time.perf_counter() - t0
    dicts, layers = {}, []
    for h, s in specs.items():
        tc = build("topk", model.d_model, s.d_sae, h, k=s.k, target=s.target, skip=True)
        with torch.no_grad():
            tc.W_skip.copy_(skips[h].to(tc.W_skip.dtype))
        layers.append(copy.deepcopy(tc))  # the CLT's layer: the same zero transcoder with the same skip path
        dicts[h] = Dictionary(tc, s.train_config(), h, target=s.target)
    clt = CrossLayerTranscoder(layers, reach)
    dicts["clt"] = Dictionary(clt, spec.train_config(), clt.hooks, target=[t.target for t in clt.layers])
    t0 = time.perf_counter()
    train_dictionaries(
        model,
        dicts,
        train_ids,
        batch_windows=defaults.BATCH_WINDOWS,
        tokens=tokens,
        mask_hook=defaults.middle_hook(model),
        checkpoint=defaults.saes_dir(model) / f"checkpoint-{root.name}.pt",
        progress=progress,
    )
    train_s = time.perf_counter() - t0
    tcs = {h: d.sae for h, d in dicts.items() if h != "clt"}
    clt.meta["build"] = {"skip_fit_s": skip_s, "train_s": train_s, "tokens": tokens, "machine": machine()}
    for h, tc in tcs.items():
        save_sae(tc, root / "per_layer" / h)
    save_clt(clt, root / "clt")
    (root / "build.json").write_text(json.dumps(clt.meta["build"], indent=1) + "\n")
    return tcs, clt, root


@torch.no_grad()
def held_out(model, tcs: dict, clt: CrossLayerTranscoder, windows: torch.Tensor) -> list[dict]:
    """Per layer, on held-out windows' kept tokens: EV of the MLP output and features on rest, for both sets."""
    hooks, targets = list(tcs), [t.target for t in tcs.values()]
    mask_hook = model.hook(defaults.middle_hook(model)).name
    capture = sorted({*hooks, *targets, mask_hook}, key=lambda h: model.hooks[h].order)
    sums = {}  # (set, layer) -> [sum err^2, ...]; targets' moments per layer

    def add(key, v):
        sums[key] = sums.get(key, 0.0) + v

    per = defaults.BATCH_WINDOWS
    for i in range(0, len(windows) - per + 1, per):
        with model_autocast(model):
            acts = trace(model, Batch.from_ids(windows[i : i + per], model.device), capture=capture, stop_early=True)
        keep = keep_tokens(acts.acts[mask_hook], OUTLIER)
        xs = [acts.acts[h][keep].float() for h in hooks]
        ys = [acts.acts[t][keep].double() for t in targets]
        per = [tc(x) for tc, x in zip(tcs.values(), xs)]
        runs = {"per_layer": ([o for o, _ in per], [f for _, f in per]), "clt": clt(xs)}
        for L, (x, y) in enumerate(zip(xs, ys)):
            rest = y - tcs[hooks[L]].skip(x).double()  # both sets share the fitted skip path
            add(("n", L), len(y))
            add(("y", L), y.sum(0))
            add(("yy", L), y.pow(2).sum(0))
            add(("r", L), rest.sum(0))
            add(("rr", L), rest.pow(2).sum(0))
            for name, (o, f) in runs.items():
                add((name, L), (y - o[L].double()).pow(2).sum())
                add((name, "l0", L), float((f[L] > 0).sum()))
    rows = []
    for L in range(len(hooks)):
        n = sums[("n", L)]
        var_y = float((sums[("yy", L)] - sums[("y", L)].pow(2) / n).sum())
        var_r = float((sums[("rr", L)] - sums[("r", L)].pow(2) / n).sum())
        row = {"layer": L, "tokens": n}
        for name in ("per_layer", "clt"):
            err = float(sums[(name, L)])
            row[name] = {
                "explained_variance": 1 - err / var_y,
                "features_on_rest": 1 - err / var_r,
                "l0": sums[(name, "l0", L)] / n,
            }
        rows.append(row)
    return rows


def graphs(model, tcs: dict, clt, prompts, suite) -> dict:
    """Per set, per prompt: scores full and pruned, features kept, and per layer feature / error influence."""
    out = {"per_layer": [], "clt": []}
    hooks = list(tcs)
    for x in tqdm(prompts, desc="replacement graphs (per-layer, CLT)"):
        line = suite[x.id]
        metric = LogitDiff(model, line.answer, line.counterfactual)
        for name, d in (("per_layer", tcs), ("clt", clt)):
            t0 = time.perf_counter()
            g = build_graph(model, d, line.prompt, metric, labels=False, progress=False)
            pruned = g.prune(0.8, 0.98, max_feature_nodes=MAX_FEATURES)
            full, kept = graph_scores(g, pruned=False), graph_scores(pruned)
            out[name].append(
                {
                    "id": x.id,
                    "answer_p": x.answer_p,
                    "active_features": g.info["active_features"],
                    "features_kept": sum(n.kind == "feature" for n in pruned.nodes),
                    "full": {"replacement": full.replacement, "completeness": full.completeness},
                    "pruned": {"replacement": kept.replacement, "completeness": kept.completeness},
                    "layers": layer_influence(g, hooks),
                    "seconds": time.perf_counter() - t0,
                }
            )
    return out


def summary(rows: list[dict], n_layers: int) -> dict:
    """Medians over prompts: the four scores, and the error share of each layer's influence."""

    def med(part, key):
        return statistics.median(r[part][key] for r in rows)

    def share(r, L):
        x = r["layers"][L]
        return x["error_influence"] / max(1e-12, x["error_influence"] + x["feature_influence"])

    def total(r):
        e = sum(x["error_influence"] for x in r["layers"])
        return e / max(1e-12, e + sum(x["feature_influence"] for x in r["layers"]))

    return {
        "pruned_replacement": med("pruned", "replacement"),
        "pruned_completeness": med("pruned", "completeness"),
        "full_replacement": med("full", "replacement"),
        "full_completeness": med("full", "completeness"),
        "error_share": statistics.median(total(r) for r in rows),
        "error_share_by_layer": [statistics.median(share(r, L) for r in rows) for L in range(n_layers)],
        "active_features": statistics.median(r["active_features"] for r in rows),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=400_000)
    p.add_argument("--reach", type=int, default=4)
    p.add_argument("--d-sae", type=int, default=None, help="features per layer (default: the default set's)")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--limit", type=int, default=None, help="at most this many two-hop prompts")
    p.add_argument("--out", default=None, help="default: bench/results/clt_experiment_t<N>M.json")
    a = p.parse_args(argv)
    out = Path(a.out or ROOT / "bench" / "results" / f"clt_experiment_{budget_tag(a.tokens)}.json")
    model = load_model()
    tcs, clt, root = train(model, a.tokens, a.reach, a.d_sae, a.k)
    _, held = defaults.default_corpus(model, a.tokens, progress=False)
    quality = held_out(model, tcs, clt, held)
    suite = {x.id: x for x in load_suite(SUITE)}
    prompts = [x for x in check(model, [x for x in suite.values() if x.hops == 2]) if x.top1][: a.limit]
    runs = graphs(model, tcs, clt, prompts, suite)
    result = {
        "tokens": a.tokens,
        "reach": clt.reach,
        "d_sae": clt.d_sae,
        "k": a.k,
        "folder": root.name,
        "build": json.loads((root / "build.json").read_text()),
        "held_out": quality,
        "prompts": runs,
        "median": {name: summary(rows, clt.n_layers) for name, rows in runs.items()},
        "machine": machine(),
    }
    out.write_text(json.dumps(result, indent=1) + "\n")
    brief = {k: {m: v for m, v in s.items() if m != "error_share_by_layer"} for k, s in result["median"].items()}
    print(json.dumps(brief, indent=1))
    return result


if __name__ == "__main__":
    main()
