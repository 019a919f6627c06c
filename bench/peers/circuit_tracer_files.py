"""Transcoder files both ways with circuit-tracer itself: does it read what `save_transcoders` writes, and do
we read what it writes and what it reads (Gemma Scope 2's params.safetensors)?

    python -m bench.peers.circuit_tracer_files [--venv /tmp/ctv]

circuit-tracer pins nnsight 0.6 and transformers 4, so it runs in its own virtualenv (default /tmp/ctv):

    python -m venv /tmp/ctv && /tmp/ctv/bin/pip install torch==2.13.0 circuit-tracer==0.5.0 nnsight==0.6.1 \\
        'transformers<=4.57.3'

Steps (random weights, d_model 16, 40 features, positive thresholds: circuit-tracer's JumpReLU is
x * (x > t), ours relu(x) * (x > t), equal only for t >= 0):
1. here: `save_transcoders` writes a relu / jumprelu+skip / jumprelu set (hook_resid_mid -> hook_mlp_out), with
   inputs x and our outputs;
2. in circuit-tracer's venv (this file as a script; it imports nothing of ours): the set is read by
   `load_transcoder_set` (paths from config.yaml, against the folder), `hf_utils.load_transcoders` (the config
   with absolute paths) and `load_transcoders_from_cache` (the folder as its cache); each layer's encode and
   forward are compared with ours; its own `TranscoderSet.to_safetensors` writes a set, and
   `load_gemma_scope_2_transcoder` reads a Gemma Scope 2 params.safetensors, with their outputs;
3. here: `load_transcoders` reads both, compared with circuit-tracer's outputs.
Prints the largest absolute difference of each comparison (float32).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

D, F, LAYERS = 16, 40, 3


def worker(work: Path) -> None:
    """circuit-tracer's side: read our set three ways, write one set and one Gemma Scope 2 file of its own."""
    import torch
    import yaml
    from circuit_tracer.transcoder.activation_functions import JumpReLU
    from circuit_tracer.transcoder.single_layer_transcoder import (
        SingleLayerTranscoder,
        TranscoderSet,
        load_gemma_scope_2_transcoder,
        load_transcoder_set,
    )
    from circuit_tracer.utils import caching, hf_utils
    from circuit_tracer.utils.tl_nnsight_mapping import get_mapping
    from safetensors.torch import load_file, save_file

    cpu, ours = torch.device("cpu"), work / "ours"
    io = load_file(str(work / "ours_io.safetensors"))
    cfg = yaml.safe_load((ours / "config.yaml").read_text())
    mapping = get_mapping("Gemma3ForCausalLM").feature_hook_mapping
    print(
        f"config hooks {cfg['feature_input_hook']} -> {cfg['feature_output_hook']}; in circuit-tracer's Gemma 3 "
        f"nnsight mapping: {cfg['feature_input_hook'] in mapping and cfg['feature_output_hook'] in mapping}"
    )
    paths = {i: str(ours / p) for i, p in enumerate(cfg["transcoders"])}
    kw = {"device": cpu, "dtype": torch.float32, "lazy_encoder": False, "lazy_decoder": False}
    sets = {
        "load_transcoder_set": load_transcoder_set(
            paths,
            scan=cfg["scan"],
            feature_input_hook=cfg["feature_input_hook"],
            feature_output_hook=cfg["feature_output_hook"],
            **kw,
        ),
        "hf_utils.load_transcoders": hf_utils.load_transcoders(cfg | {"transcoders": list(paths.values())}, **kw),
        "load_transcoders_from_cache": caching.load_transcoders_from_cache(ours.name, cache_dir=work, **kw)[0],
    }
    for how, ts in sets.items():
        assert (ts.feature_input_hook, ts.feature_output_hook) == ("hook_resid_mid", "hook_mlp_out")
        enc = max((ts[i].encode(io[f"x{i}"]) - io[f"f{i}"]).abs().max().item() for i in range(LAYERS))
        out = max((ts[i](io[f"x{i}"]) - io[f"y{i}"]).abs().max().item() for i in range(LAYERS))
        kinds = [
            type(t.activation_function).__name__ if isinstance(t.activation_function, JumpReLU) else "relu" for t in ts
        ]
        print(
            f"circuit-tracer {how}: {len(ts)} layers {kinds}, skip {[t.W_skip is not None for t in ts]}; "
            f"max |encode - ours| {enc:.2e}, max |forward - ours| {out:.2e}"
        )

    g, theirs = torch.Generator().manual_seed(1), {}
    for i in range(2):  # circuit-tracer's own writer (to_safetensors) and a config.yaml as its cache holds
        act = JumpReLU(0.3 * torch.rand(F, generator=g), 0.1) if i else torch.nn.functional.relu
        t = SingleLayerTranscoder(D, F, act, i, skip_connection=True, device=cpu, dtype=torch.float32)
        with torch.no_grad():
            for p in (t.W_enc, t.W_dec, t.b_enc, t.b_dec, t.W_skip):
                p.copy_(torch.randn(p.shape, generator=g))
        theirs[i] = t
    TranscoderSet(theirs, "mlp.hook_in", "hook_mlp_out", scan="bench").to_safetensors(str(work / "theirs"))
    (work / "theirs" / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "model_kind": "transcoder_set",
                "feature_input_hook": "mlp.hook_in",
                "feature_output_hook": "hook_mlp_out",
                "scan": "bench",
            }
        )
    )
    x = torch.randn(5, D, generator=g)
    out = {"x": x} | {f"y{i}": t(x).detach() for i, t in theirs.items()}
    # a Gemma Scope 2 params.safetensors (random, square skip), read by circuit-tracer's loader
    gs = work / "gs2" / "layer_0_width_16k_l0_small"
    gs.mkdir(parents=True)
    raw = {
        "w_enc": torch.randn(D, F, generator=g),
        "w_dec": torch.randn(F, D, generator=g),
        "b_enc": torch.randn(F, generator=g),
        "b_dec": torch.randn(D, generator=g),
        "threshold": 0.3 * torch.rand(F, generator=g),
        "affine_skip_connection": torch.randn(D, D, generator=g),
    }
    save_file(raw, str(gs / "params.safetensors"))
    t = load_gemma_scope_2_transcoder(str(gs / "params.safetensors"), 0, device=cpu, dtype=torch.float32)
    out |= {"gs2_y": t(x).detach()}
    save_file(out, str(work / "theirs_io.safetensors"))
    print("circuit-tracer wrote a set (to_safetensors) and read a Gemma Scope 2 file (load_gemma_scope_2_transcoder)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--venv", type=Path, default=Path("/tmp/ctv"), help="circuit-tracer's virtualenv")
    args = ap.parse_args()
    import torch
    from safetensors.torch import load_file, save_file

    from attribution import load_transcoders, save_transcoders
    from attribution.saes import build

    work = Path(tempfile.mkdtemp(prefix="ct-files-"))
    g, tcs, io = torch.Generator().manual_seed(0), {}, {}
    for i, (arch, skip) in enumerate([("relu", False), ("jumprelu", True), ("jumprelu", False)]):
        tc = build(arch, D, F, f"resid_mid.{i}", target=f"mlp_out.{i}", skip=skip)
        with torch.no_grad():
            for p in tc.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
            if arch == "jumprelu":
                tc.threshold.abs_()
        x = torch.randn(5, D, generator=g)
        y, f = tc(x)
        tcs[tc.hook], io[f"x{i}"], io[f"y{i}"], io[f"f{i}"] = tc, x, y.detach(), f.detach()
    save_transcoders(tcs, work / "ours", model_name="google/gemma-3-270m")
    save_file(io, str(work / "ours_io.safetensors"))
    print(f"ours: save_transcoders wrote {sorted(p.name for p in (work / 'ours').iterdir())} to {work / 'ours'}")

    subprocess.check_call([str(args.venv / "bin" / "python"), str(Path(__file__).resolve()), "--worker", str(work)])

    theirs, ref = load_transcoders(work / "theirs"), load_file(str(work / "theirs_io.safetensors"))
    diff = max((theirs[f"mlp_in.{i}"](ref["x"])[0] - ref[f"y{i}"]).abs().max().item() for i in range(2))
    print(
        f"ours: load_transcoders read circuit-tracer's set as {[(h, t.architecture) for h, t in theirs.items()]}"
        f"; max |forward - circuit-tracer| {diff:.2e}"
    )
    gs2 = load_transcoders(work / "gs2")["mlp_in.0"]
    diff = (gs2(ref["x"])[0] - ref["gs2_y"]).abs().max().item()
    print(f"ours: load_transcoders read the Gemma Scope 2 file; max |forward - circuit-tracer's loader| {diff:.2e}")
    print(json.dumps({"work": str(work)}))


if __name__ == "__main__":
    if "--worker" in sys.argv:  # run as a file in circuit-tracer's venv: keep bench/ and the project off its path
        sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
        worker(Path(sys.argv[sys.argv.index("--worker") + 1]))
    else:
        main()
