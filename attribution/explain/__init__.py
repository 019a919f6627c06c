"""What a feature is: top contexts, the whole activation distribution, logit-lens tokens, neighbours, a label.

index.py builds and caches a FeatureIndex per SAE (one pass over text); lens.py, neighbours.py and labels.py
compute its parts; cards.py makes a FeatureCard (plain data) of one feature; adapter.py's Explainer is the
one object graphs and case studies ask for labels and cards. Nothing here renders HTML, and nothing here
imports attribution.training: the texts an index is built over are registered by training (register_text).
"""

from attribution.explain.activations import feature_activations
from attribution.explain.adapter import Explainer
from attribution.explain.cards import Bin, Context, FeatureCard, explain
from attribution.explain.index import FeatureIndex, feature_index, feature_indexes, index_text, register_text

__all__ = [
    "Bin",
    "Context",
    "Explainer",
    "FeatureCard",
    "FeatureIndex",
    "explain",
    "feature_activations",
    "feature_index",
    "feature_indexes",
    "index_text",
    "register_text",
]
