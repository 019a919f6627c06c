"""Transcoders: per-layer dictionaries that read the MLP's input and write its output, trained like the SAEs.

`default_transcoders(model)` is the replacement graphs' default set: one TopK skip-transcoder per layer,
reading `resid_mid.L` (the residual stream at the MLP norm's input, as Gemma Scope 2's transcoders do) and
writing `mlp_out.L` (what the MLP adds to the residual stream, after Gemma's post-feedforward norm), all
trained from one stream of the default corpus (attribution.training.stream), cached like the default SAEs,
resumable, evaluated on held-out documents.

The skip path W_skip is the least-squares linear map from input to output, fitted on a first slice of the
corpus before the dictionary trains on what it leaves (target - x W_skip). It is exact linear algebra, not a
learned approximation, and in a replacement graph it stays a linear path (no node), so the features only need
to carry the MLP's nonlinear part.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from attribution.cache import digest
from attribution.errors import AttributionError
from attribution.saes import build, model_names, save_sae
from attribution.training import defaults

VERSION = 2  # bump when the recipe changes (v2: schedule-free sign-SGD, 4 optimiser steps a forward batch)
SKIP_TOKENS = 131_072  # tokens the skip path is fitted on (first windows of the stream's order)
RIDGE = 1e-4  # relative ridge on the skip's normal equations (x's variance scale), against ill-conditioning


def budget_tag(tokens: int) -> str:
    """A token budget as folder and result-file names spell it: "t2M", "t0.5M"."""
    return f"t{tokens / 1e6:g}M"


@dataclass(frozen=True)
class TranscoderSpec:
    """The recipe of one default transcoder."""

    layer: int
    reads: str = "resid_mid"  # the MLP norm's input (as Gemma Scope 2), or "mlp_in" (its output)
    d_sae: int = 4096
    k: int = 32
    skip: bool = True
    tokens: int = 2_000_000  # tokens streamed; more than the corpus holds makes epochs
    lr: float = 1e-2
    normalize: str = "dim"
    batch_size: int = 1024  # tokens an optimiser step: 4 steps a forward batch of 4,064 (v1: 1 step)
    optimizer: str = "signsgd"  # schedule-free sign-SGD (v1: Adam 4e-4); bench/results/transcoder_recipe.json
    train_skip: bool = False  # True: the skip path is trained from zero with the features, not fitted

    def train_config(self):
        """The trainer's settings for this recipe (attribution.training.trainer.TrainConfig)."""
        from attribution.training.trainer import TrainConfig

        return TrainConfig(
            lr=self.lr,
            batch_size=self.batch_size,
            optimizer=self.optimizer,
            train_skip=self.train_skip,
            normalize=self.normalize,
            dead_after_tokens=200_000,
            log_every=40,
        )

    @property
    def hook(self) -> str:
        return f"{self.reads}.{self.layer}"

    @property
    def target(self) -> str:
        return f"mlp_out.{self.layer}"

    def _digest(self, **spec) -> str:
        """The recipe's digest (this spec, with `spec`'s fields replaced), the corpus and the version."""
        corpus = [defaults.CORPUS, defaults.SEQ_LEN, defaults.BATCH_WINDOWS]
        return digest({"spec": asdict(self) | spec, "corpus": corpus, "v": VERSION})

    @property
    def lineage(self) -> str:
        """The recipe without its token budget: sets of one lineage differ only in how long they trained, so a
        longer one can continue a shorter one's kept state."""
        return self._digest(tokens=None)

    @property
    def folder(self) -> str:
        skip = "-skip" if self.skip else ""
        recipe = self._digest()
        return f"tc-{self.hook}-topk{self.d_sae}-k{self.k}{skip}-{budget_tag(self.tokens)}-{recipe[:10]}-v{VERSION}"


def default_transcoder_specs(model, **overrides) -> dict[str, TranscoderSpec]:
    """{read hook: recipe} for every layer: 4,096 features at gemma-3-270m's width (6.4 x d_model, rounded)."""
    width = 2 ** round(math.log2(6.4 * model.d_model))
    recipe = {"d_sae": width, **overrides}  # an override of d_sae wins over the default width
    specs = [TranscoderSpec(layer, **recipe) for layer in range(model.n_layers)]
    return {model.hook(s.hook).name: s for s in specs}


