"""circuit-tracer's own graph viewer, offline, on our graph JSON, checked in headless Chromium.

    python -m bench.peers.circuit_tracer_viewer kobe.json [more.json ...] [--out /tmp/ct_viewer] [--serve]

circuit-tracer 0.5.0's frontend (frontend/assets in its wheel; `circuit_tracer.frontend.local_server.serve`)
loads its libraries from the network. index.html and feature-view.html load six scripts:

    Anthropic's site, 2025/attribution-graphs/static_js/lib/:
      hotserver-client-ws.js   its authors' live-reload client          -> dropped (nothing uses it)
      d3.js                    d3 v7                                     -> npm d3-collection@1.0.7 (d3.nest,
                                                                            which jetpack's nestBy calls),
                                                                            then npm d3@7.9.0, dist/d3.min.js
      jetpack_2024-07-20.js    d3-jetpack (.at/.st/appendMany, nestBy,  -> npm d3-jetpack@2.3.0,
                               conventions, attachTooltip, clamp)          build/d3-jetpack.cjs (see below)
      npy_v0.js                `npyjs.parse` for .npy files              -> not served (no package has it)
    a CDN of npm packages:
      dagre@0.8.5/dist/dagre.min.js  (the subgraph's "dagrefy" layout)   -> npm dagre@0.8.5, the same file
      pako@2.1.0/dist/pako.min.js    (.json.gz / .bin feature files)     -> npm pako@2.1.0, the same file

d3-jetpack 2.3.0's UMD build starts with `factory(global.d3 = {}, global.d3, ...)`, which would replace d3
rather than extend it; the copy served here says `global.d3 = global.d3 || {}` (as its 2.1.0 build did) and
is otherwise unchanged. Its nestBy calls d3.nest (d3-collection, which d3 v6 dropped), so d3-collection
loads first and d3 v7 after it (d3 v7's own d3.map wins over d3-collection's). The bundled
build/d3v7+jetpack.js is no substitute: it patches a second copy of d3-selection, so d3.select(...).at is
missing.

Not served, and what breaks without it: npy_v0.js only reads .npy files, which only the "addition" page loads
(the graph page never calls it); the live-reload client nothing. At run time the graph page fetches feature
examples when a feature is hovered or clicked (the right-hand "feature detail" panel): from the Hugging Face
hub repository named by the graph's `metadata.scan`, or ./features/<scan>/<index>.json through its
feature-file host, or <scan>/<index>.json when scan starts with "./". graphs.viewer_features writes our
feature indexes in that layout (top contexts, activation histogram and percentiles, frequency, logit-lens
tokens; labels as the nodes' clerps): the graph JSON with scan "./data/features/<slug>" and one file per
feature node, <data>/features/<slug>/<cantor(layer, index)>.json. Staged here when found (--features DIR, or
features/<slug>/ beside the graph file), into the data folder, the graph's scan pointed at them; without
them the panel stays empty offline, and the graph, its links, the node list and the subgraph draw anyway.

Layout, as circuit-tracer's server expects: the graph JSON files and graph-metadata.json ({"graphs":
[metadata, ...]}, what `circuit_tracer.frontend.utils.add_graph_metadata` writes) in one data folder served
under both /data/ and /graph_data/, the assets at /. Served by python's http.server on 127.0.0.1.

The check (default): headless Chromium with every host but 127.0.0.1 unresolvable opens index.html?slug=...,
waits for the link graph, counts its nodes (`text.node` in the link graph's SVG) against the JSON's, clicks
the first feature node, and where its feature file was staged waits for the feature-detail panel to draw its
examples and checks them against the file (as many example rows as the file has, each row's text its
tokens joined, one histogram bar per bin, the title's percentile and frequency), hovers the title so the
histogram shows, takes a screenshot (--out/<slug>.png) and lists console errors and requests that left the
machine. Chromium is Debian's `chromium`; npm fetches the packages once into --npm-cache.
"""

from __future__ import annotations

import argparse
import base64
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from graphs.viewer_features import FEATURES, SCAN

VENV = Path(os.environ.get("CT_VENV", "/work/ct-venv"))
NPM_CACHE = Path(os.environ.get("CT_VIEWER_NPM", "/tmp/ct-viewer-npm"))

