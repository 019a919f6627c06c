"""Research studies behind the docs (one file each, run from a checkout: `python -m studies.<name>`); their
results are committed in bench/results/ beside every other measured figure."""
