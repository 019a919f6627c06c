"""Case studies run end to end (emotion, multi-hop, your own prompt), each writing an offline HTML report.

    import cases
    report = cases.run(prompt, " Austin", " Sacramento", out="runs/mine")  # any prompt and answer pair
    report = cases.emotion.run(out="runs/emotion")  # John ... feels: sad vs happy
    report = cases.multihop.run(out="runs/kobe")  # Kobe Bryant -> Sacramento vs Albany, with the graph

    config = cases.CaseConfig(cases.Question(prompt, " Austin", " Sacramento"), cases.Sources(saes="whole"))
    report = cases.run(config)  # one typed config (cases.config), here activation patching; see report.skipped

From a shell: `python -m cases emotion --out runs/emotion` (see `python -m cases --help`).
"""

from cases import emotion, multihop
from cases.config import CaseConfig, GraphOptions, Measure, Output, Question, Sources, SteerOptions
from cases.report import Clamp, FeatureRow, Ranking, Report, Skip, Steering
from cases.study import run

__all__ = [
    "CaseConfig", "Clamp", "FeatureRow", "GraphOptions", "Measure", "Output", "Question", "Ranking", "Report",
    "Skip", "Sources", "SteerOptions", "Steering", "emotion", "multihop", "run",
]  # fmt: skip
