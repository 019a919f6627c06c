"""Case studies on a tiny random model: the report's numbers are the library's, steering is ablation, the
page is offline, and the CLI fails cleanly on bad input. No default SAEs are trained and no real index built."""

import copy
import csv
import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
import torch

import cases
from attribution import LogitDiff, ablate, attribute, compare
from cases.command import main
from cases.steer import steer
from tests.conftest import PROMPTS, random_sae, tiny_model

PROMPT = PROMPTS[0]  # "john says i want to be alone right now john feels"
HOOKS = ("resid_post.0", "resid_post.1", "resid_post.2")


def read(path) -> str:
    return Path(path).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def model():
    return tiny_model("gemma3")


@pytest.fixture(scope="module")
def saes(model):
    return {h: random_sae(model, h, seed=i) for i, h in enumerate(HOOKS)}


@pytest.fixture(scope="module")
def report(model, saes, tmp_path_factory):
    out = tmp_path_factory.mktemp("case")
    return cases.run(
        PROMPT, " sad", " happy", model=model, saes=saes, out=out, n_ablate=30, explain=False, progress=False
    )


def test_run_writes_the_page_json_and_csv_tables(report):
    paths = report.paths
    for name in ("report.html", "report.json", "top_attribution.csv", "top_activation.csv", "steering.csv"):
        assert name in paths and read(paths[name])
    data = json.loads(read(paths["report.json"]), parse_constant=pytest.fail)  # strict JSON: no NaN
    assert data["paths"]["report.html"] == paths["report.html"] and "total" in data["timings"]
    assert len(data["top_attribution"]) == len(report.top_attribution) == 30
    rows = list(csv.DictReader(read(paths["top_attribution.csv"]).splitlines()))
    assert [float(r["effect"]) for r in rows] == pytest.approx([r.effect for r in report.top_attribution])
    steering = list(csv.DictReader(read(paths["steering.csv"]).splitlines()))
    assert {r["condition"] for r in steering} == {"unedited", "clamp 0", "clamp 5x max", "clamp 10x max"}
    assert "attribution.explain" not in str(report.notes) and "turned off" in str(report.notes)


def test_numbers_are_those_of_attribute_and_ablate(model, saes, report):
    metric = LogitDiff(model, " sad", " happy")
    attr = attribute(model, saes, PROMPT, metric)
    nodes = attr.top(30, errors=False)
    abl = ablate(model, saes, PROMPT, metric, nodes, progress=False)
    data = json.loads(read(report.paths["report.json"]))
    assert data["metric"] == pytest.approx(float(attr.metric[0]))
    got = [(r["hook"], r["position"], r["feature"], r["attribution"], r["effect"]) for r in data["top_attribution"]]
    want = [(n.hook, n.position, n.feature, n.attribution, e) for n, e in zip(nodes, abl.effect.tolist())]
    assert [g[:3] for g in got] == [w[:3] for w in want]
    flat = [v for g in got for v in g[3:]]  # pytest.approx compares flat sequences, not nested ones (pytest 9.2)
    assert flat == pytest.approx([v for w in want for v in w[3:]], rel=1e-9, abs=1e-9)
    agreement = compare(attr, abl)
    assert data["agreement"]["pearson"] == pytest.approx(agreement.pearson)
    assert data["agreement"]["top_k"]["10"] == pytest.approx(agreement.top_k[10])


def test_activation_ranking_and_captured_shares(model, saes, report):
    acts = [r.activation for r in report.top_activation]
    assert acts == sorted(acts, reverse=True) and all(r.feature is not None for r in report.top_activation)
    # every activation-ranked effect is a real ablation of that node
    metric = LogitDiff(model, " sad", " happy")
    some = report.top_activation[:5]
    abl = ablate(model, saes, PROMPT, metric, [(r.hook, r.position, r.feature) for r in some], progress=False)
    assert abl.effect.tolist() == pytest.approx([r.effect for r in some], abs=1e-9)
    # captured: own top-k |effect| / best k |effect| over every node ablated for the report
    every = {(r.hook, r.position, r.feature): abs(r.effect) for r in report.top_attribution + report.top_activation}
    best10 = sum(sorted(every.values(), reverse=True)[:10])
    for ranking, rows in (("attribution", report.top_attribution), ("activation", report.top_activation)):
        share = report.rankings[ranking].captured[10]
        assert share == pytest.approx(sum(abs(r.effect) for r in rows[:10]) / best10) and 0 <= share <= 1 + 1e-12
    assert report.rankings["attribution"].captured[10] > report.rankings["activation"].captured[10]


