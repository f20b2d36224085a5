"""``sgid evaluate``: does an augmentation help a classifier? (SGID paper §4, appendix I).

The public API; importing it imports torch, so the command line imports it only when it runs.
"""

from sgid.evaluate.api import EvalConfig, Evaluation, evaluate
from sgid.evaluate.checkpoint import load_classifier, predict_proba, save_classifier
from sgid.evaluate.data import EvalData, Example, load_folder_dataset
from sgid.evaluate.datasets import load_dataset

__all__ = [
    "EvalConfig",
    "EvalData",
    "Evaluation",
    "Example",
    "evaluate",
    "load_classifier",
    "load_dataset",
    "load_folder_dataset",
    "predict_proba",
    "save_classifier",
]
