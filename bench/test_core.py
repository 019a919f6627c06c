"""Speed of the core on the default model: attribution and ablation against plain forwards.

SAE weights here are random (TopK, 8,192 features, k = 32, at all 18 layers): cost depends on shapes and
sparsity, not on what the features mean.
"""

import torch

from attribution import ablate, attribute, run_with_saes, trace

CORRUPT = "Fact: The capital city of the state where Patrick Ewing played basketball for the New York Knicks is"


def test_plain_forward(benchmark, record, model, prompt):
    ids = model.tokenize(prompt).input_ids

    @torch.no_grad()
    def forward():
        return model.hf(ids).logits  # what a user calls "a forward": full logits of every position

    benchmark.pedantic(forward, rounds=30, warmup_rounds=3)
    record()


def test_forward_to_final_norm(benchmark, record, model, prompt):
    """The transformer body alone (what attribution runs, since metrics unembed only what they need)."""
    batch = model.tokenize(prompt)
    benchmark.pedantic(lambda: trace(model, batch), rounds=30, warmup_rounds=3)
    record()


def test_forward_with_18_saes(benchmark, record, model, saes, prompt):
    benchmark.pedantic(lambda: run_with_saes(model, saes, prompt), rounds=10, warmup_rounds=1)
    record()


def test_grad_x_act_18_layers(benchmark, record, model, saes, prompt, metric):
    attr = benchmark.pedantic(lambda: attribute(model, saes, prompt, metric), rounds=10, warmup_rounds=1)
    assert len(attr) > 18 * 19 * 32  # every active feature at every non-<bos> position, plus error nodes
    record()


def test_atp_18_layers(benchmark, record, model, saes, prompt, metric):
    benchmark.pedantic(
        lambda: attribute(model, saes, prompt, metric, method="atp", corrupt=CORRUPT), rounds=5, warmup_rounds=1
    )
    record()


def test_ig_18_layers_10_steps(benchmark, record, model, saes, prompt, metric):
    benchmark.pedantic(lambda: attribute(model, saes, prompt, metric, method="ig", steps=10), rounds=3, warmup_rounds=1)
    record()


def test_ablate_256_nodes(benchmark, record, model, saes, prompt, metric):
    nodes = attribute(model, saes, prompt, metric).top(256)
    layers = {n.hook for n in nodes}
    assert len(nodes) == 256 and len(layers) > 5  # spread over many layers, as in real use
    abl = benchmark.pedantic(
        lambda: ablate(model, saes, prompt, metric, nodes, progress=False), rounds=3, warmup_rounds=1
    )
    assert len(abl) == 256
    record()
