"""The HTML export in a real headless Chromium: it loads offline with no console error and no network
request, draws every node of the graph, shows a feature's tooltip, lays out a crowded graph with no two
nodes' boxes (shape and label) overlapping, measured from what vis-network drew, shows a clicked node's card
and strongest inputs in the side panel, collapses error nodes and groups, and leaves screenshots.

Chromium is Debian's `chromium`, installed by the project's test set-up (`bash tests/setup.sh`, which .ci/run
calls). Where it is missing the test is skipped with the reason, except in CI (CI=true), where the set-up
must have installed it and a missing browser fails the test.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from attribution import LogitDiff
from graphs import build_graph, check
from graphs.graph import Graph
from graphs.graph_nodes import METRIC_ID, GraphNode, error_id, feature_id, token_id
from pages.graph_page import LABEL_PX, data
from tests.conftest import PROMPTS, random_sae, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="session")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        why = "headless Chromium not found: run `bash tests/setup.sh` as root (apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return found


class DevTools:
    """A minimal Chrome DevTools Protocol client over websocket-client: commands, and the events seen."""

    def __init__(self, ws_url: str):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.next_id, self.events = 0, []

    def send(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, method: str, timeout: float = 30) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for e in self.events:
                if e.get("method") == method:
                    return e
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(method)

    def evaluate(self, expression: str):
        out = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in out:
            raise RuntimeError(out["exceptionDetails"])
        return out["result"].get("value")


@pytest.fixture
def browser(chromium, tmp_path):
    profile = tmp_path / "profile"
    proc = subprocess.Popen(
        [
            chromium,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--remote-debugging-port=0",
            "--remote-allow-origins=*",
            f"--user-data-dir={profile}",
            "--window-size=1400,1000",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        end = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > end or proc.poll() is not None:
                pytest.fail("chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        yield tools
        tools.ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def open_page(browser, path: Path) -> None:
    for domain in ("Runtime", "Log", "Network", "Page"):
        browser.send(f"{domain}.enable")
    browser.send("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1, mobile=False)
    browser.send("Page.navigate", url=path.as_uri())
    browser.wait_for("Page.loadEventFired")
    time.sleep(0.5)  # let vis-network draw


def offline_and_clean(browser) -> None:
    """No request left the page's own file, and nothing went wrong in it."""
    requests = [e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"]
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    errors = [
        e["params"]
        for e in browser.events
        if e.get("method") == "Runtime.exceptionThrown"
        or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
        or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
    ]
    assert errors == []


def screenshot(browser, path: Path) -> None:
    shot = browser.send("Page.captureScreenshot", format="png")
    path.write_bytes(base64.b64decode(shot["data"]))
    assert path.stat().st_size > 10_000


VISIBLE = "graphPage.nodes.get({filter: (n) => !n.hidden}).length"

# Every drawn node's shape and label as vis-network last drew them (canvas pixels, which are screen pixels at
# 100% zoom). vis-network measures a label when it draws it and draws only what is in view, so the whole graph
# is fitted into view first.
BOXES = """(() => {
  graphPage.view(true);
  network.redraw();
  return Object.values(network.body.nodes).filter((n) => graphPage.byId[n.id] && !n.options.hidden).map((n) => {
    const l = n.labelModule.size, w = n.shape.width / 2, h = n.shape.height / 2;
    return {id: n.id, x: n.x, font: n.options.font.size, text: n.options.label, kind: graphPage.byId[n.id].kind,
            shape: [n.x - w, n.y - h, n.x + w, n.y + h], label: [l.left, l.top, l.left + l.width, l.top + l.height]};
  });
})()"""


def overlapping(boxes: list[dict]) -> list[tuple[str, str]]:
    """Pairs of nodes whose boxes (shape and label together) overlap."""
    rects = []
    for b in boxes:
        assert abs((b["label"][0] + b["label"][2]) / 2 - b["x"]) < 1, b  # measured where it is now drawn
        s, t = b["shape"], b["label"]
        rects.append((b["id"], min(s[0], t[0]), min(s[1], t[1]), max(s[2], t[2]), max(s[3], t[3])))
    return [
        (a[0], b[0])
        for i, a in enumerate(rects)
        for b in rects[i + 1 :]
        if a[1] < b[3] and b[1] < a[3] and a[2] < b[4] and b[2] < a[4]
    ]


def visible_count(g, errors: bool, groups_open: bool) -> int:
    """How many nodes the page should draw: error nodes one per row unless `errors`, groups as one node
    unless `groups_open`."""
    grouped = {i for ids in g.groups.values() for i in ids}
    kinds = [x.kind for x in g.nodes]
    rows = len({x.layer for x in g.nodes if x.kind == "error"})
    n = len(g.nodes) if groups_open else len(g.nodes) - len(grouped) + len(g.groups)
    return n if errors else n - kinds.count("error") + rows


def click_node(browser, node_id: str) -> None:
    """A real mouse click on a node, brought into view at 100% first."""
    nid = json.dumps(node_id)
    xy = browser.evaluate(
        f"(() => {{ network.moveTo({{position: network.getPositions([{nid}])[{nid}], scale: 1}}); "
        f"const p = network.canvasToDOM(network.getPositions([{nid}])[{nid}]); "
        "const r = document.getElementById('mynetwork').getBoundingClientRect(); "
        "return {x: r.left + p.x, y: r.top + p.y}; })()"
    )
    time.sleep(0.2)
    for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
        browser.send("Input.dispatchMouseEvent", type=kind, x=xy["x"], y=xy["y"], button="left", clickCount=1)
    time.sleep(0.4)


def test_html_loads_offline_and_draws_every_node(browser, tmp_path):
    m = tiny_model("gemma3")
    saes = {h: random_sae(m, h, seed=i) for i, h in enumerate(["resid_post.0", "resid_post.1", "resid_post.2"])}
    g = build_graph(m, saes, PROMPTS[0], LogitDiff(m, "sad", "happy"), labels=lambda h, f: f"<feature {f} & co>")
    g = g.prune(0.8, 0.98, max_feature_nodes=25)
    path: Path = g.to_html(tmp_path / "graph.html", check=check(m, saes, g))
    open_page(browser, path)

    ids = set(browser.evaluate("network.body.data.nodes.getIds()"))
    assert {x.id for x in g.nodes} <= ids  # every node is in the page; error nodes drawn one per row at first
    assert browser.evaluate(VISIBLE) == visible_count(g, errors=False, groups_open=True)
    browser.evaluate("graphPage.setErrors(true)")
    assert browser.evaluate(VISIBLE) == len(g.nodes)
    assert browser.evaluate("network.body.data.edges.length") == len(g.edges)
    assert browser.evaluate("Object.keys(network.body.nodes).length") >= len(g.nodes)  # drawn, not only data

    # hovering a feature shows its tooltip, with the label as text rather than parsed as a tag
    feature = g.top(1)[0]
    fid = json.dumps(feature.id)
    browser.evaluate(f"network.moveTo({{position: network.getPositions([{fid}])[{fid}], scale: 1}})")
    xy = browser.evaluate(f"network.canvasToDOM(network.getPositions([{fid}])[{fid}])")
    box = browser.evaluate(
        "(() => { const r = document.getElementById('mynetwork').getBoundingClientRect(); "
        "return {x: r.left, y: r.top}; })()"
    )
    for dx in (0, 1):
        browser.send("Input.dispatchMouseEvent", type="mouseMoved", x=box["x"] + xy["x"] + dx, y=box["y"] + xy["y"])
    time.sleep(0.6)
    tip = browser.evaluate("(document.querySelector('div.vis-tooltip') || {}).innerText || ''")
    assert feature.label in tip and "attribution" in tip

    screenshot(browser, tmp_path / "graph.png")
    offline_and_clean(browser)


def test_page_data_collapses_error_nodes_and_groups():
    """Without a browser: one node per row stands for its error nodes (influence and attribution summed), a
    group for its members, and every kept edge is in the page's data."""
    m = tiny_model("gemma3")
    saes = {h: random_sae(m, h, seed=i) for i, h in enumerate(["resid_post.0", "resid_post.1"])}
    g = build_graph(m, saes, PROMPTS[0], LogitDiff(m, "sad", "happy"), labels=lambda h, f: "x\ny" * 40, progress=False)
    g = g.prune(0.9, 0.98)
    g.group("pair", [x.id for x in g.top(2)])
    d = data(g)
    nodes = {n["id"]: n for n in d["nodes"]}
    assert len(d["edges"]) == len(g.edges) and {x.id for x in g.nodes} <= set(nodes)
    for hook in saes:
        errs = [x for x in g.nodes if x.kind == "error" and x.hook == hook]
        agg = nodes[f"errors:{hook}"]
        assert sorted(agg["members"]) == sorted(x.id for x in errs)
        assert agg["influence"] == pytest.approx(sum(x.influence for x in errs))
        assert all(nodes[x.id]["agg"] == agg["id"] for x in errs)
    assert nodes["group:pair"]["members"] == g.groups["pair"]
    assert all("\n" not in nodes[x.id]["label"] for x in g.nodes if x.kind == "feature")  # one line each
    assert d["columns"][-1]["name"] == "errors" and d["label_px"] == LABEL_PX


def no_overlap(browser, steps) -> None:
    """After each step (JavaScript run in the page; "" for none) no two drawn nodes' boxes overlap, every label
    is drawn at 12 px or more and no feature's label is wider than LABEL_PX."""
    for step in steps:
        if step:
            browser.evaluate(step)
        boxes = browser.evaluate(BOXES)
        assert len(boxes) == browser.evaluate(VISIBLE)
        assert overlapping(boxes) == [], step
        assert min(b["font"] for b in boxes) >= 12
        assert max(b["label"][2] - b["label"][0] for b in boxes if b["kind"] == "feature") <= LABEL_PX + 1


def test_crowded_graph_reads_without_overlap(browser, tmp_path):
    """Many features in one cell, many error nodes and a group: no two nodes' boxes (shape and label) overlap
    in any state, labels are 12 px and cut to LABEL_PX, and a click shows the node's card and inputs."""
    m = tiny_model("gemma3")
    saes = {h: random_sae(m, h, seed=i) for i, h in enumerate(["resid_post.0", "resid_post.1", "resid_post.2"])}
    labels = lambda h, f: f"<feature {f} & a long label at {h}>"  # noqa: E731
    g = build_graph(m, saes, PROMPTS[0], LogitDiff(m, "sad", "happy"), candidates=40, labels=labels, progress=False)
    g = g.prune(0.95, 0.99, max_feature_nodes=100)
    g.group("trio", [x.id for x in g.top(3)])
    cells = [(x.layer, x.position) for x in g.nodes if x.kind == "feature"]
    assert max(cells.count(c) for c in set(cells)) >= 8 and sum(x.kind == "error" for x in g.nodes) >= 10
    path: Path = g.to_html(tmp_path / "crowded.html")
    open_page(browser, path)
    screenshot(browser, tmp_path / "crowded.png")  # as it opens: 100%, the metric's corner in view

    no_overlap(browser, ["", "graphPage.setErrors(true)", "graphPage.toggleGroup('group:trio')"])
    screenshot(browser, tmp_path / "crowded-expanded.png")
    browser.evaluate("graphPage.toggleGroup('group:trio'); graphPage.setErrors(false); graphPage.view(false)")

    # a click on a feature: its card and its strongest input (error nodes and the group collapsed) in the panel
    feature = next(x for x in g.top(10) if x.id not in g.groups["trio"])
    drawn = {i: "group:trio" for i in g.groups["trio"]} | {
        x.id: f"errors:{x.hook}" for x in g.nodes if x.kind == "error"
    }
    inputs: dict[str, float] = {}
    for e in g.edges:
        if e.target == feature.id:
            inputs[drawn.get(e.source, e.source)] = inputs.get(drawn.get(e.source, e.source), 0.0) + e.weight
    strongest = max(inputs, key=lambda k: abs(inputs[k]))
    names = {n["id"]: n["name"] for n in data(g)["nodes"]}
    assert browser.evaluate(f"network.body.nodes[{json.dumps(feature.id)}].options.label").endswith("…")
    click_node(browser, feature.id)
    assert browser.evaluate("graphPage.state.selected") == feature.id
    panel = browser.evaluate("document.getElementById('panel').innerText")
    assert feature.label in panel and "influence" in panel and "Strongest inputs" in panel
    first = browser.evaluate(
        "[...document.querySelectorAll('#panel-body h4')].find((h) => h.textContent.startsWith('Strongest inputs'))"
        ".nextElementSibling.querySelector('a')"
        ".textContent"
    )
    assert first == names[strongest]
    browser.evaluate(
        "[...document.querySelectorAll('#panel-body h4')].find((h) => h.textContent.startsWith('Strongest inputs'))"
        ".nextElementSibling.querySelector('a').click()"
    )
    assert browser.evaluate("graphPage.state.selected") == strongest  # the link jumps to that node
    screenshot(browser, tmp_path / "crowded-selected.png")

    # the checkbox shows error nodes per position; the group opens from its panel
    assert browser.evaluate(VISIBLE) == visible_count(g, errors=False, groups_open=False)
    browser.evaluate("document.getElementById('show-errors').click()")
    assert browser.evaluate(VISIBLE) == visible_count(g, errors=True, groups_open=False)
    browser.evaluate("graphPage.select('group:trio')")
    open_group = "[...document.querySelectorAll('#panel-body button')].find((b) => /open/.test(b.textContent))"
    browser.evaluate(open_group + ".click()")
    assert browser.evaluate(VISIBLE) == visible_count(g, errors=True, groups_open=True)
    offline_and_clean(browser)


def transcoder_sized(n_rows: int = 18, n_pos: int = 15, n_features: int = 100, seed: int = 0) -> Graph:
    """A graph the size a replacement model with per-layer transcoders gives: n_rows feature rows, an error
    node at every row and position, half the features at the last position, edges from any earlier row to
    any later one (random weights: only its shape matters here)."""
    rng = random.Random(seed)
    words = "state capital city team basketball Lakers California Sacramento of in the is".split()
    hooks = [f"mlp_out.{i}" for i in range(n_rows)]
    tokens = ["<bos>"] + [" " + rng.choice(words) for _ in range(n_pos)]
    nodes = [GraphNode(token_id(p), "token", 0, None, p, None, tokens[p], 1.0, 0.0) for p in range(1, n_pos + 1)]
    features: set[tuple[int, int, int]] = set()
    while len(features) < n_features:  # (row, position, feature): several in a cell, half at the last position
        pos = n_pos if rng.random() < 0.5 else rng.randint(1, n_pos)
        features.add((rng.randint(1, n_rows), pos, rng.randrange(16384)))
    for row, pos, f in sorted(features):
        hook, label = hooks[row - 1], " ".join(rng.choices(words, k=rng.randint(1, 6)))
        nodes.append(
            GraphNode(
                feature_id(hook, pos, f), "feature", row, hook, pos, f, tokens[pos], 1.0, rng.gauss(0, 1), label=label
            )
        )
    for row in range(1, n_rows + 1):
        for pos in range(1, n_pos + 1):
            hook = hooks[row - 1]
            nodes.append(
                GraphNode(error_id(hook, pos), "error", row, hook, pos, None, tokens[pos], 1.0, rng.gauss(0, 0.3))
            )
    nodes.append(GraphNode(METRIC_ID, "metric", n_rows + 1, None, n_pos, None, tokens[-1], 1.7, 1.7))
    src, dst = [], []
    for j, t in enumerate(nodes):
        pool = [i for i, s in enumerate(nodes) if s.layer < t.layer and s.position <= t.position]
        for i in rng.sample(pool, min(len(pool), 30 if t.kind == "metric" else 6)):
            src.append(i)
            dst.append(j)
    weights = [rng.gauss(0, 1) for _ in src]
    return Graph.scored(
        prompt="".join(tokens[1:]), token_ids=list(range(n_pos + 1)), tokens=tokens, hooks=hooks,
        layers={h: i for i, h in enumerate(hooks)}, model={"name": "synthetic", "n_layers": n_rows},
        metric_info={"repr": "LogitDiff(' Sacramento' - ' Albany')", "value": 1.7}, full_nodes=nodes,
        src=torch.tensor(src), dst=torch.tensor(dst), weight=torch.tensor(weights, dtype=torch.float64),
    )  # fmt: skip


def test_transcoder_sized_graph_reads_without_overlap(browser, tmp_path):
    """18 feature rows, 270 error nodes, 100 features and edges that skip rows: still no overlap, with the
    error nodes one per row (as the page opens) and per position; edges that skip rows are curved."""
    g = transcoder_sized()
    kinds = [x.kind for x in g.nodes]
    assert kinds.count("error") == 270 and kinds.count("feature") == 100
    last = [x.layer for x in g.nodes if x.kind == "feature" and x.position == 15]
    assert max(last.count(r) for r in last) >= 4  # crowded cells at the last position
    path: Path = g.to_html(tmp_path / "transcoders.html")
    open_page(browser, path)
    assert browser.evaluate(VISIBLE) == visible_count(g, errors=False, groups_open=True)
    screenshot(browser, tmp_path / "transcoders.png")
    no_overlap(browser, ["", "graphPage.setErrors(true)"])
    screenshot(browser, tmp_path / "transcoders-errors.png")
    assert browser.evaluate("graphPage.shownEdges().filter((e) => e.smooth.enabled).length") > 0
    offline_and_clean(browser)


def test_replacement_graph_reads_without_overlap(browser, tmp_path):
    """A real replacement graph (per-layer transcoders on a tiny model, edges from any earlier layer to any
    later one, an error node per layer and position) pruned to its top features: no overlap, error rows
    collapsed at first, and edges that skip rows drawn."""
    from graphs.replacement import build_replacement_graph
    from tests.conftest import random_transcoders as transcoders

    m = tiny_model("gemma3")
    labels = lambda h, f: f"transcoder feature {f} at {h}"  # noqa: E731
    g = build_replacement_graph(m, transcoders(m), PROMPTS[0], LogitDiff(m, "sad", "happy"), labels=labels)
    g = g.prune(0.9, 0.98, max_feature_nodes=60)
    rows = {x.id: x.layer for x in g.nodes}
    assert any(rows[e.target] - rows[e.source] > 1 for e in g.edges)  # the graph has edges that skip rows
    path: Path = g.to_html(tmp_path / "replacement.html")
    open_page(browser, path)
    assert browser.evaluate(VISIBLE) == visible_count(g, errors=False, groups_open=True)
    no_overlap(browser, ["", "graphPage.setErrors(true)"])
    assert browser.evaluate("graphPage.shownEdges().filter((e) => e.smooth.enabled).length") > 0
    screenshot(browser, tmp_path / "replacement.png")
    offline_and_clean(browser)
