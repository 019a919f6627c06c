"""Graphs side by side with circuit-tracer 0.5.0: its venv, its schema check, and its half of the run.

    python -m bench.peers.circuit_tracer_side_by_side --install                  # create the peer's venv
    python -m bench.peers.circuit_tracer_side_by_side --validate kobe.json ...   # our graph JSON vs its models
    python -m bench.peers.circuit_tracer_side_by_side --random [--out DIR]       # its attribute() on random transcoders
    python -m bench.peers.circuit_tracer_side_by_side --transcoders DIR [--out DIR]

circuit-tracer runs in its own virtualenv (default /work/ct-venv, or $CT_VENV), never in the project's
environment: it pins transformers <= 4.57.3 and pulls transformer-lens. The recipe (REQUIREMENTS):
`python -m venv VENV && VENV/bin/pip install torch==2.13.0 circuit-tracer==0.5.0 nnsight==0.6.1
"transformers<=4.57.3"`; torch must come as its CPU wheel (2.13.0+cpu; where pip's configured index offers
the CUDA build instead, install torch from the CPU wheel index first), and a venv that pulled nvidia-*,
triton or cuda packages is refused. nnsight is pinned to 0.6.1 because 0.8 moved the `Barrier` that
circuit-tracer 0.5.0 imports. --install creates the venv if it is missing or its pins differ, and does
nothing when they hold.

--validate: each file is validated with circuit-tracer's own pydantic models
(`circuit_tracer.frontend.graph_models.Model`) in its venv, and their JSON schema is compared with our
mirror in graphs/schema.py (field by field). Prints one line per file and exits 1 on any failure.

The run (its half of a side by side): in the venv, the default model gemma-3-270m from our converted folder
(~/.cache/attribution/models/gemma-3-270m, read only; --out/model links its files, with a config.json that
transformers 4.57 reads: see peer_model_folder) becomes an nnsight `ReplacementModel` with a
`TranscoderSet` read from a circuit-tracer folder (config.yaml: model_kind transcoder_set,
feature_input_hook, feature_output_hook, transcoders: [per-layer .safetensors with W_enc [d_sae, d_model],
W_dec [d_sae, d_model], b_enc, b_dec, optional W_skip / activation_function.threshold]; relative paths
are taken from the folder). circuit-tracer's loader knows ReLU and JumpReLU only: a config key `k` (an
int, or one per layer) makes every transcoder's activation circuit-tracer's own `TopK(k)` after loading
(note: its TopK keeps the k largest pre-activations whatever their sign). --random writes such a folder of
random TopK transcoders for all 18 layers (d_sae 256) to try the pipeline until real ones are exported.

`circuit_tracer.attribute(prompt, model, attribution_targets=[CustomTarget("logit diff", 1.0, vec)],
max_feature_nodes, batch_size)` attributes the logit difference: vec = W_U[good] - W_U[bad], injected at
the final norm's output, so the target is exactly logit(good) - logit(bad) (gemma-3-270m has no final
softcap; circuit-tracer demeans only the token targets it builds itself, and demeaning cancels in a
difference anyway). Timed (wall clock) with the process's peak RSS over the call (VmHWM, reset just before
through /proc/self/clear_refs; the loaded model and transcoders count, so the RSS just before is kept too).
Then `compute_graph_scores` (replacement and completeness) on the unpruned graph and on the pruned one:
`prune_graph(node_threshold, edge_threshold)`'s masks applied to the adjacency matrix (pruned nodes' rows
and columns and pruned edges set to zero, the node layout unchanged).

Written to --out (default /tmp/ct-side-by-side):
  graph.safetensors  adjacency [n, n] (row = target, column = source, circuit-tracer's order: features,
                     errors (layer-major, n_layers x n_pos), tokens, logits), features [n_features, 3]
                     (layer, position, index of each feature node), feature_activations [n_features],
                     errors [n_layers * n_pos, 2] (layer, position), input_tokens [n_pos], logit_vectors
                     [n_logits, d_model], logit_probabilities, node_mask, edge_mask [n, n], cumulative_scores
                     (prune_graph's), active_features [n_active, 3] and activation_values (every active one)
  result.json        prompt, tokens, target, layout (counts and offsets), scores (unpruned, pruned),
                     timings, peak memory, the model's own logit difference, settings, versions
  graph/ct_<slug>.json  its own frontend JSON (create_graph_files) and graph-metadata.json, for its viewer
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

VENV = Path(os.environ.get("CT_VENV", "/work/ct-venv"))
REQUIREMENTS = ["torch==2.13.0", "circuit-tracer==0.5.0", "nnsight==0.6.1", "transformers<=4.57.3"]
PINS = {"torch": "2.13.0", "circuit-tracer": "0.5.0", "nnsight": "0.6.1"}  # exact; transformers: <= 4.57.3
MODEL_DIR = Path.home() / ".cache" / "attribution" / "models" / "gemma-3-270m"
PROMPT = "Fact: The capital of the state where Kobe Bryant played basketball is"
GOOD, BAD = " Sacramento", " Albany"
OUT = Path("/tmp/ct-side-by-side")


# --------------------------------------------------------------------------------------------------
# The venv
# --------------------------------------------------------------------------------------------------
def venv_problems(venv: Path) -> list[str]:
    """What is wrong with the peer's venv for this bench ([]: nothing)."""
    py = venv / "bin" / "python"
    if not py.exists():
        return [f"{py} does not exist"]
    code = (
        "import importlib.metadata as m, json; d = {x.metadata['Name'].lower(): x.version for x in m.distributions()};"
        "print(json.dumps(d))"
    )
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
    if r.returncode != 0:
        return [f"{py} does not run: {r.stderr.strip()[-300:]}"]
    have = json.loads(r.stdout)
    out = [f"{p} {have.get(p)} (wants {v})" for p, v in PINS.items() if have.get(p, "").split("+")[0] != v]
    tf = have.get("transformers")
    if tf is None or tuple(int(re.match(r"\d*", x).group() or 0) for x in tf.split(".")[:3]) > (4, 57, 3):
        out.append(f"transformers {tf} (wants <= 4.57.3)")
    cuda = sorted(p for p in have if p.startswith(("nvidia-", "triton", "cuda")))
    if cuda:
        out.append(f"CUDA packages {cuda}: reinstall torch's CPU wheel (2.13.0+cpu)")
    return out


