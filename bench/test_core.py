"""Speed of the core on the default model: attribution and ablation against plain forwards.

SAE weights here are random (TopK, 8,192 features, k = 32, at all 18 layers): cost depends on shapes and
sparsity, not on what the features mean.
"""

import torch

from attribution import ablate, attribute, run_with_saes, trace
from attribution.metrics import Rows, evaluate
from attribution.splice import decompose

CORRUPT = "Fact: The capital city of the state where Patrick Ewing played basketball for the New York Knicks is"


def test_plain_forward(benchmark, model, prompt):
    ids = model.tokenize(prompt).input_ids

    @torch.no_grad()
    def forward():
        return model.hf(ids).logits  # what a user calls "a forward": full logits of every position

    benchmark.pedantic(forward, rounds=30, warmup_rounds=3)


def test_forward_to_final_norm(benchmark, model, prompt):
    """The transformer body alone (what attribution runs, since metrics unembed only what they need)."""
    batch = model.tokenize(prompt)
    benchmark.pedantic(lambda: trace(model, batch), rounds=30, warmup_rounds=3)


def test_forward_with_18_saes(benchmark, model, saes, prompt):
    benchmark.pedantic(lambda: run_with_saes(model, saes, prompt), rounds=10, warmup_rounds=1)


def test_grad_x_act_18_layers(benchmark, model, saes, prompt, metric):
    attr = benchmark.pedantic(lambda: attribute(model, saes, prompt, metric), rounds=10, warmup_rounds=1)
    assert len(attr) > 18 * 19 * 32  # every active feature at every non-<bos> position, plus error nodes


def test_atp_18_layers(benchmark, model, saes, prompt, metric):
    benchmark.pedantic(
        lambda: attribute(model, saes, prompt, metric, method="atp", corrupt=CORRUPT), rounds=5, warmup_rounds=1
    )


def test_ig_18_layers_10_steps(benchmark, model, saes, prompt, metric):
    benchmark.pedantic(lambda: attribute(model, saes, prompt, metric, method="ig", steps=10), rounds=3, warmup_rounds=1)


def test_ablate_256_nodes(benchmark, model, saes, prompt, metric, top_nodes):
    layers = {n.hook for n in top_nodes}
    assert len(top_nodes) == 256 and len(layers) > 5  # spread over many layers, as in real use
    abl = benchmark.pedantic(
        lambda: ablate(model, saes, prompt, metric, top_nodes, progress=False), rounds=3, warmup_rounds=1
    )
    assert len(abl) == 256


def naive_ablations(model, saes, prompt, metric, nodes) -> list[float]:
    """What one writes without the library's growing batch: one clean forward, then one forward per node
    with that single edit (x + delta at the node's hook and position, error terms kept) and its metric."""
    batch = model.tokenize(prompt)
    rows = Rows.of(batch)
    hooks = sorted({n.hook for n in nodes}, key=lambda h: model.hooks[h].order)
    clean = trace(model, batch, capture=hooks)
    dec = {h: decompose(saes[h], clean.acts[h]) for h in hooks}
    base = float(evaluate(metric, model, clean.hidden, rows))
    effects = []
    for n in nodes:
        d = dec[n.hook]
        if n.feature is None:
            delta = -d.error[0, n.position]
        else:
            delta = -d.features[0, n.position, n.feature] * saes[n.hook].W_dec[n.feature]

        def edit(x, pos=n.position, delta=delta):
            x = x.clone()
            x[:, pos] += delta.to(x.dtype)
            return x

        out = trace(model, batch, edits={n.hook: edit})
        effects.append(base - float(evaluate(metric, model, out.hidden, rows)))
    return effects


def test_ablate_32_nodes_batched(benchmark, model, saes, prompt, metric, top_nodes):
    nodes = top_nodes[:32]
    abl = benchmark.pedantic(
        lambda: ablate(model, saes, prompt, metric, nodes, progress=False), rounds=5, warmup_rounds=1
    )
    assert len(abl) == 32 and len({n.hook for n in nodes}) > 3


def test_ablate_32_nodes_naive_loop(benchmark, model, saes, prompt, metric, top_nodes):
    """The baseline for the batched ablation: 33 forwards (clean + one per node), same results."""
    nodes = top_nodes[:32]
    naive = benchmark.pedantic(lambda: naive_ablations(model, saes, prompt, metric, nodes), rounds=3, warmup_rounds=1)
    batched = ablate(model, saes, prompt, metric, nodes, progress=False)
    torch.testing.assert_close(torch.tensor(naive), batched.effect.float(), atol=2e-3, rtol=2e-3)
    benchmark.extra_info["note"] = "same effects as the batched ablation (checked)"