def test_clamping_to_zero_is_ablation_and_to_own_value_is_nothing(model, saes, report):
    metric = LogitDiff(model, " sad", " happy")
    for row in [report.top_attribution[0], *[r for r in report.top_attribution if r.hook == "resid_post.0"][:1]]:
        s = steer(
            model, saes[row.hook], PROMPT, metric, row.feature, max_activation=1.0, multiples=(0.0, row.activation),
            positions=[row.position], n_tokens=0,
        )  # fmt: skip
        unedited, zero, own = (c.metric for c in s.clamps)
        assert unedited == pytest.approx(report.metric, abs=1e-9)
        assert zero == pytest.approx(report.metric - row.effect, abs=1e-9)  # = ablate's zero ablation
        assert own == pytest.approx(report.metric, abs=1e-9)


def test_steering_a_chosen_feature(model, saes, report, tmp_path):
    row = next(r for r in report.top_attribution if r.attribution < 0)
    r = cases.run(PROMPT, " sad", " happy", model=model, saes=saes, out=tmp_path, n_ablate=5, explain=False,
                  steer=f"{row.hook}:{row.feature}", clamps="0,2", steer_tokens=1, progress=False)  # fmt: skip
    assert (r.steering.hook, r.steering.feature, r.steering.chosen) == (row.hook, row.feature, "chosen by the user")
    assert [c.name for c in r.steering.clamps] == ["unedited", "clamp 0", "clamp 2x max"]
    assert "chosen by the user" in read(r.paths["report.html"])


def test_steering_panel(report):
    s = report.steering
    top_positive = next(r for r in report.top_attribution if r.attribution > 0)
    assert (s.hook, s.feature) == (top_positive.hook, top_positive.feature)
    assert "this prompt" in s.max_source  # no feature index here
    assert [c.value for c in s.clamps] == pytest.approx([None, 0.0, 5 * s.max_activation, 10 * s.max_activation])
    for c in s.clamps:
        assert len(c.next_tokens) == 10 and c.continuation.startswith(" ") and len(c.continuation.split()) == 12
        assert sum(p for _, p in c.next_tokens) <= 1 + 1e-6


def test_page_is_offline_and_shows_the_numbers(report):
    page = read(report.paths["report.html"])
    assert not re.search(r"https?://", page)
    assert page.count("<svg") == 2 and f"Pearson r = {report.rankings['attribution'].pearson:.3f}" in page
    assert "Top features by attribution" in page and "Top features by plain activation" in page
    assert f"{report.top_attribution[0].effect:+.3f}" in page and "Feature cards not shown" in page
    assert "clamp 10x max" in page and "<script" not in page


def test_whole_activations_skip_features_honestly(model, tmp_path):
    r = cases.run(PROMPT, " sad", " happy", model=model, saes="whole", hooks="resid_post.0,resid_post.2",
                  out=tmp_path, n_ablate=10, progress=False)  # fmt: skip
    assert r.steering is None and not r.cards and all(x.feature is None for x in r.top_attribution)
    assert any("no features" in n for n in r.notes)
    assert "Feature cards not shown" in read(r.paths["report.html"])


