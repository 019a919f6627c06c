"""The device smoke script's CPU mode runs (its CUDA mode is untested: no GPU was available)."""

import pytest

from attribution import smoke as device_smoke

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cpu_mode_runs_and_passes(capsys):
    argv = ["--device", "cpu", "--families", "gpt2", "--no-default-model", "--dtypes", "float32,bfloat16"]
    assert device_smoke.main([*argv, "--steps", "5"]) == 0
    out = capsys.readouterr().out
    for check in ("attribution", "ablation", "graph edges", "fit EV"):
        assert check in out
    assert "all checks within tolerance" in out
