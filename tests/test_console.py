"""The `attribution` console script: pyproject names its function, `--help` lists every sub-command, and each
sub-command hands its arguments unchanged to the main() of the `python -m` command line it fronts."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import import_module
from pathlib import Path

import pytest

from attribution import console

ROOT = Path(__file__).resolve().parents[1]
# sub-command -> what its --help must print: the usage line of the command line it fronts
OWN_HELP = {
    "run": "usage: python -m attribution run",
    "saes": "usage: python -m attribution saes",
    "transcoders": "usage: python -m attribution transcoders",
    "case": "usage: python -m cases",
    "bench": "usage: attribution bench",
}


def _call(argv: list[str]) -> int:
    """console.main as the script wrapper runs it: argparse's --help ends in SystemExit."""
    try:
        return console.main(argv)
    except SystemExit as exc:
        return exc.code


def test_pyproject_names_the_entry_function():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    module, _, name = scripts["attribution"].partition(":")
    assert getattr(import_module(module), name) is console.main


def test_help_lists_every_sub_command_on_one_line(capsys):
    assert console.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert set(console.COMMANDS) == set(OWN_HELP)
    for name, command in console.COMMANDS.items():
        lines = re.findall(rf"^  {name} +(\S.*)$", out, re.M)
        assert lines == [f"{command.help} ({command.fronts})"], name


@pytest.mark.parametrize("name", OWN_HELP)
def test_each_sub_command_shows_its_own_help(name, capsys, monkeypatch):
    import subprocess

    def not_run(*a, **k):
        raise AssertionError("--help ran the benchmarks")

    monkeypatch.setattr(subprocess, "call", not_run)  # the benchmark suite runs pytest through it
    assert _call([name, "--help"]) == 0
    assert OWN_HELP[name] in capsys.readouterr().out


def test_case_help_reaches_the_case_parser(capsys):
    assert _call(["case", "emotion", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: python -m cases emotion" in out and "metric: logit(' sad') - logit(' happy')" in out


@pytest.mark.parametrize(
    ("argv", "module", "expected"),
    [
        (
            ["run", "--prompt", "Hi there", "--top", "3"],
            "attribution.cli",
            ["run", "--prompt", "Hi there", "--top", "3"],
        ),
        (["saes", "--evaluate"], "attribution.cli", ["saes", "--evaluate"]),
        (["case", "multihop", "--out", "x", "--quiet"], "cases.command", ["multihop", "--out", "x", "--quiet"]),
        (["bench", "-k", "sae", "--threads", "1"], "bench.__main__", ["-k", "sae", "--threads", "1"]),
    ],
)
def test_arguments_pass_through_unchanged(argv, module, expected, monkeypatch):
    seen = []

    def fake_main(args):
        seen.append(list(args))
        return 7

    monkeypatch.setattr(import_module(module), "main", fake_main)
    assert console.main(argv) == 7
    assert seen == [expected]


@pytest.mark.parametrize("argv", [[], ["nope"], ["--run"]])
def test_a_missing_or_unknown_command_exits_2_naming_the_choices(argv, capsys):
    assert console.main(argv) == 2
    err = capsys.readouterr().err
    assert "choose from run, saes, transcoders, case, bench" in err and "usage: attribution <command>" in err


def test_runs_as_a_process():
    out = subprocess.run(
        [sys.executable, "-m", "attribution.console", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("usage: attribution <command>")
