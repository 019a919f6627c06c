"""Many dictionaries from one forward pass: the same result alone or together, checkpoints that resume
exactly, transcoder pairs, and clear errors."""

import pytest
import torch

from attribution import AttributionError
from attribution.saes import build
from attribution.training.stream import Dictionary, train_dictionaries
from attribution.training.trainer import Fitter, TrainConfig
from tests.conftest import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("gemma3", dtype=torch.float32)


def windows(model, n: int = 48, seq: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, model.W_U.shape[0], (n, seq), generator=g)
    ids[:, 0] = model.tokenizer.bos_token_id
    return ids


def dictionary(model, hook: str, target: str | None = None, d_sae: int = 64) -> Dictionary:
    sae = build("topk", model.d_model, d_sae, hook, k=4, apply_b_dec_to_input=target is None)
    return Dictionary(sae, TrainConfig(lr=3e-3, dead_after_tokens=200, dtype="float32", log_every=2), hook, target)


def weights(d: Dictionary) -> dict:
    return {k: v.clone() for k, v in d.sae.state_dict().items()}


def test_alone_or_together_the_same_dictionary(model):
    ids = windows(model)
    together = {"a": dictionary(model, "resid_post.0"), "b": dictionary(model, "resid_post.1", d_sae=32)}
    logs = train_dictionaries(model, together, ids, batch_windows=8, mask_hook="resid_post.1", progress=False)
    alone = {"a": dictionary(model, "resid_post.0")}
    train_dictionaries(model, alone, ids, batch_windows=8, mask_hook="resid_post.1", progress=False)
    for k, v in weights(together["a"]).items():
        torch.testing.assert_close(weights(alone["a"])[k], v, rtol=0, atol=0, msg=k)
    assert logs["a"].steps[-1] == len(ids) // 8 - 1  # one step a batch, the schedule spans the run
    meta = together["b"].sae.meta
    assert meta["training"]["tokens_seen"] == 48 * 11 and meta["curve"]["tokens"][0] == 0
    assert len(meta["curve"]["explained_variance"]) == len(logs["b"].steps)


def test_interrupted_run_resumes_from_its_checkpoint(model, tmp_path, monkeypatch):
    ids = windows(model)
    whole = {"a": dictionary(model, "resid_post.1")}
    train_dictionaries(model, whole, ids, batch_windows=8, progress=False)
    ckpt = tmp_path / "run.ckpt"
    real_step, calls = Fitter.step, []

    def dying_step(self, x, target=None):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt  # killed during the 4th batch: batches 1-3 are in the checkpoint
        return real_step(self, x, target)

    monkeypatch.setattr(Fitter, "step", dying_step)
    first = {"a": dictionary(model, "resid_post.1")}
    with pytest.raises(KeyboardInterrupt):
        train_dictionaries(model, first, ids, batch_windows=8, checkpoint=ckpt, checkpoint_s=0, progress=False)
    assert ckpt.is_file()
    monkeypatch.setattr(Fitter, "step", real_step)
    seen = []
    monkeypatch.setattr(Fitter, "step", lambda self, x, t=None: (seen.append(1), real_step(self, x, t))[1])
    resumed = {"a": dictionary(model, "resid_post.1")}
    train_dictionaries(model, resumed, ids, batch_windows=8, checkpoint=ckpt, checkpoint_s=0, progress=False)
    assert len(seen) == len(ids) // 8 - 3  # the three checkpointed batches were not run again
    assert not ckpt.exists()  # a finished run leaves no checkpoint
    for k, v in weights(whole["a"]).items():
        torch.testing.assert_close(weights(resumed["a"])[k], v, rtol=0, atol=0, msg=k)


def test_checkpoint_of_another_recipe_is_not_resumed(model, tmp_path):
    ids = windows(model)
    ckpt = tmp_path / "run.ckpt"
    torch.save({"recipe": "something else", "batches": 5, "fitters": {}}, ckpt)
    d = {"a": dictionary(model, "resid_post.1")}
    logs = train_dictionaries(model, d, ids, batch_windows=8, checkpoint=ckpt, progress=False)
    assert logs["a"].steps[0] == 0  # trained from the start
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="unreadable"):
        train_dictionaries(model, {"a": dictionary(model, "resid_post.1")}, ids, batch_windows=8, checkpoint=ckpt)


