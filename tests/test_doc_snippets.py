"""Every code block of the README and docs/ runs, so a documented name or signature that does not exist fails.

Python blocks run for real, in order within their page and in one namespace per page (a later block may use
what an earlier one defined), with the docs' own imports and calls. Only the heavy things are stood in for, by
monkeypatching the library entry points the snippets reach rather than by editing the snippets:

- `load_model()` gives a tiny random gemma3 model (tests/conftest.py's, with gemma-3-270m's 18 layers, so
  the docs' hooks such as `resid_post.9` and "18 transcoders" exist);
- `default_saes` / `default_transcoders` run for real, except their training step (`_train`), which writes
  conftest's random SAEs / transcoders into the cache folders the real functions then load;
- feature indexes are built over a few random token windows (the "default" and "real" texts), not a corpus;
- `real_tokens` gives random windows, `train_sae` trains for real on a tiny budget;
- "path/to/sae" holds a random SAE, written before the page runs (load_sae reads it for real).

Stand-ins take the real function's signature (`inspect.signature(...).bind`), so a documented call with an
argument the library lacks fails as it would for a user. What the tiny models cannot run as written is
changed by the explicit SUBSTITUTIONS table (a few literal string replacements, each with its reason); SKIPS
lists blocks that cannot run at all (none). Bash blocks are not run: every `python -m X` module and `attribution
<sub>` sub-command they name must exist, and the arguments of our own command lines must parse. Each page
runs in its own temporary folder (outputs go there), in the temporary cache tests/conftest.py provides, with
no network.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import inspect
import io
import os
import re
import shlex
import socket
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from attribution.models.loading import load_model as real_load_model
from tests.conftest import REAL_CACHE, TINY, WORDS, random_sae, random_transcoders, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
OURS = ("attribution", "graphs", "pages", "cases", "bench", "studies")  # our top-level packages
CHECKOUT_ONLY = ("bench", "studies")  # not installed with the package: their modules are files of the checkout

# Literal replacements in one block's text, for what the tiny models cannot run as written: {block id: [(old,
# new, why)]}. Each `old` must occur in its block (a stale entry fails).
KOBE_ANSWERS = (
    '" Sacramento", " Albany"',
    '" sacramento", " albany"',
    "the tiny vocabulary is lower-case words: both capitalised answers are the one unknown token, a metric of 0",
)
MIDDLE_FEATURE = (
    "feature=1234",
    "feature=123",
    "the tiny model's middle default SAE has 1,024 features (gemma-3-270m's: 16,384)",
)
SUBSTITUTIONS: dict[str, list[tuple[str, str, str]]] = {
    "README.md:2": [MIDDLE_FEATURE],
    "README.md:3": [KOBE_ANSWERS],
    "README.md:4": [KOBE_ANSWERS],
    "docs/graphs.md:1": [KOBE_ANSWERS],
    "docs/graphs.md:2": [KOBE_ANSWERS],
    "docs/graphs.md:3": [KOBE_ANSWERS],
    "docs/replacement.md:1": [KOBE_ANSWERS],
    "docs/training.md:1": [MIDDLE_FEATURE],
}
# Blocks that cannot run on tiny models even so: {block id: reason}.
SKIPS: dict[str, str] = {}


# ---------------------------------------------------------------------------------------------- the blocks


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root
    n: int  # 1-based, among the page's blocks of this language
    lang: str
    line: int  # the page's line number of the block's first line of code
    code: str

    @property
    def id(self) -> str:
        return f"{self.page}:{self.n}"


def blocks(text: str, page: str) -> list[Block]:
    """The fenced code blocks of a markdown text, in order."""
    out, counts = [], {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```\s*([\w+-]*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise ValueError(f"{page}:{i + 1}: a code fence that is never closed")
        lang = m[1].lower()
        counts[lang] = counts.get(lang, 0) + 1
        out.append(Block(page, counts[lang], lang, i + 2, "\n".join(lines[i + 1 : end]) + "\n"))
        i = end + 1
    return out


def page_blocks(path: Path) -> list[Block]:
    return blocks(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix())


ALL = [b for p in PAGES for b in page_blocks(p)]
PYTHON = [b for b in ALL if b.lang == "python"]
BASH = [b for b in ALL if b.lang in ("bash", "sh", "shell")]


def substituted(block: Block, table: dict = SUBSTITUTIONS) -> str:
    code = block.code
    for old, new, why in table.get(block.id, []):
        assert old in code, f"SUBSTITUTIONS[{block.id!r}]: {old!r} is no longer in the block ({why})"
        assert "\n" not in old + new, "substitutions keep the block's lines (tracebacks name the page's lines)"
        code = code.replace(old, new)
    return code


def execute(block: Block, namespace: dict, table: dict = SUBSTITUTIONS) -> None:
    """Run one block in `namespace`; its lines keep the page's line numbers, so a traceback names the page's line."""
    source = "\n" * (block.line - 1) + substituted(block, table)
    exec(compile(source, str(ROOT / block.page), "exec"), namespace)


def run_page(markdown: str, page: str = "fake.md", table: dict = SUBSTITUTIONS) -> dict:
    """The harness on a whole markdown text: its python blocks in order in one namespace (for the self-test)."""
    namespace: dict = {"__name__": "__doc_snippet__"}
    for b in blocks(markdown, page):
        if b.lang == "python":
            execute(b, namespace, table)
    return namespace


# ---------------------------------------------------------------------------------- the tiny stand-ins


@functools.cache
def tiny_default_model():
    """tests/conftest.py's tiny random gemma3 model (width 32, its word-level vocabulary), with gemma-3-270m's
    18 layers, in float32 as the default model loads."""
    import transformers as tf

    config_cls, model_cls, sizes = TINY["gemma3"]
    torch.manual_seed(0)
    cfg = getattr(tf, config_cls)(
        vocab_size=len(WORDS) + 4,
        bos_token_id=2,
        eos_token_id=1,
        initializer_range=0.3,
        **{**sizes, "num_hidden_layers": 18},
    )
    hf = getattr(tf, model_cls)(cfg)
    hf.tokenizer = tiny_tokenizer()
    return real_load_model(hf, dtype=torch.float32)


def random_windows(model, n: int = 32, seq: int = 16, seed: int = 0) -> torch.Tensor:
    """[n, seq] random token ids behind <bos>: the text indexes and training stand-ins read."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, model.tokenizer.vocab_size, (n, seq), generator=g)
    ids[:, 0] = model.tokenizer.bos_token_id
    return ids


