"""A few checks on the real embedded default model (gemma-3-270m), converted once and cached."""

import pytest
import torch

from attribution import LogitDiff, TokenizationError, WholeActivation, ablate, attribute, compare, run_with_saes
from attribution.cli import JOHN, JOHN_HAPPY, main
from attribution.saes import build

pytestmark = pytest.mark.default_model
KOBE = "Fact: The capital of the state where Kobe Bryant played basketball is"


def test_loads_with_uniform_hooks(default_model):
    m = default_model
    assert (m.n_layers, m.d_model, m.model_type) == (18, 640, "gemma3_text")
    assert len(m.hooks) == 126 and m.hook("blocks.9.hook_resid_post").module == "model.layers.9"  # 7 kinds x 18


def test_logit_differences_of_the_paper_prompts(default_model):
    m = default_model
    john = LogitDiff(m, " sad", " happy")
    kobe = LogitDiff(m, " Sacramento", " Albany")
    assert float(john(m.logits(JOHN))) > 1.0  # measured +2.29
    assert float(kobe(m.logits(KOBE))) > 0.5  # measured +1.71
    with pytest.raises(TokenizationError, match=r"\[' unbeliev', 'ability'\]"):
        LogitDiff(m, " unbelievability", " happy")
    with pytest.raises(TokenizationError, match="leading space"):
        LogitDiff(m, "Sacramento", " Albany")


def test_splice_is_exact_at_a_middle_layer(default_model):
    m = default_model
    torch.manual_seed(0)
    sae = build("topk", 640, 4096, "resid_post.9", k=32)
    with torch.no_grad():
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(4096, 640), dim=-1))
        sae.W_enc.copy_(sae.W_dec.T)
    run = run_with_saes(m, {sae.hook: sae}, [JOHN, KOBE])
    assert (run.features["resid_post.9"] != 0).sum(-1).max() == 32
    assert (run.logits - m.logits([JOHN, KOBE])).abs().max() <= 1e-4


def test_attribution_patching_tracks_activation_patching(default_model):
    """Every (layer, position) of the residual stream as a node: AtP vs real patching, batched."""
    m = default_model
    saes = WholeActivation.at(m, [f"resid_post.{i}" for i in range(18)])
    metric = LogitDiff(m, " sad", " happy")
    attr = attribute(m, saes, JOHN, metric, method="atp", corrupt=JOHN_HAPPY)
    assert len(attr) == 18 * 14  # <bos> is not a node
    abl = ablate(m, saes, JOHN, metric, attr.top(100), mode="patch", corrupt=JOHN_HAPPY, progress=False)
    agreement = compare(attr, abl)
    assert agreement.pearson >= 0.7  # measured 0.84
    # patching the last layer's residual at the last position moves the metric all the way to the corrupt one
    last = abl.effect[[k[1:] == ("resid_post.17", 14, -1) for k in abl.node_keys()].index(True)]
    assert float(last) == pytest.approx(float(attr.metric[0] - attr.baseline[0]), rel=1e-3)


def test_cli_runs_and_reports_bad_input(default_model, capsys):
    assert main(["run", "--ablate", "30", "--hooks", "resid_post.4,resid_post.12"]) == 0
    out = capsys.readouterr().out
    assert "Pearson r" in out and "resid_post.12" in out
    assert main(["run", "--good", "Sacramento"]) == 2
    assert "leading space" in capsys.readouterr().err
