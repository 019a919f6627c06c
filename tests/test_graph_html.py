"""The HTML export in a real headless Chromium: it loads offline with no console error and no network
request, draws every node of the graph, shows a feature's tooltip, and leaves a screenshot.

Chromium is Debian's `chromium`, installed by the project's test set-up (`bash tests/setup.sh`, which .ci/run
calls). Where it is missing the test is skipped with the reason, except in CI (CI=true), where the set-up
must have installed it and a missing browser fails the test.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from attribution import LogitDiff
from graphs import build_graph, check
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


def test_html_loads_offline_and_draws_every_node(browser, tmp_path):
    m = tiny_model("gemma3")
    saes = {h: random_sae(m, h, seed=i) for i, h in enumerate(["resid_post.0", "resid_post.1", "resid_post.2"])}
    g = build_graph(m, saes, PROMPTS[0], LogitDiff(m, "sad", "happy"), labels=lambda h, f: f"<feature {f} & co>")
    g = g.prune(0.8, 0.98, max_feature_nodes=25)
    path: Path = g.to_html(tmp_path / "graph.html", check=check(m, saes, g))

    for domain in ("Runtime", "Log", "Network", "Page"):
        browser.send(f"{domain}.enable")
    browser.send("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1, mobile=False)
    browser.send("Page.navigate", url=path.as_uri())
    browser.wait_for("Page.loadEventFired")
    time.sleep(0.5)  # let vis-network draw

    assert browser.evaluate("network.body.data.nodes.length") == len(g.nodes)
    assert browser.evaluate("network.body.data.edges.length") == len(g.edges)
    assert browser.evaluate("Object.keys(network.body.nodes).length") >= len(g.nodes)  # drawn, not only data

    # hovering a feature shows its tooltip, with the label escaped rather than parsed as a tag
    feature = g.top(1)[0]
    xy = browser.evaluate(
        f"network.canvasToDOM(network.getPositions([{json.dumps(feature.id)}])[{json.dumps(feature.id)}])"
    )
    box = browser.evaluate(
        "(() => { const r = document.getElementById('mynetwork').getBoundingClientRect(); "
        "return {x: r.left, y: r.top}; })()"
    )
    for dx in (0, 1):
        browser.send("Input.dispatchMouseEvent", type="mouseMoved", x=box["x"] + xy["x"] + dx, y=box["y"] + xy["y"])
    time.sleep(0.6)
    tip = browser.evaluate("(document.querySelector('div.vis-tooltip') || {}).innerText || ''")
    assert feature.label in tip and "attribution" in tip

    shot = browser.send("Page.captureScreenshot", format="png")
    png = tmp_path / "graph.png"
    png.write_bytes(base64.b64decode(shot["data"]))
    assert png.stat().st_size > 10_000

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