def stand_in(monkeypatch, owners: list, name: str, fake):
    """Replace `name` on every owner (each must hold the same real function) by fake(bound arguments), after
    binding the call to the real signature: a call the real function would refuse raises TypeError here."""
    real = getattr(owners[0], name)
    sig = inspect.signature(real)

    @functools.wraps(real)
    def call(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        return fake(real, dict(bound.arguments))

    for owner in owners:
        assert getattr(owner, name) is real, f"{owner.__name__}.{name} is not {real.__module__}.{name}"
        monkeypatch.setattr(owner, name, call)


def write_random_saes(model, specs, folders, tokens, load, progress) -> None:
    """defaults._train's stand-in: conftest's random TopK SAEs at the default hooks and widths, saved where the
    real default_saes then loads them (the real SAEs train on 2M tokens)."""
    from attribution.cache import atomic_write
    from attribution.saes import save_sae

    for i, (h, s) in enumerate(specs.items()):
        sae = random_sae(model, h, s.d_sae, "topk", seed=i, k=6)
        with atomic_write(folders[h], check=load, lock=False) as tmp:
            save_sae(sae, tmp)


def write_random_transcoders(model, specs, folders, tokens, load, progress) -> None:
    """transcoder_defaults._train's stand-in: conftest's random skip-transcoders, one per layer."""
    from attribution.cache import atomic_write
    from attribution.saes import save_sae

    for reads in {s.reads for s in specs.values()}:
        tcs = random_transcoders(model, "topk", skip=True, reads=reads)
        for h, s in specs.items():
            if s.reads == reads:
                with atomic_write(folders[h], check=load, lock=False) as tmp:
                    save_sae(tcs[h], tmp)


@pytest.fixture
def tiny_world(monkeypatch):
    """The stand-ins above, no network, and a check that the cache is conftest's temporary one."""
    # by import_module: `attribution.explain` is also the name of a function, which `import a.b.c as x` would find
    attribution, models, loading, index, training, corpus, defaults, transcoder_defaults = (
        importlib.import_module(m)
        for m in (
            "attribution",
            "attribution.models",
            "attribution.models.loading",
            "attribution.explain.index",
            "attribution.training",
            "attribution.training.corpus",
            "attribution.training.defaults",
            "attribution.training.transcoder_defaults",
        )
    )

    cache = Path(os.environ["ATTRIBUTION_CACHE"]).resolve()
    assert cache != REAL_CACHE.resolve() and REAL_CACHE.resolve() not in cache.parents, cache

    real_connect = socket.socket.connect

    def local_only(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(f"a documented snippet tried to reach the network ({address})")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", local_only)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    stand_in(
        monkeypatch,
        [attribution, models, loading],
        "load_model",
        lambda real, a: tiny_default_model() if a["model"] is None else real(**a),
    )
    monkeypatch.setattr(defaults, "_train", write_random_saes)
    monkeypatch.setattr(transcoder_defaults, "_train", write_random_transcoders)
    for name in ("default", "real"):  # feature indexes over 32 random windows, not 65k tokens of a corpus
        monkeypatch.setitem(index.TEXTS, name, lambda model, n_tokens=0, progress=True: random_windows(model))
    stand_in(
        monkeypatch,
        [training, corpus],
        "real_tokens",
        lambda real, a: random_windows(a["model"], n=64, seed=1),
    )
    stand_in(  # for real, on a tiny budget in windows the tiny model's context holds
        monkeypatch,
        [attribution, training],
        "train_sae",
        lambda real, a: real(**{**a, "tokens": min(a["tokens"], 3_000), "seq_len": 16, "progress": False}),
    )


# --------------------------------------------------------------------------------------- python blocks


@dataclass
class PageRun:
    folder: Path
    namespace: dict = field(default_factory=lambda: {"__name__": "__doc_snippet__"})
    done: int = 0  # blocks run so far
    failed: str | None = None  # the block that raised


RUNS: dict[str, PageRun] = {}


@pytest.mark.parametrize("block", PYTHON, ids=[b.id for b in PYTHON])
def test_python_block(block, tiny_world, tmp_path_factory, monkeypatch):
    if block.id in SKIPS:
        pytest.skip(SKIPS[block.id])
    run = RUNS.get(block.page)
    if run is None:
        run = RUNS[block.page] = PageRun(tmp_path_factory.mktemp(re.sub(r"\W", "_", block.page)))
        from attribution.saes import save_sae

        # the docs' placeholder SAE folder, for load_sae("path/to/sae", ...) to read for real
        save_sae(random_sae(tiny_default_model(), "resid_post.9", arch="topk", k=6), run.folder / "path/to/sae")
    monkeypatch.chdir(run.folder)
    page = [b for b in PYTHON if b.page == block.page]
    for b in page[run.done : block.n]:  # earlier blocks first, when this one runs alone
        if run.failed is not None:
            pytest.skip(f"{run.failed} failed, and this block runs after it in the same namespace")
        if b.id not in SKIPS:
            try:
                execute(b, run.namespace)
            except BaseException:
                run.failed = b.id
                raise
        run.done = b.n


def test_tables_name_existing_blocks():
    ids = {b.id for b in PYTHON}
    assert set(SUBSTITUTIONS) <= ids and set(SKIPS) <= ids, (set(SUBSTITUTIONS) | set(SKIPS)) - ids
    assert len(PYTHON) >= 10, [b.id for b in PYTHON]  # the extraction still finds the docs' blocks


FAKE_PAGE = """
Some prose.

```python
from attribution import load_model, LogitDiff
model = load_model()
```

```python
from attribution import {name}
```
"""


def test_a_name_that_does_not_exist_fails(tiny_world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns = run_page(FAKE_PAGE.format(name="attribute"))  # the harness runs a page that is right
    assert callable(ns["attribute"]) and ns["model"] is tiny_default_model()
    with pytest.raises(ImportError, match="attribute_everything"):
        run_page(FAKE_PAGE.format(name="attribute_everything"))


def test_a_call_that_does_not_fit_the_signature_fails(tiny_world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    page = FAKE_PAGE.format(name="default_saes") + "```python\nsaes = default_saes(model, width=3)\n```\n"
    with pytest.raises(TypeError, match="width"):  # a stood-in function still refuses what the real one would
        run_page(page)
    page = FAKE_PAGE.format(name="attribute") + "```python\nattribute(model, {}, 'the cat', metric=None, k=3)\n```\n"
    with pytest.raises(TypeError, match="'k'"):
        run_page(page)


def test_a_stale_substitution_fails():
    page = "```python\nx = 1\n```\n"
    with pytest.raises(AssertionError, match="no longer in the block"):
        run_page(page, table={"fake.md:1": [("x = 2", "x = 3", "why")]})


# ----------------------------------------------------------------------------------------- bash blocks


def module_exists(name: str) -> bool:
    top = name.split(".")[0]
    if top in CHECKOUT_ONLY:  # a file of the checkout; not imported (benchmarks import their peers' tools)
        path = ROOT.joinpath(*name.split("."))
        return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def parsers() -> dict:
    """Our command lines whose arguments can be checked without running them: {module: argparse parser}."""
    from attribution import cli
    from cases import command

    return {"attribution": cli.parser(), "cases": command.parser()}


def command_problems(code: str) -> list[str]:
    """What is wrong with the commands of a bash block: modules and sub-commands that do not exist, arguments
    our own command lines refuse."""
    from attribution.console import COMMANDS

    problems = []
    ours = parsers()

    def parse(module: str, args: list[str], line: str) -> None:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                ours[module].parse_args(args)
            except SystemExit as exc:
                if exc.code:
                    message = err.getvalue().strip().rpartition("\n")[2]  # argparse's last line: the error
                    problems.append(f"{line.strip()!r}: {message}")

    for line in code.splitlines():
        for module in re.findall(r"python -m ([\w.]+)", line):  # comments included: they name commands too
            if not module_exists(module):
                problems.append(f"{line.strip()!r}: no module {module!r}")
        words = shlex.split(line, comments=True)
        commands, current = [], []
        for w in words:
            if w in ("&&", "||", ";", "|"):
                commands.append(current)
                current = []
            else:
                current.append(w)
        commands.append(current)
        for cmd in commands:
            if cmd[:1] == ["attribution"]:
                if len(cmd) < 2 or cmd[1] not in COMMANDS:
                    problems.append(f"{line.strip()!r}: `attribution` has no sub-command {cmd[1:2]}")
                    continue
                fronts = COMMANDS[cmd[1]].fronts.split()  # python -m <module> [sub-command]
                cmd = [*fronts, *cmd[2:]]
            if cmd[:2] == ["python", "-m"] and len(cmd) > 2 and cmd[2] in ours:
                parse(cmd[2], cmd[3:], line)
    return problems


@pytest.mark.parametrize("block", BASH, ids=[b.id for b in BASH])
def test_bash_block(block):
    problems = command_problems(block.code)
    assert not problems, problems


def test_a_command_that_does_not_exist_fails():
    assert command_problems("python -m attribution run --prompt 'x'   # python -m cases emotion\n") == []
    assert len(command_problems("python -m attribution.nowhere --x\n")) == 1
    assert len(command_problems("python -m studies.nowhere\n")) == 1
    assert len(command_problems("attribution frobnicate   # python -m attribution.frobnicate\n")) == 2
    assert len(command_problems("attribution case emotion --no-such-option\n")) == 1
    assert len(command_problems("ls && python -m cases nowhere\n")) == 1


# -------------------------------------------------------------------------- names in the prose


def resolve(dotted: str):
    """The object a dotted name of ours names (a module, or an attribute of one), or raise. Modules of the
    checkout only (bench, studies) are not imported: the name must be a module file, or one defined at the top
    level of one."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        if not module_exists(module):
            continue
        if parts[0] in CHECKOUT_ONLY:
            path = ROOT.joinpath(*parts[:i])
            text = (path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__init__.py").read_text()
            rest = parts[i:]
            if rest and (len(rest) > 1 or not re.search(rf"^(?:def |class )?{rest[0]}\b", text, re.M)):
                raise AttributeError(f"{module} defines no {'.'.join(rest)}")
            return path
        obj = importlib.import_module(module)
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def name_problems(markdown: str) -> list[str]:
    """What inline code in the prose, and the comments of code blocks, name that does not exist: `python -m X`
    modules, dotted names of ours (`graphs.scores.graph_scores`), paths into our folders
    (`bench/peers/circuit_tracer_files.py`)."""
    problems = []
    prose = re.sub(r"^```.*?^```[ \t]*$", "", markdown, flags=re.S | re.M)
    comments = [line.split("#", 1)[1] for b in blocks(markdown, "") for line in b.code.splitlines() if "#" in line]
    for code in re.findall(r"`([^`\n]+)`", prose) + comments:
        for module in re.findall(r"python -m ([\w.]+)", code):
            if not module_exists(module):
                problems.append(f"`{code}`: no module {module}")
        rest = re.sub(r"python -m [\w.]+", "", code)
        for dotted in re.findall(rf"(?<![\w/.])((?:{'|'.join(OURS)})(?:\.\w+)+)", rest):
            if dotted.endswith((".py", ".md")):
                continue
            try:
                resolve(dotted)
            except (ImportError, AttributeError) as exc:
                problems.append(f"`{code}`: {dotted} ({type(exc).__name__}: {exc})")
        for p in re.findall(rf"(?<![\w/.])((?:{'|'.join([*OURS, 'tests', 'docs'])})/[\w./*-]*)", code):
            source = Path(p).suffix in ("", ".py")  # not outputs (.json, .html), which may not be committed
            if source and "<" not in p and "*" not in p and not (ROOT / p).exists():
                problems.append(f"`{code}`: no file or folder {p}")
    return problems


@pytest.mark.parametrize("path", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_names_in_the_prose_exist(path):
    """So that renamed modules leave no stale mention behind."""
    problems = name_problems(path.read_text(encoding="utf-8"))
    assert not problems, problems


def test_a_stale_name_in_the_prose_fails():
    page = """The page (`pages/graph_page.py`, `pages.render.render`, `python -m studies.sae_curve`), then the old
names: `graphs/html.py`, `graphs.render.render`, `python -m bench.sae_curve`, `attribution.explain.nothing`.

```python
g.to_html("kobe.html")  # pages.graph_page; was graphs.html
```
"""
    assert len(name_problems(page)) == 5, name_problems(page)
