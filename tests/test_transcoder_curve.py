"""studies.transcoder_curve: the power-law fit recovers a known curve, and the forward check compares an earlier
fit only with a longer run's first-epoch points past the earlier run."""

from types import SimpleNamespace

import pytest

from studies.transcoder_curve import at, fit_power, forward_check, tokens_for


def test_fit_power_recovers_a_known_curve():
    tokens = [250_000 * 1.1**i for i in range(30)]
    a, b, r2 = fit_power(tokens, [at(3.0, 0.15, t) for t in tokens])
    assert a == pytest.approx(3.0, rel=1e-9) and b == pytest.approx(0.15, rel=1e-9) and r2 == pytest.approx(1.0)
    assert at(a, b, tokens_for(a, b, 0.5)) == pytest.approx(0.5)
    assert tokens_for(a, 0.0, 0.5) is None  # a flat curve never reaches it


def test_forward_check_uses_first_epoch_points_past_the_earlier_run():
    earlier = {"tokens_seen": 2_000_000, "fit": {"a": 3.0, "b": 0.15}, "heldout_features_on_rest": 0.3}
    tokens = [500_000 * i for i in range(1, 9)]  # 0.5M .. 4M; the first epoch ends at 3M
    ev = [at(3.0, 0.15, t) + 0.01 for t in tokens]  # measured 0.01 above the earlier fit everywhere
    tc = SimpleNamespace(
        meta={
            "curve": {"tokens": tokens, "explained_variance": ev},
            "training": {"tokens_seen": 4_000_000, "epochs": 4 / 3},
            "eval": {"features_on_rest": 0.35},
        }
    )
    c = forward_check(tc, earlier)
    assert (c["points"], c["from_tokens"], c["to_tokens"]) == (2, 2_500_000, 3_000_000)
    assert c["measured_mean"] - c["predicted_mean"] == pytest.approx(0.01)
    assert c["predicted_gain"] == pytest.approx(at(3.0, 0.15, 4e6) - at(3.0, 0.15, 2e6))
    assert c["heldout_gain"] == pytest.approx(0.05)  # 0.35 now against the earlier run's 0.3
    tc.meta["training"]["epochs"] = 2.0  # the first epoch ends at 2M: nothing past the earlier run is held out
    assert forward_check(tc, earlier) == {"points": 0}