def default_transcoders(model=None, layers=None, *, train: bool = True, progress: bool = True, **overrides) -> dict:
    """{read hook: transcoder} for `layers` (default: all), training the missing ones from one stream first.

    overrides: recipe fields (reads, d_sae, k, skip, tokens, lr) for another set, cached under its own name.
    train=False raises instead of training."""
    from attribution.models.loading import load_model

    model = model if model is not None else load_model()
    specs = default_transcoder_specs(model, **overrides)
    if layers is not None:
        wanted = {model.hook(f"{next(iter(specs.values())).reads}.{int(L)}").name for L in layers}
        specs = {h: s for h, s in specs.items() if h in wanted}
    root = defaults.saes_dir(model)
    folders = {h: root / s.folder for h, s in specs.items()}
    load = defaults._loader(model)
    if not train:
        missing = [h for h in specs if not os.path.lexists(folders[h])]
        if missing:
            raise AttributionError(
                f"default transcoders for {missing} are not built yet; run `python -m attribution transcoders` "
                "(or call default_transcoders(model)) to train them"
            )
        return {h: load(folders[h]) for h in specs}
    return defaults._build_missing(model, specs, folders, load, progress, train=_train)


def train_transcoder(
    model,
    layer: int,
    *,
    reads: str = "resid_mid",
    d_sae: int = 4096,
    k: int = 32,
    skip: bool = True,
    tokens: int = 400_000,
    lr: float = 1e-2,
    batch_size: int = 1024,
    optimizer: str = "signsgd",
    train_skip: bool = False,
    out: str | Path | None = None,
    progress: bool = True,
):
    """One transcoder for `layer`, reading `reads` (mlp_in or resid_mid) and writing mlp_out, trained on
    `tokens` tokens of the default corpus and evaluated on its held-out documents; saved to `out` if given."""
    if reads not in ("mlp_in", "resid_mid"):
        raise AttributionError(f"a transcoder reads 'mlp_in' or 'resid_mid', got {reads!r}")
    if not 0 <= layer < model.n_layers:
        raise AttributionError(f"layer must be in 0..{model.n_layers - 1}, got {layer}")
    spec = TranscoderSpec(
        layer, reads, d_sae, k, skip, tokens, lr, batch_size=batch_size, optimizer=optimizer, train_skip=train_skip
    )
    tc = _fit(model, {spec.hook: spec}, progress)[spec.hook]
    if out is not None:
        save_sae(tc, out)
    return tc


def quality_rows(tcs: dict) -> list[dict]:
    """Each transcoder's held-out evaluation (training.evaluate, recorded when it was built) as a table row."""
    rows = []
    for h, tc in tcs.items():
        ev = tc.meta.get("eval", {})
        rows.append(
            {
                "hook": h,
                "target": tc.target,
                "d_sae": tc.d_sae,
                "skip": tc.W_skip is not None,
                "explained_variance": ev.get("explained_variance"),
                "features_on_rest": ev.get("features_on_rest"),
                "ce_loss_recovered": ev.get("ce_loss_recovered"),
                "l0": ev.get("l0"),
                "dead_fraction": ev.get("dead_fraction"),
                "eval_tokens": ev.get("eval_tokens"),
                "train_tokens": tc.meta.get("corpus", {}).get("train_tokens"),
                "tokens_seen": tc.meta.get("training", {}).get("tokens_seen"),
            }
        )
    return rows


def add_reference(rows: list[dict], report: dict) -> list[dict]:
    """quality_rows with training.quality.evaluate_defaults' report added: the same measures on Debian's
    fortunes + Jargon File (`reference`), and dead features counted over its many tokens (`dead_reference`)."""
    keep = ("explained_variance", "features_on_rest", "ce_loss_recovered", "l0", "eval_tokens")
    for r in rows:
        got = report[r["hook"]]
        r["reference"] = {k: got["reference_text"].get(k) for k in keep}
        r["dead_reference"], r["dead_tokens"] = got["dead_fraction"], got["dead_tokens"]
    return rows