# npm package -> (file in its tarball, name served under vendor/)
PACKAGES = {
    "d3-collection@1.0.7": ("package/dist/d3-collection.min.js", "d3-collection.js"),
    "d3@7.9.0": ("package/dist/d3.min.js", "d3.js"),
    "d3-jetpack@2.3.0": ("package/build/d3-jetpack.cjs", "jetpack.js"),
    "dagre@0.8.5": ("package/dist/dagre.min.js", "dagre.min.js"),
    "pako@2.1.0": ("package/dist/pako.min.js", "pako.min.js"),
}
# the tail of each remote script's URL -> the vendor/ files that replace it, in order ([]: dropped)
SCRIPTS = {
    "static_js/lib/hotserver-client-ws.js": [],
    "static_js/lib/d3.js": ["d3-collection.js", "d3.js"],
    "static_js/lib/jetpack_2024-07-20.js": ["jetpack.js", "jetpack-shim.js"],
    "static_js/lib/npy_v0.js": [],
    "dagre@0.8.5/dist/dagre.min.js": ["dagre.min.js"],
    "pako@2.1.0/dist/pako.min.js": ["pako.min.js"],
}
JETPACK_UMD = ("factory(global.d3 = {}, ", "factory(global.d3 = global.d3 || {}, ")
# what the site's jetpack build has and npm's lacks: conventions' c.drawAxis(svg = c.svg)
JETPACK_SHIM = """// ours, not circuit-tracer's: the method form of d3.drawAxis that its viewer calls
(function () {
  var conventions = d3.conventions
  d3.conventions = function (c) {
    c = conventions(c)
    c.drawAxis = function (svg) { return d3.drawAxis(Object.assign({}, c, {svg: svg || c.svg})) }
    return c
  }
})()
"""
REMOTE_SCRIPT = re.compile(r"""<script src=['"](https?://[^'"]+)['"]></script>\n?""")


# --------------------------------------------------------------------------------------------------
# Staging: assets with local libraries, the graphs in circuit-tracer's data layout
# --------------------------------------------------------------------------------------------------
def find_assets(venv: Path = VENV) -> Path:
    """circuit-tracer's frontend/assets folder, as installed in the peer's venv."""
    py = venv / "bin" / "python"
    code = "import circuit_tracer, pathlib; print(pathlib.Path(circuit_tracer.__file__).parent / 'frontend/assets')"
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True) if py.exists() else None
    if r is None or r.returncode != 0:
        raise SystemExit(
            f"circuit-tracer is not importable from {venv}: create it with "
            "`python -m bench.peers.circuit_tracer_side_by_side --install`, or pass --assets"
        )
    return Path(r.stdout.strip())


def vendor(cache: Path = NPM_CACHE) -> dict[str, Path]:
    """The local library files (vendor name -> path), packed by npm once into `cache`."""
    cache.mkdir(parents=True, exist_ok=True)
    out = {}
    for spec, (member, name) in PACKAGES.items():
        target = cache / name
        if not target.exists():
            tgz = cache / (spec.replace("@", "-", 1).replace("/", "-") + ".tgz")
            if not tgz.exists():
                if shutil.which("npm") is None:
                    raise SystemExit("npm is missing: apt-get install -y npm (it packs d3, d3-jetpack, dagre, pako)")
                subprocess.run(["npm", "pack", spec, "--pack-destination", str(cache)], check=True, capture_output=True)
            with tarfile.open(tgz) as tar:
                text = tar.extractfile(member).read().decode()
            if name == "jetpack.js":
                if text.count(JETPACK_UMD[0]) != 1:
                    raise SystemExit(f"{spec}: its UMD header changed; look at {member} before serving it")
                text = text.replace(*JETPACK_UMD)
            target.write_text(text)
        out[name] = target
    return out


def rewrite(html: str, depth: int = 0) -> tuple[str, list[str]]:
    """`html` with every remote <script> replaced by its vendor/ copy or dropped; also the URLs dropped.
    `depth`: the page's folder depth under the site (addition/index.html: 1), so that it finds vendor/.
    A remote script not in SCRIPTS stops the staging (a newer frontend needs a look first)."""
    dropped = []

    def sub(m: re.Match) -> str:
        url = m.group(1)
        tail = next((t for t in SCRIPTS if url.endswith("/" + t)), None)
        if tail is None:
            raise SystemExit(f"unknown remote script {url}: add it to SCRIPTS in {__file__}")
        if not SCRIPTS[tail]:
            dropped.append(url)
        return "".join(f"<script src='{'../' * depth}vendor/{name}'></script>\n" for name in SCRIPTS[tail])

    return REMOTE_SCRIPT.sub(sub, html), dropped


def feature_folder(graph: Path, slug: str, features: Path | None = None) -> Path | None:
    """The folder of the graph's feature files (<cantor>.json, graphs.viewer_features): `features`/<slug>
    or `features`/features/<slug> when given, else features/<slug> beside the graph file; None if absent."""
    tries = [features / slug, features / FEATURES / slug] if features else [Path(graph).parent / FEATURES / slug]
    return next((f for f in tries if f.is_dir() and any(f.glob("*.json"))), None)