def test_transcoder_pair_reads_one_hook_and_reconstructs_another(model):
    ids = windows(model, n=160)
    d = {"tc": dictionary(model, "resid_pre.1", target="mlp_out.1")}
    logs = train_dictionaries(model, d, ids, batch_windows=8, progress=False)
    assert logs["tc"].explained_variance[-1] > logs["tc"].explained_variance[0]
    assert d["tc"].sae.meta["training"]["tokens_seen"] == 160 * 11


def test_bad_input_names_the_problem(model):
    ids = windows(model)
    with pytest.raises(AttributionError, match="no dictionaries"):
        train_dictionaries(model, {}, ids)
    with pytest.raises(AttributionError, match="at least batch_windows=64"):
        train_dictionaries(model, {"a": dictionary(model, "resid_post.0")}, ids, batch_windows=64)
    with pytest.raises(AttributionError, match=r"resid_post\.9"):
        train_dictionaries(model, {"a": dictionary(model, "resid_post.9")}, ids)
    with pytest.raises(AttributionError, match="expects d_in"):
        bad = Dictionary(build("topk", 7, 16, "resid_post.0", k=2), TrainConfig(progress=False), "resid_post.0")
        train_dictionaries(model, {"a": bad}, ids, batch_windows=8, progress=False)


def sf_dictionary(model, hook: str) -> Dictionary:
    sae = build("topk", model.d_model, 64, hook, k=4)
    cfg = TrainConfig(lr=3e-3, optimizer="signsgd", dead_after_tokens=200, dtype="float32", log_every=2)
    return Dictionary(sae, cfg, hook)


def test_a_kept_run_continued_equals_the_longer_run(model, tmp_path, monkeypatch):
    """keep / start: a run of 24 windows continued to 72 (epochs over the same 48) is the 72-window run, to
    the bit: the state is the unfinished one (before the average and the normalisation are folded in), the
    continuation skips the batches the kept run covered, and schedule-free sign-SGD has no decay."""
    ids = windows(model)
    longer = {"a": sf_dictionary(model, "resid_post.1")}
    train_dictionaries(model, longer, ids, batch_windows=8, tokens=72 * 11, progress=False)
    kept = tmp_path / "state.pt"
    short = {"a": sf_dictionary(model, "resid_post.1")}
    train_dictionaries(model, short, ids, batch_windows=8, tokens=24 * 11, keep=kept, progress=False)
    assert short["a"].sae.meta["training"]["tokens_seen"] == 24 * 11 and kept.is_file()
    seen = []
    real_step = Fitter.step
    monkeypatch.setattr(Fitter, "step", lambda self, x, t=None: (seen.append(1), real_step(self, x, t))[1])
    more = {"a": sf_dictionary(model, "resid_post.1")}
    train_dictionaries(model, more, ids, batch_windows=8, tokens=72 * 11, start=kept, progress=False)
    assert len(seen) == (72 - 24) // 8  # the kept run's three batches were not run again
    for k, v in weights(longer["a"]).items():
        torch.testing.assert_close(weights(more["a"])[k], v, rtol=0, atol=0, msg=k)
    with pytest.raises(AttributionError, match="ask for more tokens"):
        same = {"a": sf_dictionary(model, "resid_post.1")}
        train_dictionaries(model, same, ids, batch_windows=8, tokens=24 * 11, start=kept)
    with pytest.raises(AttributionError, match="other dictionaries"):
        other = {"a": sf_dictionary(model, "resid_post.0")}
        train_dictionaries(model, other, ids, batch_windows=8, tokens=72 * 11, start=kept)
    with pytest.raises(AttributionError, match="signsgd"):  # Adam decays to zero at the end: no continuing
        train_dictionaries(model, {"a": dictionary(model, "resid_post.1")}, ids, batch_windows=8, keep=kept)