def quality_table(rows: list[dict]) -> str:
    """A markdown table of quality_rows: EV of the MLP output, what the features explain of the part the skip
    path leaves, CE loss recovered with the transcoder spliced in place of the MLP (no error term), L0 and
    dead features, on held-out documents; with add_reference's columns where the rows hold them (the same
    on Debian's text, dead over its tokens)."""

    def f(x, spec=".3f"):
        return "n/a" if x is None else format(x, spec)

    ref = all("reference" in r for r in rows)
    head = "| layer | reads -> writes | EV (MLP out) | features on rest | CE rec. | L0 | dead (eval) |"
    rule = "|---|---|---|---|---|---|---|"
    if ref:
        n = rows[0]["dead_tokens"] / 1e6
        head += f" EV (Debian) | on rest (Debian) | CE rec. (Debian) | dead ({n:.2f}M Debian tok) |"
        rule += "---|---|---|---|"
    lines = [head, rule]
    for r in rows:
        line = (
            f"| {r['hook'].split('.')[1]} | {r['hook']} -> {r['target']} | {f(r['explained_variance'])} | "
            f"{f(r.get('features_on_rest'))} | "
            f"{f(r['ce_loss_recovered'])} | {f(r['l0'], '.1f')} | {f(r['dead_fraction'], '.1%')} |"
        )
        if ref:
            t = r["reference"]
            line += (
                f" {f(t['explained_variance'])} | {f(t['features_on_rest'])} | {f(t['ce_loss_recovered'])} | "
                f"{f(r['dead_reference'], '.2%')} |"
            )
        lines.append(line)
    return "\n".join(lines)


