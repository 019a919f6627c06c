"""Side-by-side runs against peer libraries (SAELens, sparsify, circuit-tracer), each peer in its own venv on the
same data: `python -m bench.peers.<name>`."""