def test_cards_and_labels_from_a_small_index(model, saes, tmp_path, monkeypatch):
    pytest.importorskip("attribution.explain")
    monkeypatch.setenv("ATTRIBUTION_CACHE", str(tmp_path / "cache"))
    ids = torch.randint(4, model.hf.config.vocab_size, (6, 12), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = model.tokenizer.bos_token_id
    r = cases.run(PROMPT, " sad", " happy", model=model, saes=saes, out=tmp_path / "r", n_ablate=10, cards=2,
                  index_tokens=ids, steer_tokens=2, progress=False)  # fmt: skip
    assert len(r.cards) == len(r.feature_cards) == 2 and all(x.label for x in r.top_attribution)
    assert "feature index" in r.steering.max_source
    page = read(r.paths["report.html"])
    assert "Activation histogram" in page and not re.search(r"https?://", page)


def test_graph_is_embedded_offline(model, saes, tmp_path):
    graphs = pytest.importorskip("graphs")
    if not hasattr(graphs, "build_graph"):
        pytest.skip("graphs.build_graph is not there yet")
    groups = {
        "after and": (["mary went home and", "john says i want to be alone and"], ["mary went home", "the cat ran"]),
        "never": (["the cat ran"], ["the cat ran"]),  # identical sets: nothing separates them
    }
    r = cases.run(PROMPTS[1], " tired", " happy", model=model, saes=saes, out=tmp_path, n_ablate=10, graph=True,
                  groups=groups, explain=False, steer=False, progress=False)  # fmt: skip
    assert r.graph["feature nodes"] > 0 and r.graph["edges"] > 0 and (tmp_path / "graph.json").exists()
    assert r.paths["graph.html"] == str(tmp_path / "graph.html") and "faithfulness" in str(r)
    assert [x["hook"] for x in r.graph["layers"]] == list(saes)
    assert all(x["carried"] == x["carried"] for x in r.graph["layers"])  # finite numbers, one row per SAE layer
    assert "no feature with contrast score" in r.graph["groups"]["never"]["error"]
    found = r.graph["groups"]["after and"]
    assert "error" in found or (found["nodes"] >= 1 and found["features"] and math.isfinite(found["ablation"]))
    assert "group never:" in str(r) and "features carry" in str(r)
    page = read(r.paths["report.html"])
    assert "<iframe" in page and 'href="graph.html"' in page
    assert f"faithfulness {r.graph['faithfulness']:.3f}" in read(tmp_path / "graph.html")  # the check, in its title
    assert "Layer by layer" in page and "Groups found by contrast" in page
    assert not re.search(r"""(src|href)=["']?https?://""", page)  # vis-network's licence comments name URLs


def test_middle_names_the_residual_stream_after_the_middle_block(model):
    from cases import sources

    mid = f"resid_post.{model.n_layers // 2}"
    assert sources.check_hooks(model, "middle") == [mid]
    assert sources.check_hooks(model, "resid_post.0, middle") == ["resid_post.0", mid]


def test_cli_writes_a_report(model, saes, tmp_path, capsys):
    argv = ["run", "--prompt", PROMPT, "--good", " sad", "--bad", " happy", "--out", str(tmp_path), "--ablate", "10",
            "--no-explain", "--steer-tokens", "2", "--quiet"]  # fmt: skip
    assert main(argv, model=model, saes=saes) == 0
    assert "Pearson r" in capsys.readouterr().out and (tmp_path / "report.html").exists()
    # the emotion prompt's words are mostly unknown to the tiny vocabulary (<unk>), but that is not bad input
    assert (
        main(["emotion", "--out", str(tmp_path / "e"), "--saes", "whole", "--ablate", "5", "--quiet"], model=model) == 0
    )
    assert json.loads((tmp_path / "e" / "report.json").read_text())["good"] == " sad"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt", "  ", "--good", " sad", "--bad", " happy"], "empty prompt"),
        (["--prompt", PROMPT, "--good", " sad happy", "--bad", " happy"], "is 2 tokens"),
        (["--prompt", PROMPT, "--good", " sad", "--bad", " happy", "--hooks", "resid_post.99"], "resid_post.99"),
        (["--prompt", PROMPT, "--good", " sad", "--bad", " happy", "--saes", "/no/such/sae"], "does not exist"),
        (["--prompt", PROMPT, "--good", " sad", "--bad", " happy", "--ablate", "1"], "n_ablate"),
        (["--prompt", PROMPT, "--good", " sad", "--bad", " sad"], "same token"),
        (["--prompt", PROMPT, "--good", " sad", "--bad", " happy", "--clamp", "5x"], "multiples"),
        (
            ["--prompt", PROMPT, "--good", " sad", "--bad", " happy", "--no-explain", "--steer", "resid_post.1"],
            "HOOK:FEATURE",
        ),
        (
            ["--prompt", PROMPT, "--good", " sad", "--bad", " happy", "--no-explain", "--steer", "resid_post.1:9999"],
            "does not exist",
        ),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(model, tmp_path, capsys, args, message):
    assert main(["run", *args, "--out", str(tmp_path), "--quiet"], model=model) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_empty_prompt_fails_before_loading_a_model(capsys):
    assert main(["run", "--prompt", "", "--good", " sad", "--bad", " happy", "--model", "/no/such/model"]) == 2
    assert "empty prompt" in capsys.readouterr().err


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    flags = "--model --saes --hooks --method --mode --corrupt --ablate --out --top --cards --no-explain --no-steer"
    for flag in [*flags.split(), "--steer-tokens", "--graph", "--quiet", "--prompt", "--good", "--bad"]:
        assert flag in text


@pytest.mark.default_model
def test_emotion_on_the_default_model_with_a_random_sae(default_model, tmp_path):
    """The real tokenizer: answers, the metric (+2.29 measured) and greedy text that round-trips."""
    from attribution.saes import build

    m = default_model
    torch.manual_seed(0)
    sae = build("topk", m.d_model, 2048, "resid_post.9", k=32)
    with torch.no_grad():
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(2048, m.d_model), dim=-1))
        sae.W_enc.copy_(sae.W_dec.T)
    sae.requires_grad_(False)
    r = cases.emotion.run(model=m, saes=[sae], out=tmp_path, n_ablate=20, explain=False, steer_tokens=3, progress=False)
    assert r.metric == pytest.approx(2.29, abs=0.05) and r.tokens[-1] == " feels"
    assert r.agreement["pearson"] > 0.5  # a random SAE; trained ones are measured in the README
    unedited = r.steering.clamps[0]
    assert unedited.metric == pytest.approx(r.metric, abs=1e-3) and unedited.continuation.startswith(" ")
    assert not re.search(r"https?://", read(r.paths["report.html"]))