def fit_skip(model, pairs: dict[str, str], windows: Tensor, *, tokens: int = SKIP_TOKENS, progress=True) -> dict:
    """{read hook: W_skip [d_in, d_out]}: per pair (read hook -> target hook), the least-squares linear map
    (with an intercept, which the transcoder's b_dec then learns) over the first `tokens` tokens of `windows`
    (not <bos>, not massive-norm tokens), accumulated in float64."""
    from attribution.engine import trace
    from attribution.models.model import Batch
    from attribution.tokens import OUTLIER, keep_tokens

    if not pairs:
        return {}
    d = model.d_model
    stats = {
        h: [torch.zeros(d + 1, d + 1, dtype=torch.float64), torch.zeros(d + 1, d, dtype=torch.float64)] for h in pairs
    }
    mask_hook = defaults.middle_hook(model)  # the tokens kept are judged where the stream judges them
    hooks = sorted({*pairs, *pairs.values(), mask_hook}, key=lambda h: model.hooks[h].order)
    per = defaults.BATCH_WINDOWS
    n_batches = max(1, min(len(windows) // per, math.ceil(tokens / (per * (windows.shape[1] - 1)))))
    for i in tqdm(range(n_batches), desc="fitting skip paths", disable=not progress):
        ids = windows[i * per : (i + 1) * per]
        with torch.no_grad():
            acts = trace(model, Batch.from_ids(ids, model.device), capture=hooks, stop_early=True).acts
        keep = keep_tokens(acts[mask_hook], OUTLIER)
        for h, t in pairs.items():
            xtx, xty = skip_stats(acts[h][keep], acts[t][keep])
            stats[h][0] += xtx
            stats[h][1] += xty
    return {h: solve_skip(xtx, xty) for h, (xtx, xty) in stats.items()}


def skip_stats(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The normal equations' sums (X1^T X1 [d_in + 1, d_in + 1], X1^T Y [d_in + 1, d_out]) of x [n, d_in]
    -> y [n, d_out], X1 = [x, 1], in float64 on the CPU: add them over batches, then solve_skip."""
    x, y = x.double().cpu(), y.double().cpu()
    x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    return x1.T @ x1, x1.T @ y


def solve_skip(xtx: Tensor, xty: Tensor) -> Tensor:
    """W_skip [d_in, d_out] from skip_stats' sums: ridge-regularised least squares with an intercept (not
    shrunk, and dropped: the transcoder's b_dec learns it)."""
    d = xtx.shape[0] - 1
    ridge = RIDGE * float(xtx.diagonal()[:-1].mean())
    reg = torch.eye(d + 1, dtype=torch.float64) * ridge
    reg[-1, -1] = 0.0
    return torch.linalg.solve(xtx + reg, xty)[:-1]


def _fit(model, specs: dict[str, TranscoderSpec], progress: bool) -> dict:
    """Train `specs` (which share a token budget) from one stream; each evaluated, none saved."""
    from attribution.training.evaluate import evaluate_sae
    from attribution.training.stream import Dictionary, train_dictionaries

    tokens = {s.tokens for s in specs.values()}
    if len(tokens) != 1:
        raise AttributionError(f"transcoders trained together share one token budget, got {sorted(tokens)}")
    budget = tokens.pop()
    train_ids, eval_ids = defaults.default_corpus(model, budget, progress)  # at most the corpus: then epochs
    key = digest(sorted(s.folder for s in specs.values()))[:12]
    states = kept_states(model, specs)
    keep = states.get(budget) if all(s.train_config().decay_share == 0 for s in specs.values()) else None
    start = max((t for t in states if t < budget and states[t].is_file()), default=None) if keep else None
    if start is not None and progress:
        print(f"continuing the transcoders trained on {start:,} tokens toward {budget:,} ({states[start].name})")
    fitted = {h: s.target for h, s in specs.items() if s.skip and not s.train_skip}
    skips = {} if start is not None else fit_skip(model, fitted, train_ids, progress=progress)  # else: kept
    dicts = {}
    for h, s in specs.items():
        tc = build("topk", model.d_model, s.d_sae, h, k=s.k, target=s.target, skip=s.skip).to(model.device)
        if h in skips:
            with torch.no_grad():
                tc.W_skip.copy_(skips[h].to(tc.W_skip.dtype))
        dicts[h] = Dictionary(tc, s.train_config(), h, target=s.target)
    train_dictionaries(
        model,
        dicts,
        train_ids,
        batch_windows=defaults.BATCH_WINDOWS,
        tokens=budget,
        mask_hook=defaults.middle_hook(model),  # the same tokens kept as the default SAEs'
        checkpoint=defaults.saes_dir(model) / f"checkpoint-tc-{key}.pt",
        keep=keep,
        start=None if start is None else states[start],
        progress=progress,
    )
    for t in states:  # the new state continues wherever an older one of the lineage could (each ~60 MB a layer)
        if start is not None and t <= start:
            states[t].unlink(missing_ok=True)
    out = {}
    for h, s in specs.items():
        tc = dicts[h].sae
        tc.meta["eval"] = evaluate_sae(model, tc, eval_ids, progress=progress)
        tc.meta["corpus"] = {
            "source": "English prose (attribution.training.text)" if defaults.CORPUS == "real" else "sampled",
            "train_tokens": int(train_ids.shape[0] * (defaults.SEQ_LEN - 1)),
            "tokens_seen": tc.meta["training"]["tokens_seen"],
            "skip_tokens": SKIP_TOKENS if h in fitted else 0,  # fitted then, or kept from the set continued
            "seq_len": defaults.SEQ_LEN,
            "continued_from": start,  # tokens of the set whose kept state this one continued, or None
        }
        tc.meta["default_spec"] = {"folder": s.folder, "version": VERSION, **asdict(s)}
        if names := model_names(model):
            tc.meta["model_name"] = names[0]
        out[h] = tc
    return out


def kept_states(model, specs: dict[str, TranscoderSpec]) -> dict[int, Path]:
    """{token budget: path} of the training states kept for `specs`' lineage (TranscoderSpec.lineage), the
    budget asked for included (its path, whether or not it exists): a set trained on more tokens continues the
    largest smaller one."""
    key = digest(sorted(s.lineage for s in specs.values()))[:12]
    root = defaults.saes_dir(model)
    found = {int(t): f for f in root.glob(f"state-tc-{key}-t*.pt") if (t := f.stem.rpartition("-t")[2]).isdigit()}
    budget = next(iter(specs.values())).tokens
    return found | {budget: root / f"state-tc-{key}-t{budget}.pt"}


def _train(model, specs: dict[str, TranscoderSpec], folders: dict[str, Path], tokens: int, load, progress) -> None:
    """Train and save one token budget's transcoders (defaults._build_missing holds their folders' locks)."""
    from attribution.cache import atomic_write

    for h, tc in _fit(model, specs, progress).items():
        with atomic_write(folders[h], check=load, lock=False) as tmp:  # we hold the folder's lock
            save_sae(tc, tmp)
