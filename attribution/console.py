"""`attribution`: one console script in front of the project's command lines.

Each sub-command hands the rest of its arguments, unchanged, to the main() of the command line it fronts, so
`attribution case emotion --out runs/emotion` is `python -m cases emotion --out runs/emotion`, and the
`python -m` forms keep working as they are. `attribution <command> --help` shows that command's own options.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass


def _attribution(command: str) -> Callable[[list[str]], int]:
    def run(args: list[str]) -> int:
        from attribution import cli

        return cli.main([command, *args])

    return run


def _case(args: list[str]) -> int:
    from cases import command

    return command.main(args)


def _bench(args: list[str]) -> int:
    try:
        from bench import __main__ as suite
    except ModuleNotFoundError as exc:
        if exc.name != "bench":
            raise
        print(
            "attribution bench: the benchmarks are not installed with the package; they live in the repository's "
            "bench/ folder: run this from the root of a checkout",
            file=sys.stderr,
        )
        return 2
    if "-h" in args or "--help" in args:
        # python -m bench hands every argument to pytest and then rewrites the report: answer --help here
        print("usage: attribution bench [--threads N] [--report-only] [pytest arguments ...]\n")
        print(suite.__doc__.strip())
        return 0
    return suite.main(list(args))


@dataclass(frozen=True)
class Command:
    fronts: str  # the command line it stands for
    help: str  # one line for `attribution --help`
    main: Callable[[list[str]], int]


COMMANDS = {
    "run": Command(
        "python -m attribution run", "attribute a logit difference and check it by ablation", _attribution("run")
    ),
    "saes": Command(
        "python -m attribution saes",
        "train (once) and cache the default SAEs; --evaluate measures them",
        _attribution("saes"),
    ),
    "transcoders": Command(
        "python -m attribution transcoders",
        "train (once) and cache the default transcoders, for replacement graphs",
        _attribution("transcoders"),
    ),
    "case": Command(
        "python -m cases", "run a case study (emotion, multihop, or your own prompt) and write its report", _case
    ),
    "bench": Command("python -m bench", "the benchmark suite and its report, from a checkout", _bench),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: attribution <command> [arguments ...]",
        "",
        "Circuit attribution and ablation with sparse-autoencoder features. Each command passes its arguments to",
        "the command line it fronts (shown after it); `attribution <command> --help` lists that command's options.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {c.help} ({c.fronts})" for name, c in COMMANDS.items()),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """The `attribution` console script (pyproject's [project.scripts])."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(usage())
        return 0
    if not args or args[0] not in COMMANDS:
        print(usage(), file=sys.stderr)
        what = f"unknown command {args[0]!r}" if args else "a command is required"
        print(f"\nattribution: error: {what} (choose from {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    return COMMANDS[args[0]].main(args[1:])


if __name__ == "__main__":
    sys.exit(main())
