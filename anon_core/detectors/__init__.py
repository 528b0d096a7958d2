"""Detectors: importing this package registers the built-in ones.

Third-party detectors register through the `anon.detectors` entry point group (anon_core/plugins.py).
"""

# "face"; "nanodet_person", "plate", "ppocr_text" (models from `make models` and the rapidocr wheel); "yolo" (the
# user's own ultralytics weights; ultralytics is imported only when such a detector is first used)
from anon_core.detectors import faces, nanodet, plate_yolo, plates, text, yolo  # noqa: F401
from anon_core.detectors.base import Detector, SharedWork, available_detectors, create_detector, register_detector

__all__ = ["Detector", "SharedWork", "available_detectors", "create_detector", "register_detector"]
