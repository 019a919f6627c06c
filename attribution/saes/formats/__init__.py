"""The on-disk formats, one module each behind one small interface (`common.Format`), and the registry that tells
which one a folder holds.

| format | module | reads | writes |
|---|---|---|---|
| ours (SAELens's plus our fields) | ours.py | SAEs, transcoders | SAEs (save_sae) |
| SAELens | saelens.py | SAEs, transcoders | (ours is SAELens-readable) |
| Gemma Scope 2 | gemma_scope.py | transcoders | |
| circuit-tracer | circuit_tracer.py | per-layer transcoder sets | transcoder sets (save_transcoders) |
| circuit-tracer CLT | circuit_tracer_clt.py | cross-layer transcoders (load_clt) | CLTs (save_clt) |
| sparsify | sparsify.py | TopK SAEs (needs hook=) | |
"""

from __future__ import annotations

from pathlib import Path

from attribution.saes.formats import circuit_tracer, gemma_scope, ours, saelens, sparsify
from attribution.saes.formats.common import Format

# detection order: the first whose files a folder holds (ours before SAELens, whose cfg.json it extends; sparsify
# before SAELens, as both write a cfg.json)
FORMATS: dict[str, Format] = {
    f.name: f for f in (circuit_tracer.FORMAT, gemma_scope.FORMAT, sparsify.FORMAT, ours.FORMAT, saelens.FORMAT)
}


def detect(path: Path, reads: str | None = None) -> Format | None:
    """The format of the dictionary (or set) in folder `path`, or None when it holds none we read. `reads`:
    'sae' or 'transcoders' to consider only the formats that read those."""
    able = {None: lambda f: True, "sae": lambda f: f.read_sae, "transcoders": lambda f: f.read_transcoders}[reads]
    return next((f for f in FORMATS.values() if able(f) and f.detect(path)), None)


def by_name(name: str) -> Format | None:
    """A format by its name (`circuit-tracer`, `SAELens`, `Gemma Scope 2`), any case, `_` or space for `-`."""
    key = name.lower().replace("_", "-").replace(" ", "-") if isinstance(name, str) else None
    return next((f for n, f in FORMATS.items() if n.lower().replace(" ", "-") == key), None)


__all__ = ["FORMATS", "Format", "by_name", "detect"]
