"""How often is a label's logit-lens token evidence? And what do the emotion study's top features read as?

    python -m studies.label_evidence                    # both texts: the sampled corpus and real text
    python -m studies.label_evidence --corpus real      # one of them (the other's entry in the file is kept)

For each version of the default SAEs in the cache (--versions; all hooks, one shared pass per text), each
index over the first 65,536 tokens of:
- sampled: the corpus the v2 default SAEs were trained on (120k tokens the model sampled itself), its head;
- real: the real-text training split (attribution.training.corpus.real_tokens: Brown, State of the Union,
  Moby-Dick).
Per hook: the share of alive features whose logit-lens promoted token (of those in the indexed text: the old
label's `→ x`) is evidence, i.e. among the model's top attribution.explain.lens.N_NEXT next-token predictions at
>= attribution.explain.labels.EVIDENCE_SHARE of the feature's top contexts; the mean of that share; how many labels
name a context word. Then the top 10 features by |attribution| of the emotion prompt (the middle SAE, as
`python -m cases emotion`), with the old label (the index-v6 rule, recomputed here) and the new one.
Writes bench/results/label_evidence.json: {version: {text: ...}}.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[1] / "bench" / "results" / "label_evidence.json"
N_TOKENS = 65_536
THRESHOLDS = (0.05, 0.125, 0.25, 0.5, 0.75)
SAMPLED = (120_000, 128)  # the sampled corpus the v2 default SAEs trained on: tokens, sequence length


def index_tokens(model, corpus: str, progress: bool = True) -> torch.Tensor:
    """The first N_TOKENS (whole 128-token windows) of the sampled corpus or of the real-text split."""
    from attribution.explain import index_text
    from attribution.training.corpus import sample_tokens

    if corpus == "real":
        return index_text(model, "real", N_TOKENS, progress)
    ids = sample_tokens(model, SAMPLED[0], seq_len=SAMPLED[1], progress=progress)
    return ids[: -(-N_TOKENS // (SAMPLED[1] - 1))]


def old_label(tok, t: dict, f: int) -> str:
    """The index-v6 label: the most frequent top-firing tokens → the token promoted most of those in the text."""
    if t["count"][f] == 0:
        return "(dead)"
    firing = t["tokens"][t["top_seq"][f], t["top_pos"][f]]
    alive = t["top_acts"][f] > 0
    words = Counter(w for w in (tok.decode([int(i)]).strip() for i in firing[alive]) if w)
    common = [w for w, _ in words.most_common(3)]
    if len(common) > 1 and words[common[0]] >= 0.5 * int(alive.sum()):
        common = common[:1]
    head = "/".join(repr(w)[1:-1][:14] for w in common) or "(whitespace)"
    promoted = tok.decode([int(t["up_seen"][f])]).strip()
    return f"{head} → {promoted[:14]}" if promoted else head


def predicted(tok, t: dict, f: int, k: int = 3) -> list[tuple[str, float]]:
    """The k words most often among the model's predictions at the feature's top contexts, with the share."""
    from attribution.explain.labels import Words

    words = Words(tok)
    alive = t["top_acts"][f] > 0
    preds = t["next_ids"][t["top_seq"][f][alive], t["top_pos"][f][alive]]  # [n, N_NEXT]
    count = Counter(w for row in preds.tolist() for w in {words(i) for i in row if i >= 0} if w)
    return [(w, round(c / max(1, int(alive.sum())), 3)) for w, c in count.most_common(k)]


def per_hook(index) -> dict:
    t = index.t
    alive = t["count"] > 0
    lab = [index.label(f).split(" → ")[0] for f in alive.nonzero().flatten().tolist()]  # the arrow left out
    share = t["evidence_share"][alive]
    return {
        "alive": int(alive.sum()),
        "evidence_share": round(float(t["evidence"][alive].float().mean()), 4),
        # how the share of top contexts predicting the promoted token spreads: the threshold's neighbourhood
        "prediction_share_at_least": {str(x): round(float((share >= x - 1e-6).float().mean()), 4) for x in THRESHOLDS},
        "labels_with_context_word": round(sum(not x.startswith("[") or not x.endswith("]") for x in lab) / len(lab), 4),
    }


def emotion_features(model, saes: dict, k: int = 10) -> list:
    from attribution import LogitDiff, attribute
    from attribution.training.defaults import middle_hook
    from cases.emotion import BAD, GOOD, PROMPT

    mid = middle_hook(model)
    attr = attribute(model, {mid: saes[mid]}, PROMPT, LogitDiff(model, GOOD, BAD))
    return attr.top(k, errors=False)


def measure(model, saes: dict, corpus: str, progress: bool = True) -> dict:
    from attribution.explain import feature_indexes
    from attribution.explain.labels import EVIDENCE_SHARE
    from attribution.explain.lens import N_NEXT

    tokens = index_tokens(model, corpus, progress)
    t0 = time.perf_counter()
    indexes = feature_indexes(model, saes, tokens=tokens, progress=progress)
    took = time.perf_counter() - t0
    tok = model.tokenizer
    emotion = []
    for n in emotion_features(model, saes):
        index = indexes[n.hook]
        t = index.t
        emotion.append(
            {
                "hook": n.hook,
                "feature": n.feature,
                "token": n.token,
                "attribution": round(n.attribution, 4),
                "old_label": old_label(tok, t, n.feature),
                "new_label": index.label(n.feature),
                "promoted": tok.decode([int(t["up_seen"][n.feature])]),
                "prediction_share": round(float(t["evidence_share"][n.feature]), 3),
                "evidence": index.evidence(n.feature),
                "model_predicts": predicted(tok, t, n.feature),
            }
        )
    return {
        "text": {"corpus": corpus, "sequences": tokens.shape[0], "tokens": tokens.shape[0] * (tokens.shape[1] - 1)},
        "rule": {"top_predictions": N_NEXT, "min_share_of_top_contexts": EVIDENCE_SHARE},
        "index_seconds": round(took, 1),  # 0-ish when the indexes were cached
        "hooks": {h: per_hook(i) for h, i in sorted(indexes.items(), key=lambda x: model.hooks[x[0]].order)},
        "emotion": emotion,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m studies.label_evidence", description=__doc__.split("\n")[0])
    p.add_argument("--corpus", choices=("real", "sampled", "both"), default="both")
    p.add_argument("--versions", default="v2,v3", help="default SAE versions in the cache to measure (v2,v3)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    from attribution import load_model
    from studies.california import sets

    model = load_model()
    found = sets(model)
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    texts = ("sampled", "real") if args.corpus == "both" else (args.corpus,)
    for version, corpus in [(v, c) for v in args.versions.split(",") for c in texts]:
        if version not in found:
            raise SystemExit(f"no {version} default SAEs in the cache (found {sorted(found)})")
        r = results.setdefault(version, {})[corpus] = measure(model, found[version], corpus, progress=not args.quiet)
        print(f"\n{version} SAEs, {corpus} text:", end="")
        print(f"\n{corpus} text ({r['text']['tokens']:,} tokens): alive features whose promoted token is evidence")
        for h, x in r["hooks"].items():
            ctx = x["labels_with_context_word"]
            print(f"  {h:14s} {x['evidence_share']:6.1%} of {x['alive']:5d}   labels with a context word {ctx:.0%}")
        print("emotion prompt, top features by |attribution| (old label  ->  new label):")
        for e in r["emotion"]:
            print(f"  f{e['feature']:<5d} {e['attribution']:+.3f}  {e['old_label']:32s} {e['new_label']}")
        OUT.parent.mkdir(exist_ok=True)
        OUT.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    return 0


def table(results: dict, text: str = "real") -> str:
    """Markdown: per hook, each version's share of alive features whose logit-lens token is evidence, and
    of labels naming a context word (indexes over `text`)."""
    versions = [v for v in results if text in results[v]]
    hooks = list(results[versions[0]][text]["hooks"])
    head = " | ".join(f"{v}: promoted token is evidence | {v}: label names a context word" for v in versions)
    lines = [f"| hook | {head} |", "|---|" + "---|---|" * len(versions)]
    for h in hooks:
        cells = []
        for v in versions:
            x = results[v][text]["hooks"].get(h)
            cells += ["—", "—"] if x is None else [f"{x['evidence_share']:.1%}", f"{x['labels_with_context_word']:.0%}"]
        lines.append(f"| {h} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def emotion_table(results: dict, version: str, text: str = "real") -> str:
    """Markdown: the emotion study's top features at the middle layer, the old label beside the new one."""
    lines = ["| feature | attribution | old label | new label | the model predicts there |", "|---|---|---|---|---|"]
    for e in results[version][text]["emotion"]:
        preds = ", ".join(f"{w} {s:.0%}" for w, s in e["model_predicts"])
        old, new = (e[k].replace("|", "\\|").replace("`", "'") for k in ("old_label", "new_label"))
        lines.append(f"| f{e['feature']} | {e['attribution']:+.3f} | `{old}` | `{new}` | {preds} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