def stage(graphs: list[Path], out: Path, assets: Path, cache: Path = NPM_CACHE, features: Path | None = None) -> dict:
    """out/site: the assets with local libraries; out/data: the graphs, graph-metadata.json and the graphs'
    feature files (data/features/<slug>/, found by feature_folder; the staged graph's scan points at them).
    Returns {"site", "data", "slugs", "dropped", "features"} (dropped: the remote script URLs left out;
    features: {slug: {"from", "files", "scan_was"}} for the graphs whose feature files were staged)."""
    site, data = out / "site", out / "data"
    shutil.rmtree(site, ignore_errors=True)
    shutil.copytree(assets, site)
    (site / "vendor").mkdir()
    for name, path in vendor(cache).items():
        shutil.copy(path, site / "vendor" / name)
    (site / "vendor" / "jetpack-shim.js").write_text(JETPACK_SHIM)
    dropped: set[str] = set()
    for page in site.rglob("*.html"):
        text, gone = rewrite(page.read_text(), len(page.relative_to(site).parts) - 1)
        page.write_text(text)
        dropped.update(gone)
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    metas, staged = [], {}
    for path in graphs:
        graph = json.loads(Path(path).read_text())
        slug = graph["metadata"]["slug"]
        found = feature_folder(Path(path), slug, features)
        if found is not None:
            shutil.copytree(found, data / FEATURES / slug)
            was, graph["metadata"]["scan"] = graph["metadata"]["scan"], SCAN.format(slug=slug)
            staged[slug] = {"from": str(found), "files": len(list(found.glob("*.json"))), "scan_was": was}
        (data / f"{slug}.json").write_text(json.dumps(graph))
        metas.append(graph["metadata"])
    (data / "graph-metadata.json").write_text(json.dumps({"graphs": metas}, indent=1))
    slugs = [m["slug"] for m in metas]
    return {"site": site, "data": data, "slugs": slugs, "dropped": sorted(dropped), "features": staged}


class Handler(http.server.SimpleHTTPRequestHandler):
    """The assets at /, the data folder under /data/ and /graph_data/ (circuit-tracer's local_server does the
    same mapping); quiet."""

    def __init__(self, *args, data: Path, **kwargs):
        self.data = data
        super().__init__(*args, **kwargs)

    def translate_path(self, path: str) -> str:
        for prefix in ("/data/", "/graph_data/"):
            if path.startswith(prefix):
                return str(self.data / path[len(prefix) :].split("?")[0])
        return super().translate_path(path)

    def log_message(self, *args) -> None:
        pass


def serve(site: Path, data: Path, port: int = 0) -> http.server.ThreadingHTTPServer:
    """A server on 127.0.0.1:`port` (0: any free port) in a daemon thread; .server_address[1] is the port."""
    handler = functools.partial(Handler, directory=str(site), data=data)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# --------------------------------------------------------------------------------------------------
