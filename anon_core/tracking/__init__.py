"""Video tracking for anonymization: Kalman motion model, ByteTrack association, look-ahead gap filling.

Typical use in the video pipeline::

    scheduler = MaskScheduler.from_seconds(fps, frame_size=(width, height))
    for i, dets in enumerate(detections_per_frame):
        for frame_index, boxes in scheduler.push(i, dets):
            mask(frame_index, boxes)
    for frame_index, boxes in scheduler.flush():
        mask(frame_index, boxes)
"""

from anon_core.tracking.bytetrack import Tracker, associate
from anon_core.tracking.kalman import BoxKalman
from anon_core.tracking.smoothing import MaskScheduler

__all__ = ["BoxKalman", "MaskScheduler", "Tracker", "associate"]
