"""Detectors: importing this package registers the built-in ones."""

from anon_core.detectors import faces  # noqa: F401  (registers "face")
from anon_core.detectors.base import Detector, available_detectors, create_detector, register_detector

__all__ = ["Detector", "available_detectors", "create_detector", "register_detector"]
