"""Case studies run end to end (emotion, multi-hop, your own prompt), each writing an offline HTML report.

    import cases
    report = cases.run(prompt, " Austin", " Sacramento", out="runs/mine")  # any prompt and answer pair
    report = cases.emotion.run(out="runs/emotion")  # John ... feels: sad vs happy
    report = cases.multihop.run(out="runs/kobe")  # Kobe Bryant -> Sacramento vs Albany, with the graph

From a shell: `python -m cases emotion --out runs/emotion` (see `python -m cases --help`).
"""

from cases import emotion, multihop
from cases.report import Clamp, FeatureRow, Ranking, Report, Steering
from cases.study import run

__all__ = ["Clamp", "FeatureRow", "Ranking", "Report", "Steering", "emotion", "multihop", "run"]
