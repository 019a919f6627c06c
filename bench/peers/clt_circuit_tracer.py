"""Cross-layer transcoder files both ways with circuit-tracer itself: does its `load_clt` read what our `save_clt`
writes and compute what we compute, and do we read what its `to_safetensors` writes?

    python -m bench.peers.clt_circuit_tracer [--venv /work/ct-venv] [--out bench/results/clt_circuit_tracer.json]

circuit-tracer runs in its own virtualenv (bench.peers.circuit_tracer_side_by_side.ensure_venv finds it; create it
with `python -m bench.peers.circuit_tracer_side_by_side --install`). Random weights, float32, on the CPU:
1. here: `save_clt` writes a relu CLT without skip (reach 2 of 4 layers: W_dec_<i> padded with zeros) and a
   jumprelu one (positive thresholds: its x * (x > t) is ours only for t >= 0; reach 4), with inputs x
   [n_layers, n_pos, d_model] and our features and outputs;
2. in circuit-tracer's venv (this file as a script; it imports nothing of ours): its
   `load_clt(folder, lazy_decoder=False, dtype=float32, device=cpu)` reads each, and its `encode` and `forward`
   run on the same x; its `to_safetensors` writes each back out;
3. here: our forward is compared with its, and `load_clt` reads its files (plus a config.yaml, which its
   to_safetensors does not write) and is compared with its outputs.
Writes the largest absolute differences to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

N, D, F, POS = 4, 16, 40, 6  # layers, d_model, d_sae, positions
CASES = {"relu": ("relu", 2), "jumprelu": ("jumprelu", N)}  # name: (architecture, reach)
OUT = Path(__file__).resolve().parents[1] / "results" / "clt_circuit_tracer.json"


def worker(work: Path) -> None:
    """circuit-tracer's side: read each of our folders, run it on x, write it back out in its own code."""
    import torch
    import yaml
    from circuit_tracer import __version__
    from circuit_tracer.transcoder.activation_functions import JumpReLU
    from circuit_tracer.transcoder.cross_layer_transcoder import load_clt
    from safetensors.torch import load_file, save_file

    x, out = load_file(str(work / "x.safetensors"))["x"], {}
    for name in CASES:
        cfg = yaml.safe_load((work / name / "config.yaml").read_text())
        clt = load_clt(
            str(work / name),
            feature_input_hook=cfg["feature_input_hook"],
            feature_output_hook=cfg["feature_output_hook"],
            lazy_decoder=False,
            dtype=torch.float32,
            device=torch.device("cpu"),
        )
        kind = "jump_relu" if isinstance(clt.activation_function, JumpReLU) else "relu"
        print(f"circuit-tracer {__version__} load_clt({name}): {clt.n_layers} layers, {kind}, skip {clt.W_skip}")
        with torch.no_grad():
            out[f"{name}_f"], out[f"{name}_y"] = clt.encode(x), clt(x)
        clt.to_safetensors(str(work / f"theirs_{name}"))
        (work / f"theirs_{name}" / "config.yaml").write_text(
            yaml.safe_dump({k: cfg[k] for k in ("model_kind", "feature_input_hook", "feature_output_hook")})
        )
    save_file({k: v.contiguous() for k, v in out.items()}, str(work / "theirs.safetensors"))
    print(json.dumps({"circuit_tracer": __version__, "torch": torch.__version__}))


def _random_clt(architecture: str, reach: int, seed: int):
    import torch

    from attribution.saes import CrossLayerTranscoder

    clt = CrossLayerTranscoder.create(N, D, F, reach=reach, architecture=architecture, skip=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in clt.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
        for s in clt.layers:
            s.b_enc.add_(0.2)  # most features fire: every position then has one (its decode sizes by them)
            if architecture == "jumprelu":
                s.threshold.abs_().mul_(0.3)
    return clt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--venv", type=Path, default=None, help="circuit-tracer's virtualenv (default: ensure_venv's)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    import torch
    from safetensors.torch import load_file, save_file

    from attribution import load_clt, save_clt
    from bench.peers.circuit_tracer_side_by_side import VENV, ensure_venv

    py = ensure_venv(args.venv or VENV)
    if py is None:
        raise SystemExit(1)
    work = Path(tempfile.mkdtemp(prefix="clt-ct-"))
    x = torch.randn(N, POS, D, generator=torch.Generator().manual_seed(7))
    save_file({"x": x}, str(work / "x.safetensors"))
    ours = {}
    for seed, (name, (arch, reach)) in enumerate(CASES.items()):
        clt = _random_clt(arch, reach, seed)
        save_clt(clt, work / name, model_name="google/gemma-3-270m")
        with torch.no_grad():
            ys, fs = clt(list(x))
        ours[name] = (torch.stack(ys), torch.stack(fs), clt)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": ""}
    run = subprocess.run(
        [str(py), str(Path(__file__).resolve()), "--worker", str(work)], env=env, capture_output=True, text=True
    )
    sys.stdout.write(run.stdout)
    if run.returncode:
        sys.stderr.write(run.stderr[-3000:])
        raise SystemExit(f"circuit-tracer's side failed (exit {run.returncode}); work folder {work}")
    versions = json.loads(run.stdout.strip().splitlines()[-1])
    theirs, rows = load_file(str(work / "theirs.safetensors")), {}
    for name, (arch, reach) in CASES.items():
        y, f, clt = ours[name]
        back = load_clt(work / f"theirs_{name}")
        with torch.no_grad():
            y_back = torch.stack(back(list(x))[0])
        rows[name] = {
            "architecture": arch,
            "reach": reach,
            "skip": False,
            "active_features": int((f != 0).sum()),
            "features_max_abs_diff": (f - theirs[f"{name}_f"]).abs().max().item(),
            "output_max_abs_diff": (y - theirs[f"{name}_y"]).abs().max().item(),
            "output_scale": y.abs().max().item(),
            "its_files_read_by_us_output_max_abs_diff": (y_back - theirs[f"{name}_y"]).abs().max().item(),
        }
        print(name, json.dumps(rows[name]))
    result = {
        "what": "save_clt's files read by circuit-tracer's load_clt (lazy_decoder=False, float32, cpu): its encode "
        "and forward vs ours on the same inputs; and its to_safetensors files read by our load_clt",
        "shapes": {"n_layers": N, "d_model": D, "d_sae": F, "n_pos": POS},
        "versions": versions | {"ours_torch": torch.__version__},
        "cases": rows,
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    if "--worker" in sys.argv:  # run as a file in circuit-tracer's venv: keep bench/ and the project off its path
        sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
        worker(Path(sys.argv[sys.argv.index("--worker") + 1]))
    else:
        main()
