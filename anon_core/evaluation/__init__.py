"""Evaluation library: ground-truth loaders, matching, detection metrics and the leak rate.

Pure library (numpy, OpenCV, scikit-image): jobs and benchmarks wrap it for MLflow, CLI and reports.
"""

from anon_core.evaluation.groundtruth import GroundTruthImage, load_coco, load_jsonl, load_mot
from anon_core.evaluation.leak import LeakResult, box_scores, leak_dataset, leak_image, leak_video, over_masking
from anon_core.evaluation.matching import MatchResult, match_image, on_ignore
from anon_core.evaluation.metrics import average_precision, evaluate, threshold_for_target_fpr

__all__ = [
    "GroundTruthImage",
    "LeakResult",
    "MatchResult",
    "average_precision",
    "box_scores",
    "evaluate",
    "leak_dataset",
    "leak_image",
    "leak_video",
    "load_coco",
    "load_jsonl",
    "load_mot",
    "match_image",
    "on_ignore",
    "over_masking",
    "threshold_for_target_fpr",
]