def test_one_config_runs_the_same_study_as_the_keywords(model, saes, report, tmp_path):
    from dataclasses import FrozenInstanceError

    config = cases.CaseConfig(
        cases.Question(PROMPT, " sad", " happy"),
        cases.Sources(model, saes),
        cases.Measure(n_ablate=30),
        cases.Output(tmp_path, explain=False),
        progress=False,
    )
    r = cases.run(config)
    assert [(x.hook, x.position, x.feature, x.effect) for x in r.top_attribution] == [
        (x.hook, x.position, x.feature, x.effect) for x in report.top_attribution
    ]
    assert r.rankings == report.rankings and r.steering.clamps == report.steering.clamps
    with pytest.raises(TypeError, match="CaseConfig alone"):
        cases.run(config, " sad")
    with pytest.raises(FrozenInstanceError):
        config.progress = True


def test_config_reads_and_checks_values_before_any_model():
    from attribution import AttributionError, SAEError

    assert cases.Sources(hooks="resid_post.0, middle").hooks == ("resid_post.0", "middle")
    assert cases.SteerOptions.choose("resid_post.1:f12").feature == ("resid_post.1", 12)
    assert cases.SteerOptions.choose(False).enabled is False
    assert cases.SteerOptions(clamps="0, 2.5").clamps == (0.0, 2.5)
    with pytest.raises(AttributionError, match=r"n_ablate=2\.5"):
        cases.Measure(n_ablate=2.5)
    with pytest.raises(AttributionError, match="cards=-1"):
        cases.Output(cards=-1)
    with pytest.raises(SAEError, match="HOOK:FEATURE"):
        cases.SteerOptions.choose(("resid_post.1",))