def ensure_venv(venv: Path = VENV, install: bool = False) -> Path | None:
    """The peer venv's python when its pins hold; with `install`, create it / pip install REQUIREMENTS first
    (idempotent: nothing happens when the pins already hold). None, after saying why, otherwise."""
    problems = venv_problems(venv)
    if problems and install:
        if not (venv / "bin" / "python").exists():
            subprocess.check_call([sys.executable, "-m", "venv", str(venv)])
        subprocess.check_call([str(venv / "bin" / "python"), "-m", "pip", "install", *REQUIREMENTS])
        problems = venv_problems(venv)
    if problems:
        print(f"the circuit-tracer venv {venv} is not usable:", *problems, sep="\n  ", file=sys.stderr)
        print(
            f"create it with `python -m bench.peers.circuit_tracer_side_by_side --install` "
            f"(or: python -m venv {venv} && "
            f"{venv}/bin/pip install {' '.join(repr(r) if '<' in r else r for r in REQUIREMENTS)})",
            file=sys.stderr,
        )
        return None
    return venv / "bin" / "python"


def _run_worker(py: Path, *args: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": ""}
    subprocess.check_call([str(py), str(Path(__file__).resolve()), "--worker", *args], env=env)


# --------------------------------------------------------------------------------------------------
# The peer's side. Runs in its venv: standard library, torch and circuit-tracer only.
# --------------------------------------------------------------------------------------------------
def worker_validate(files: list[str], out: str) -> None:
    from circuit_tracer import __version__
    from circuit_tracer.frontend.graph_models import Metadata, Model, Node
    from pydantic import ValidationError

    rows = []
    for f in files:
        data = json.loads(Path(f).read_text())
        row = {"file": f}
        try:
            m = Model.model_validate(data)
            row.update(ok=True, nodes=len(m.nodes), links=len(m.links))
            row["extra_metadata_keys"] = sorted(set(data["metadata"]) - set(Metadata.model_fields))
            row["extra_node_keys"] = sorted({k for n in data["nodes"] for k in n} - set(Node.model_fields))
            row["feature_types"] = sorted({n.feature_type for n in m.nodes})
        except ValidationError as exc:
            row.update(ok=False, error=str(exc).splitlines()[:6])
        rows.append(row)
    result = {"circuit_tracer": __version__, "schema": Model.model_json_schema(), "files": rows}
    Path(out).write_text(json.dumps(result, indent=1))


def _peak_rss_reset() -> bool:
    """Reset the process's RSS high-water mark (Linux >= 4.0); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_mb(key: str = "VmHWM") -> float:
    """The process's peak (VmHWM) or current (VmRSS) resident memory in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_transcoders(folder: Path, dtype):
    """A circuit-tracer TranscoderSet from `folder` (see the module docstring), eager, on the CPU; TopK(k)
    as the activation where config.yaml has `k`."""
    import torch
    import yaml
    from circuit_tracer.transcoder.activation_functions import TopK
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    if cfg.get("model_kind", "transcoder_set") != "transcoder_set":
        raise SystemExit(f"{folder}: model_kind {cfg['model_kind']!r}; this bench reads transcoder_set folders")
    files = cfg.get("transcoders") or sorted(
        (p.name for p in folder.glob("layer_*.safetensors")), key=lambda n: int(n[6:-12])
    )
    paths = {i: str(p if Path(p).is_absolute() else folder / p) for i, p in enumerate(files)}
    tcs = load_transcoder_set(
        paths,
        scan=cfg.get("scan", folder.name),
        feature_input_hook=cfg["feature_input_hook"],
        feature_output_hook=cfg["feature_output_hook"],
        device=torch.device("cpu"),
        dtype=dtype,
        lazy_encoder=False,
        lazy_decoder=False,
    )
    k = cfg.get("k", (cfg.get("attribution") or {}).get("k"))  # ours: save_transcoders records it there
    if k is not None:
        ks = k if isinstance(k, list) else [k] * len(tcs)
        for tc, kk in zip(tcs, ks):
            tc.activation_function = TopK(int(kk))
    return tcs, cfg


def worker_attribute(args) -> None:
    import circuit_tracer
    import nnsight
    import torch
    import transformers
    from circuit_tracer import ReplacementModel, attribute
    from circuit_tracer.attribution.targets import CustomTarget
    from circuit_tracer.graph import Graph, compute_graph_scores, prune_graph
    from safetensors.torch import save_file

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    t = time.perf_counter()
    tcs, tc_cfg = load_transcoders(Path(args.transcoders), torch.float32)
    timings["load_transcoders_s"] = time.perf_counter() - t
    t = time.perf_counter()
    model = ReplacementModel.from_pretrained_and_transcoders(
        str(args.model), tcs, backend="nnsight", device=torch.device("cpu"), dtype=torch.float32
    )
    timings["load_model_s"] = time.perf_counter() - t
    peak_load = _rss_mb()
    tok = model.tokenizer
    ids = [tok.encode(w, add_special_tokens=False) for w in (args.good, args.bad)]
    if any(len(i) != 1 for i in ids):
        raise SystemExit(f"{args.good!r} and {args.bad!r} must be one token each, got {ids}")
    good, bad = ids[0][0], ids[1][0]
    W_U = model.unembed_proj  # [vocab, d_model]
    vec = (W_U[good] - W_U[bad]).detach().float()
    input_ids = model.ensure_tokenized(args.prompt)
    with torch.no_grad():  # the model's own logits (the HF module, no transcoders spliced)
        logits = model._model(input_ids[None]).logits[0, -1].float()
    probs = logits.softmax(-1)

    reset = _peak_rss_reset()
    before = _rss_mb("VmRSS")
    t = time.perf_counter()
    graph = attribute(
        args.prompt,
        model,
        attribution_targets=[CustomTarget("logit diff", 1.0, vec)],
        max_feature_nodes=args.max_feature_nodes,
        batch_size=args.batch_size,
        verbose=args.verbose,
    )
    timings["attribute_s"] = time.perf_counter() - t
    peak_attr = _rss_mb()

    t = time.perf_counter()
    node_mask, edge_mask, cumulative = prune_graph(graph, args.node_threshold, args.edge_threshold)
    timings["prune_s"] = time.perf_counter() - t
    t = time.perf_counter()
    unpruned = compute_graph_scores(graph)
    keep = edge_mask & node_mask[:, None] & node_mask[None, :]
    pruned_graph = Graph(
        input_string=graph.input_string,
        input_tokens=graph.input_tokens,
        active_features=graph.active_features,
        adjacency_matrix=graph.adjacency_matrix * keep,
        cfg=graph.cfg,
        selected_features=graph.selected_features,
        activation_values=graph.activation_values,
        logit_targets=graph.logit_targets,
        logit_probabilities=graph.logit_probabilities,
        scan=graph.scan,
        vocab_size=graph.vocab_size,
    )
    pruned = compute_graph_scores(pruned_graph)
    timings["scores_s"] = time.perf_counter() - t

    n_layers, n_pos = graph.cfg.n_layers, graph.n_pos
    n_features = len(graph.selected_features)
    n_errors, n_logits = n_layers * n_pos, len(graph.logit_targets)
    features = graph.active_features[graph.selected_features]
    layer_pos = torch.cartesian_prod(torch.arange(n_layers), torch.arange(n_pos))
    n_kept = int(node_mask[:n_features].sum())
    tensors = {
        "adjacency": graph.adjacency_matrix.float().contiguous(),
        "features": features.long().contiguous(),
        "feature_activations": graph.activation_values[graph.selected_features].float().contiguous(),
        "errors": layer_pos.long().contiguous(),
        "input_tokens": graph.input_tokens.long().cpu().contiguous(),
        "logit_vectors": vec[None].contiguous(),
        "logit_probabilities": graph.logit_probabilities.float().cpu().contiguous(),
        "node_mask": node_mask.contiguous(),
        "edge_mask": edge_mask.contiguous(),
        "cumulative_scores": cumulative.float().contiguous(),
        "active_features": graph.active_features.long().contiguous(),
        "activation_values": graph.activation_values.float().contiguous(),
    }
    save_file(tensors, str(out / "graph.safetensors"))
    result = {
        "peer": f"circuit-tracer {circuit_tracer.__version__}",
        "prompt": args.prompt,
        "tokens": [tok.decode([i]) for i in graph.input_tokens.tolist()],
        "target": {
            "kind": "CustomTarget logit diff (vec = W_U[good] - W_U[bad], not demeaned)",
            "good": args.good,
            "bad": args.bad,
            "good_id": good,
            "bad_id": bad,
            "vec_norm": float(vec.norm()),
            "model_logit_diff": float(logits[good] - logits[bad]),
            "model_p_good": float(probs[good]),
            "model_p_bad": float(probs[bad]),
        },
        "layout": {
            "n_nodes": int(graph.adjacency_matrix.shape[0]),
            "n_features": n_features,
            "n_active_features": int(graph.active_features.shape[0]),
            "n_errors": n_errors,
            "n_tokens": n_pos,
            "n_logits": n_logits,
            "offsets": {"features": 0, "errors": n_features, "tokens": n_features + n_errors},
            "logits_from": n_features + n_errors + n_pos,
            "n_layers": n_layers,
        },
        "scores": {
            "unpruned": {"replacement": unpruned[0], "completeness": unpruned[1]},
            "pruned": {"replacement": pruned[0], "completeness": pruned[1]},
            "pruned_feature_nodes": n_kept,
            "pruned_nodes": int(node_mask.sum()),
            "pruned_edges": int(keep.sum()),
            "edges_nonzero": int((graph.adjacency_matrix != 0).sum()),
        },
        "timings": timings,
        "memory": {
            "peak_rss_after_loading_mb": peak_load,
            "rss_before_attribute_mb": before,
            "peak_rss_attribute_mb": peak_attr,
            "peak_reset_before_attribute": reset,
        },
        "settings": {
            "max_feature_nodes": args.max_feature_nodes,
            "batch_size": args.batch_size,
            "node_threshold": args.node_threshold,
            "edge_threshold": args.edge_threshold,
            "threads": torch.get_num_threads(),
            "model": str(args.model),
            "transcoders": str(args.transcoders),
            "transcoder_config": tc_cfg,
            "dtype": "float32",
            "backend": "nnsight",
        },
        "versions": {
            "circuit_tracer": circuit_tracer.__version__,
            "nnsight": nnsight.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
        "load_average": os.getloadavg(),
        "datetime": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if args.graph_json:
        from circuit_tracer.utils.create_graph_files import create_graph_files

        create_graph_files(
            graph,
            "ct_" + args.slug,
            str(out / "graph"),
            scan=graph.scan or "custom",
            node_threshold=args.node_threshold,
            edge_threshold=args.edge_threshold,
        )
    (out / "result.json").write_text(json.dumps(result, indent=1))


# --------------------------------------------------------------------------------------------------
# Our side, in the project's environment
# --------------------------------------------------------------------------------------------------
def write_random_transcoders(
    folder: Path,
    n_layers: int = 18,
    d_model: int = 640,
    d_sae: int = 256,
    k: int | None = 16,
    seed: int = 0,
    feature_input_hook: str = "mlp.hook_in",
    feature_output_hook: str = "hook_mlp_out",
) -> Path:
    """A circuit-tracer transcoder folder of random weights (config.yaml + layer_<i>.safetensors), to try the
    pipeline: encoder rows of unit norm, decoder rows of norm 0.1, no biases beyond a small b_enc."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    names = []
    for layer in range(n_layers):
        W_enc = torch.randn(d_sae, d_model, generator=g)
        W_dec = torch.randn(d_sae, d_model, generator=g)
        tensors = {
            "W_enc": (W_enc / W_enc.norm(dim=1, keepdim=True)).contiguous(),
            "W_dec": (0.1 * W_dec / W_dec.norm(dim=1, keepdim=True)).contiguous(),
            "b_enc": (0.01 * torch.randn(d_sae, generator=g)).contiguous(),
            "b_dec": torch.zeros(d_model),
        }
        names.append(f"layer_{layer}.safetensors")
        save_file(tensors, str(folder / names[-1]))
    lines = [
        "# random weights for trying the pipeline (bench/peers/circuit_tracer_side_by_side.py --random)",
        "model_kind: transcoder_set",
        f"feature_input_hook: {feature_input_hook}",
        f"feature_output_hook: {feature_output_hook}",
        f"scan: random-{d_sae}-seed{seed}",
        *([f"k: {k}"] if k else []),
        "transcoders:",
        *(f"  - {n}" for n in names),
    ]
    (folder / "config.yaml").write_text("\n".join(lines) + "\n")
    return folder


def peer_model_folder(src: Path, dst: Path) -> Path:
    """`src` (read only) as transformers 4.57 reads it: `dst` links every file of `src` but config.json, which it
    rewrites: our converted folders are saved by transformers 5, whose `"quantization_config": null` breaks
    4.57's config (and circuit-tracer's dequantize line), and whose `rope_parameters` 4.57 does not read
    (it takes rope_theta for full attention and rope_local_base_freq for sliding attention instead)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name != "config.json" and not (dst / f.name).exists():
            (dst / f.name).symlink_to(f.resolve())
    cfg = json.loads((src / "config.json").read_text())
    if cfg.get("quantization_config", "") is None:
        del cfg["quantization_config"]
    rope = cfg.pop("rope_parameters", None)
    if rope is not None:
        full, local = (rope.get(k, rope) for k in ("full_attention", "sliding_attention"))
        if {full.get("rope_type"), local.get("rope_type")} - {"default", None}:
            raise SystemExit(f"{src}: rope scaling {rope} is not translated for transformers 4.57; add it here")
        cfg["rope_theta"], cfg["rope_local_base_freq"] = full["rope_theta"], local["rope_theta"]
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return dst


def validate(files: list[str], venv: Path = VENV) -> bool:
    """Validate our graph JSON files with circuit-tracer's own models in its venv; print one line per file and
    whether graphs/schema.py's mirror still equals its models. True when all hold."""
    import tempfile

    from graphs.schema import Model

    py = ensure_venv(venv)
    if py is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "validate.json"
        _run_worker(py, "--mode", "validate", "--out", str(out), *[str(Path(f).resolve()) for f in files])
        result = json.loads(out.read_text())
    same = result["schema"] == json.loads(json.dumps(Model.model_json_schema()))
    print(f"circuit-tracer {result['circuit_tracer']}: graphs.schema's models {'equal' if same else 'DIFFER FROM'} its")
    for row in result["files"]:
        if row["ok"]:
            extra = row["extra_metadata_keys"] + row["extra_node_keys"]
            print(
                f"  valid  {row['file']}: {row['nodes']} nodes, {row['links']} links, types {row['feature_types']}"
                + (f", keys it ignores: {extra}" if extra else "")
            )
        else:
            print(f"  INVALID {row['file']}:", *row["error"], sep="\n    ")
    return same and all(r["ok"] for r in result["files"])


def run(args) -> dict:
    """The peer's half: its attribute() in its venv on --transcoders (or fresh random ones); returns result.json."""
    py = ensure_venv(Path(args.venv), args.install)
    if py is None:
        raise SystemExit(2)
    out = Path(args.out)
    folder = Path(args.transcoders) if args.transcoders else write_random_transcoders(out / "random_transcoders")
    model = peer_model_folder(Path(args.model), out / "model")
    cmd = ["--mode", "attribute", "--out", str(out), "--transcoders", str(folder), "--model", str(model)]
    cmd += ["--prompt", args.prompt, "--good", args.good, "--bad", args.bad, "--slug", args.slug]
    cmd += ["--max-feature-nodes", str(args.max_feature_nodes), "--batch-size", str(args.batch_size)]
    cmd += ["--node-threshold", str(args.node_threshold), "--edge-threshold", str(args.edge_threshold)]
    cmd += ["--threads", str(args.threads)] if args.threads else []
    cmd += ["--graph-json"] if args.graph_json else []
    cmd += ["--verbose"] if args.verbose else []
    print(f"load average {os.getloadavg()}; circuit-tracer attribute() in {py}", flush=True)
    t = time.perf_counter()
    _run_worker(py, *cmd)
    result = json.loads((out / "result.json").read_text())
    result["timings"]["subprocess_s"] = time.perf_counter() - t
    (out / "result.json").write_text(json.dumps(result, indent=1))
    s, tm, mem = result["scores"], result["timings"], result["memory"]
    print(
        f"{result['layout']['n_features']} feature nodes of {result['layout']['n_active_features']} active; "
        f"attribute {tm['attribute_s']:.1f} s (model load {tm['load_model_s']:.1f} s, "
        f"whole run {tm['subprocess_s']:.1f} s), "
        f"peak RSS {mem['peak_rss_attribute_mb']:,.0f} MB during attribute\n"
        f"scores unpruned {s['unpruned']}, pruned ({s['pruned_feature_nodes']} features) {s['pruned']}\n"
        f"model's logit diff {result['target']['model_logit_diff']:+.4f}; wrote {out}/result.json, graph.safetensors"
    )
    return result


def add_run_arguments(ap) -> None:
    ap.add_argument("--model", default=str(MODEL_DIR), help="HF folder of the model (default %(default)s)")
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--good", default=GOOD)
    ap.add_argument("--bad", default=BAD)
    ap.add_argument("--max-feature-nodes", type=int, default=1024, help="attribute()'s (default %(default)s)")
    ap.add_argument("--batch-size", type=int, default=32, help="attribute()'s (default %(default)s)")
    ap.add_argument("--node-threshold", type=float, default=0.8)
    ap.add_argument("--edge-threshold", type=float, default=0.98)
    ap.add_argument("--threads", type=int, default=None, help="torch threads in the venv (default: torch's)")
    ap.add_argument("--slug", default="kobe", help="its frontend JSON is graph/ct_<slug>.json")
    ap.add_argument("--graph-json", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--verbose", action="store_true", help="circuit-tracer's progress log")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", default=str(VENV), help="the circuit-tracer venv (default %(default)s)")
    ap.add_argument("--install", action="store_true", help="create the venv / install its pins if needed")
    ap.add_argument("--validate", nargs="+", metavar="JSON", help="validate graph JSON files with its models")
    ap.add_argument("--transcoders", default=None, help="circuit-tracer transcoder folder (config.yaml + layers)")
    ap.add_argument("--random", action="store_true", help="random TopK transcoders (18 layers, d_sae 256)")
    ap.add_argument("--out", default=str(OUT), help="output folder (default %(default)s)")
    add_run_arguments(ap)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    ap.add_argument("files", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        if args.mode == "validate":
            worker_validate(args.files, args.out)
        else:
            worker_attribute(args)
        return 0
    if args.validate:
        return 0 if validate(args.validate, Path(args.venv)) else 1
    if not (args.transcoders or args.random):
        if args.install:
            return 0 if ensure_venv(Path(args.venv), True) else 2
        ap.error("give --transcoders DIR or --random (or --install / --validate)")
    run(args)
    return 0


if __name__ == "__main__":
    if "--worker" in sys.argv:  # run as a file in the peer's venv: keep bench/'s modules off its path
        sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main())
