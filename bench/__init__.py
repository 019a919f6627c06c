"""Speed benchmarks (pytest-benchmark, bench/test_*.py) and the ratio report (bench/ratios.py): `python -m bench`.

bench/peers/ holds the side by sides with peer libraries (each peer in its own venv, on the same data);
research studies live in studies/; every committed result file is in bench/results/.
"""