def test_skipped_stages_are_data_the_page_reads(model, saes, report, tmp_path):
    from cases import stages
    from cases.report import Skip
    from pages import report_page as html

    assert set(report.skipped) == {"labels", "cards"} and "steering" not in report.skipped
    assert json.loads(read(report.paths["report.json"]))["skipped"] == report.skipped
    config = cases.CaseConfig.from_keywords(PROMPT, " sad", " happy", steer=False, progress=False)
    assert stages.steering(config, None, None, None, None) == Skip(
        "steering", "steering was turned off (steer=False / --no-steer)"
    )
    assert stages.graph(config, None, None, None) is None  # not asked for: no section, not a skip
    # the page takes each section's reason from `skipped`, whatever its words
    r = copy.copy(report)
    r.steering, r.notes = None, []
    r.skipped = {"cards": "reason one", "steering": "reason two", "graph": "reason three"}
    page = html.render(r)
    assert "Feature cards not shown: reason one." in page and '<div class="note">reason two</div>' in page
    assert '<h2>Feature graph</h2><div class="note">reason three</div>' in page


def test_page_text_is_escaped_by_the_template(report):
    from pages import report_page as html

    r = copy.copy(report)
    r.title, r.prompt = "<b>bold</b>", 'say "<script>alert(1)</script>"'
    r.top_attribution = [dataclasses.replace(report.top_attribution[0], token="<tok>", label="a & <b>")]
    page = html.render(r)
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page and "<script" not in page
    assert "&lt;tok&gt;" in page and "a &amp; &lt;b&gt;" in page and "<tok>" not in page


def test_replacement_graph_beside_the_sae_graph(model, saes, tmp_path, monkeypatch):
    import pages.graph_page
    from tests.conftest import random_transcoders as transcoders

    drawn, page_of = [], pages.graph_page.page
    monkeypatch.setattr(pages.graph_page, "page", lambda g, **kw: drawn.append(kw) or page_of(g, **kw))
    tcs = transcoders(model, "relu")
    groups = {
        "after and": (["mary went home and", "john says i want to be alone and"], ["mary went home", "the cat ran"])
    }
    swaps = {"after and": (" tired", " happy", ["the cat ran and", "mary went home and"], ["the cat ran", "mary went"])}
    r = cases.run(PROMPTS[1], " tired", " happy", model=model, saes=saes, out=tmp_path, n_ablate=10, graph=True,
                  groups=groups, transcoders=tcs, swaps=swaps, explain=False, steer=False, progress=False)  # fmt: skip
    rp = r.replacement
    assert rp["active_features"] > 0 and rp["full"]["features"] == rp["active_features"]
    for g in (rp, rp["sae_graph"]):
        for x in g["budgets"].values():
            assert 0 <= x["replacement_score"] <= 1 and 0 <= x["completeness_score"] <= 1
            assert x["faithfulness"] is None or math.isfinite(x["faithfulness"])
    assert rp["budgets"][60]["features"] <= 60 and (tmp_path / "replacement.json").exists()
    found = rp["groups"]["after and"]
    if "error" not in found:
        assert math.isfinite(found["ablation"])
        swap = found.get("swap")
        assert swap is None or math.isfinite(swap["change"])
    page = read(r.paths["report.html"])
    assert "Replacement graph (transcoders)" in page and 'href="replacement.html"' in page
    assert json.loads(read(tmp_path / "report.json"))["replacement"]["budgets"]["100"]["edges"] >= 0
    # the pruned graph's page draws every edge it kept: no 5,000-edge refusal (v2 transcoders keep 5,279 on Kobe)
    assert len(drawn) == 2 and drawn[-1].get("max_edges", 5000) is None  # the SAE graph's page, then this one