# The check in headless Chromium
# --------------------------------------------------------------------------------------------------
def _chromium(profile: Path, width: int, height: int):
    from tests.test_graph_html import DevTools  # the project's minimal DevTools-protocol client

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise SystemExit("chromium not found: apt-get install -y chromium")
    cmd = ["nice", "-n", "10", exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run"]
    cmd += ["--no-default-browser-check", "--remote-debugging-port=0", "--remote-allow-origins=*"]
    cmd += ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", f"--user-data-dir={profile}"]
    cmd += [f"--window-size={width},{height}", "about:blank"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = profile / "DevToolsActivePort"
    end = time.monotonic() + 60
    while not port_file.exists() or not port_file.read_text().strip():
        if time.monotonic() > end or proc.poll() is not None:
            proc.kill()
            raise SystemExit("chromium did not start its DevTools endpoint")
        time.sleep(0.1)
    port = int(port_file.read_text().split()[0])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
        page = next(t for t in json.load(r) if t["type"] == "page")
    return proc, DevTools(page["webSocketDebuggerUrl"])


def _errors(events: list[dict]) -> list[str]:
    out = []
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            out.append("exception: " + d.get("exception", {}).get("description", d.get("text", "")).split("\n")[0])
        elif m == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
            out.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
        elif (
            m == "Log.entryAdded"
            and p["entry"]["level"] == "error"
            and not p["entry"].get("url", "").endswith("/favicon.ico")
        ):  # the assets have no favicon: the browser's own request, not the viewer's
            out.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}".strip())
    return out


# what the feature-detail panel drew for the clicked feature (feature_examples/init-feature-examples-list.js:
# one div.ctx-container per example in .feature-example-list, its tokens as span.token in div.text-wrapper,
# equal neighbours merged; render-act-histogram.js: one rect.bar per bin in .histogram-placeholder)
PANEL = """(() => {
  const p = document.querySelector('.feature-detail')
  if (!p) return null
  const all = s => [...p.querySelectorAll(s)]
  return {
    rows: all('.feature-example-list .ctx-container').length,
    texts: all('.feature-example-list .ctx-container .text-wrapper').map(e => e.textContent),
    tokens: all('.feature-example-list span.token').length,
    groups: all('.feature-example-list .quantile-title').map(e => e.textContent.trim()),
    predictions: all('.feature-example-logits span.token').length,
    bars: all('.histogram-placeholder rect.bar').length,
    title: ((p.querySelector('.feature-title') || {}).innerText || '').trim(),
    label: ((p.querySelector('.pp-clerp') || {}).innerText || '').trim(),
  }
})()"""


def _examples(tools, expected: dict, timeout: float = 20) -> dict:
    """Wait for the panel to draw the clicked feature's examples, then compare them with its file."""
    drawn, end = tools.evaluate(PANEL) or {}, time.monotonic() + timeout
    while time.monotonic() < end and not (drawn.get("rows") and drawn.get("bars") and "pct" in drawn["title"]):
        time.sleep(0.25)
        drawn = tools.evaluate(PANEL) or {}
    examples = [e for q in expected["examples_quantiles"] for e in q["examples"]]
    want = ["".join(e["tokens"]) for e in examples]
    return {
        **drawn,
        "texts": drawn.get("texts", [])[:3],
        "rows_in_file": len(examples),
        "tokens_in_file": sum(len(e["tokens"]) for e in examples),
        "bins_in_file": len(expected["histogram"]),
        "texts_match": drawn.get("texts") == want,
        "ok": bool(examples)
        and drawn.get("rows") == len(examples)
        and drawn.get("texts") == want
        and drawn.get("bars") == len(expected["histogram"])
        and "pct" in drawn.get("title", "")
        and "Freq:" in drawn.get("title", ""),
    }


def _mouse(tools, x: float, y: float, click: bool = True) -> None:
    kinds = ("mouseMoved", "mousePressed", "mouseReleased") if click else ("mouseMoved",)
    for kind in kinds:
        extra = {"button": "left", "clickCount": 1} if kind != "mouseMoved" else {}
        tools.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, **extra)


