"""How much text each pinned source holds: documents, words and gemma-3 tokens, by split.

    python -m studies.text_sources   # writes bench/results/text_sources.json

The default corpus (text.SOURCES) and the extra sources (text.EXTRA_SOURCES, read only when named), counted
as training text holds them (text.token_count), so a build's token budget can be
set against the fresh text there is (docs/training.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "text_sources.json"


def count(model, docs) -> dict:
    from attribution.training.text import token_count

    return {"documents": len(docs), "words": sum(len(d.text.split()) for d in docs), "tokens": token_count(model, docs)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args(argv)
    from attribution import load_model
    from attribution.training import text

    model = load_model()
    rows = {}
    for name in tqdm([*text.SOURCES, *text.EXTRA], desc="sources"):
        src = text.source(name)
        docs = text.real_text("all", [name], progress=False)
        rows[name] = {
            "package": f"{src.package}@{src.version}",
            "default": name in text.SOURCES,
            "licence": src.licence,
            **{split: count(model, [d for d in docs if d.split == split]) for split in ("train", "heldout")},
        }
    train = {k: sum(r["train"]["tokens"] for r in rows.values() if r["default"] == k) for k in (True, False)}
    result = {
        "command": "python -m studies.text_sources",
        "sources": rows,
        "train_tokens": {"default": train[True], "extra": train[False], "all": train[True] + train[False]},
    }
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["train_tokens"], indent=1))
    return result


if __name__ == "__main__":
    main()