def check(
    url: str,
    n_nodes: int,
    png: Path,
    width: int = 1600,
    height: int = 1000,
    click: bool = True,
    features: Path | None = None,
) -> dict:
    """Open `url` in headless Chromium and report what the viewer drew (see the module docstring).
    features: the staged folder of this graph's feature files; then the clicked feature's examples are
    checked against its file (result["clicked"]["examples"], with "ok")."""
    with tempfile.TemporaryDirectory() as profile:
        proc, tools = _chromium(Path(profile), width, height)
        try:
            for domain in ("Runtime", "Log", "Network", "Page"):
                tools.send(f"{domain}.enable")
            size = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
            tools.send("Emulation.setDeviceMetricsOverride", **size)
            tools.send("Page.navigate", url=url)
            tools.wait_for("Page.loadEventFired")
            count = "document.querySelectorAll('.link-graph svg text.node').length"
            drawn, end = 0, time.monotonic() + 60
            while time.monotonic() < end:
                drawn = tools.evaluate(count) or 0
                if drawn:
                    break
                time.sleep(0.25)
            time.sleep(1.0)  # the subgraph's force layout settles
            loaded = len(_errors(tools.events))
            clicked = None
            if click and drawn:
                # the first feature in the node list's order is as good as any: click it, as a user would
                xy = tools.evaluate(
                    "(() => { const n = [...document.querySelectorAll('.link-graph svg text.node')]"
                    ".find(e => e.__data__ && e.__data__.feature_type == 'cross layer transcoder');"
                    " if (!n) return null; const r = n.getBoundingClientRect();"
                    " return {x: r.x + r.width / 2, y: r.y + r.height / 2, id: n.__data__.nodeId,"
                    " feature: n.__data__.featureIndex}; })()"
                )
                if xy:
                    _mouse(tools, xy["x"], xy["y"])
                    time.sleep(1.5)
                    clicked = {
                        "node": xy["id"],
                        "feature": xy["feature"],
                        "detail_title": tools.evaluate(
                            "(document.querySelector('.feature-detail .feature-title') || {}).innerText || ''"
                        ),
                    }
                    file = features / f"{xy['feature']}.json" if features else None
                    if file is not None:
                        clicked["feature_file"] = str(file)
                        clicked["examples"] = _examples(tools, json.loads(file.read_text()))
                        # the pointer onto the panel's title: the activation histogram shows, the click stays
                        title = tools.evaluate(
                            "(() => { const t = document.querySelector('.feature-detail .feature-title');"
                            " if (!t) return null; const r = t.getBoundingClientRect();"
                            " return {x: r.x + 20, y: r.y + r.height / 2}; })()"
                        )
                        if title:
                            _mouse(tools, title["x"], title["y"], click=False)
                            time.sleep(0.5)
            shot = tools.send("Page.captureScreenshot", format="png")
            png.parent.mkdir(parents=True, exist_ok=True)
            png.write_bytes(base64.b64decode(shot["data"]))
            requests = [
                e["params"]["request"]["url"] for e in tools.events if e.get("method") == "Network.requestWillBeSent"
            ]
            feature_requests = {  # every feature file the page asked for, with the status it got
                e["params"]["response"]["url"]: e["params"]["response"]["status"]
                for e in tools.events
                if e.get("method") == "Network.responseReceived" and "/features/" in e["params"]["response"]["url"]
            }
            errors = _errors(tools.events)
            return {
                "url": url,
                "nodes_in_json": n_nodes,
                "nodes_drawn": drawn,
                "subgraph_nodes": tools.evaluate("document.querySelectorAll('.subgraph .supernode-container').length"),
                "errors_on_load": errors[:loaded],
                "errors_after_click": errors[loaded:],
                "clicked": clicked,
                "feature_requests": feature_requests,
                "remote_requests": sorted({u for u in requests if not u.startswith(("http://127.0.0.1", "data:"))}),
                "screenshot": str(png),
            }
        finally:
            tools.ws.close()
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("graphs", nargs="+", help="graph JSON files written by Graph.to_json (slug: metadata.slug)")
    ap.add_argument("--out", default="/tmp/ct_viewer", help="staging folder and screenshots (default %(default)s)")
    ap.add_argument("--venv", default=str(VENV), help="the peer's venv, to find its assets (default %(default)s)")
    ap.add_argument("--assets", default=None, help="circuit-tracer's frontend/assets folder (default: the venv's)")
    ap.add_argument("--npm-cache", default=str(NPM_CACHE), help="where npm packs the libraries (default %(default)s)")
    ap.add_argument(
        "--features",
        default=None,
        help="folder of the graphs' feature files, <slug>/<feature>.json (graphs.viewer_features; default: "
        "features/<slug>/ beside each graph file, when there)",
    )
    ap.add_argument("--serve", action="store_true", help="serve until Ctrl-C instead of checking in Chromium")
    ap.add_argument("--port", type=int, default=0, help="port (default: any free one; 8032 is circuit-tracer's)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    assets = Path(args.assets) if args.assets else find_assets(Path(args.venv))
    features = Path(args.features) if args.features else None
    staged = stage([Path(g) for g in args.graphs], out, assets, Path(args.npm_cache), features)
    server = serve(staged["site"], staged["data"], args.port)
    port = server.server_address[1]
    print(f"serving {staged['site']} (data {staged['data']}) at http://127.0.0.1:{port}/")
    print("remote scripts left out:", *staged["dropped"], sep="\n  ")
    for slug in staged["slugs"]:
        found = staged["features"].get(slug)
        print(
            f"{slug}: {found['files']} feature files from {found['from']}"
            if found
            else f"{slug}: no feature files (write them with graphs.viewer_features.write_viewer_features)"
        )
    if args.serve:
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0
    results = []
    for path, slug in zip(args.graphs, staged["slugs"]):
        n = len(json.loads(Path(path).read_text())["nodes"])
        folder = staged["data"] / FEATURES / slug if slug in staged["features"] else None
        r = check(f"http://127.0.0.1:{port}/index.html?slug={slug}", n, out / f"{slug}.png", features=folder)
        results.append(r)
        print(json.dumps(r, indent=1))
    server.shutdown()
    summary = {"dropped": staged["dropped"], "features": staged["features"], "results": results}
    (out / "check.json").write_text(json.dumps(summary, indent=1))
    ok = all(r["nodes_drawn"] > 0 and not r["errors_on_load"] for r in results)
    # where a graph's feature files were staged, its clicked feature must show its examples, without errors
    ok &= all(
        (r["clicked"] or {}).get("examples", {}).get("ok") and not r["errors_after_click"]
        for r, slug in zip(results, staged["slugs"])
        if slug in staged["features"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main())
