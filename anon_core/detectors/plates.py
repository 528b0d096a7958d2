"""License plates: PP-OCR text detection in vehicle regions and over the whole frame, filtered by plate geometry.

No installable package ships a plate detector. A plate is, to a text detector, a short line of large characters;
what separates it from other text is where it is (on a vehicle, in its lower part) and its shape (a line
1.5-8x wider than tall, or a two-line square-ish plate). So:
1. NanoDet (its views shared with the person detector through the batch's SharedWork) gives car/bus/truck/
   motorcycle boxes; each is searched at a resolution where a plate is at least ~16 px high.
2. The frame is searched at one frame-wide scale too, over the box around every vehicle seen at a low score
   (`frame_region="vehicles"`, widened by 15 %; "whole": the whole frame): close-ups where the car fills the frame
   are often only weakly "a car". Restricting this pass to the vehicles' region raised recall 0.907 -> 0.910 and
   precision 0.31 -> 0.34 on shared/data/plates (fewer signs) and skips the empty parts of the frame.
   Small images are upscaled so their short side reaches 1088 px (long side <= 1600): plates 10-24 px high then
   carry characters of ~10+ px, where PP-OCR starts to see them (736 px, PP-OCR's own default: recall 0.877 ->
   0.894 on shared/data/plates; see models/plates.md).
3. Text lines close to each other on one row are joined (DB splits "AB 123" at wide gaps), grown from the
   character box to the plate border, and kept when their shape fits a plate.
4. OpenCV's plate Haar cascade adds candidates the text detector misses (off by default: measured worse).

Vehicles come from NanoDet's whole-frame view only (`vehicle_tiles=False`): its tiles find small people, but a
vehicle too small for that view carries a plate under ~10 px; on shared/data/plates dropping them kept recall
(0.910) and raised precision 0.34 -> 0.35, and a 720p frame with vehicles saves six NanoDet passes (~150 ms).

Plates are on vehicles, so a frame in which NanoDet's cheap whole-frame view sees no vehicle even at a low score
(`gate_threshold`) is not searched at all: on ../shared/data/plates every plate lies inside a whole-view vehicle box
scoring >= 0.2, and photos without vehicles then cost one 416x416 NanoDet pass instead of a PP-OCR search over
an upscaled frame (~700 ms CPU at 720p).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from anon_core.boxes import intersection_over_first, nms
from anon_core.detections import Detections
from anon_core.detectors.base import Detector, SharedWork, register_detector
from anon_core.detectors.nanodet import VEHICLES, nanodet_for
from anon_core.detectors.plate_rescore import learned_scores, load_rescorer
from anon_core.detectors.plate_verify import shared_reader, verified_scores
from anon_core.detectors.text import shared_ppocr
from anon_core.weights import ModelInfo


def join_lines(b: np.ndarray, s: np.ndarray, gap: float = 0.8, dy: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """Join text boxes on one row whose horizontal gap is under `gap` x their height."""
    if len(b) < 2:
        return b, s
    b, s = b.copy(), s.copy()
    changed = True
    while changed and len(b) > 1:
        changed = False
        order = np.argsort(b[:, 0])
        b, s = b[order], s[order]
        for i in range(len(b)):
            for j in range(i + 1, len(b)):
                hi, hj = b[i, 3] - b[i, 1], b[j, 3] - b[j, 1]
                h = max(hi, hj)
                cy_i, cy_j = (b[i, 1] + b[i, 3]) / 2, (b[j, 1] + b[j, 3]) / 2
                if min(hi, hj) < 0.6 * h or abs(cy_i - cy_j) > dy * h:
                    continue
                if b[j, 0] - b[i, 2] > gap * h:
                    continue
                b[i] = [min(b[i, 0], b[j, 0]), min(b[i, 1], b[j, 1]), max(b[i, 2], b[j, 2]), max(b[i, 3], b[j, 3])]
                s[i] = max(s[i], s[j])
                b, s = np.delete(b, j, 0), np.delete(s, j)
                changed = True
                break
            if changed:
                break
    return b, s


def vehicles(objs: Detections, min_score: float) -> Detections:
    """The car/bus/truck/motorcycle detections scoring at least min_score."""
    return objs[np.isin(objs.labels.astype(str), VEHICLES) & (objs.scores >= min_score)]


class PlateDetector(Detector):
    classes = ("plate",)

    def __init__(
        self,
        threshold: float = 0.5,
        text_threshold: float = 0.5,
        vehicle_threshold: float = 0.3,
        grow_x: float = 1.12,
        grow_y: float = 1.45,
        min_aspect: float = 1.1,
        max_aspect: float = 9.0,
        min_height: float = 6.0,
        max_width_share: float = 0.8,
        whole_frame: bool = True,
        frame_min_side: int = 1088,
        frame_max_side: int = 1600,
        vehicle_min_width: int = 480,
        vehicle_max_side: int = 1280,
        cascade: bool = False,
        nanodet_weights: str | None = None,
        ocr_weights: str | None = None,
        device: str = "auto",
        threads: int = 0,
        tile_size: int = 640,
        tile_min_side: int = 600,
        candidate_threshold: float = 0.1,
        gate_threshold: float = 0.1,
        grow_y_small: float | None = 1.6,
        grow_y_large: float | None = 1.25,
        frame_region: str = "vehicles",
        region_margin: float = 0.15,
        vehicle_tiles: bool = False,
        frame_max_pixels: int = 0,
        weak_max_pixels: int = 400_000,
        verify: bool = True,
        verify_floor: float = 0.6,
        verify_large_height: float = 128.0,
        verify_large_floor: float = 0.0,
        rec_weights: str | None = None,
        rescore: str = "trees",
        rescore_weights: str | None = None,
    ):
        # how the reading check scores a candidate: "trees" (plate_rescore.py, learned over reading, vehicle
        # context, size and shape) or "rule" (verified_scores: text score x reading, the floors below)
        if rescore not in ("trees", "rule"):
            raise ValueError("rescore must be trees or rule")
        self.rescore, self._rescore_path = rescore, rescore_weights
        self.vehicle_tiles, self.frame_max_pixels = bool(vehicle_tiles), int(frame_max_pixels)
        # the same budget only for frames whose vehicles all score under vehicle_threshold (maybe-vehicles)
        self.weak_max_pixels = int(weak_max_pixels)
        # reading check (plate_verify.py): candidates that do not read like a plate keep verify_floor of their score
        self.verify, self.verify_floor, self._rec_args = bool(verify), float(verify_floor), (rec_weights, device,
                                                                                           int(threads))
        # a candidate this tall is read with pixels to spare: unreadable, it is no plate (a shuttle's side in the
        # demo video; on ../shared/data/plates recall/precision unchanged, 0.894 / 0.630)
        self.verify_large = (float(verify_large_height), float(verify_large_floor))
        if frame_region not in ("whole", "vehicles"):
            raise ValueError("frame_region must be whole or vehicles")
        self.gate_threshold, self.frame_region, self.region_margin = float(gate_threshold), frame_region, region_margin
        self.threshold, self.text_threshold, self.vehicle_threshold = threshold, text_threshold, vehicle_threshold
        self.grow = (float(grow_x), float(grow_y))
        self.grow_y_small = float(grow_y if grow_y_small is None else grow_y_small)
        self.grow_y_large = float(grow_y if grow_y_large is None else grow_y_large)
        self.min_aspect, self.max_aspect, self.min_height = min_aspect, max_aspect, min_height
        self.max_width_share = max_width_share
        self.whole_frame, self.frame_min_side, self.frame_max_side = whole_frame, frame_min_side, frame_max_side
        self.vehicle_min_width, self.vehicle_max_side = vehicle_min_width, vehicle_max_side
        self._nanodet_args = (nanodet_weights, device, int(threads), float(candidate_threshold), int(tile_size),
                              int(tile_min_side))
        self._ocr_args = (ocr_weights, device, int(threads))
        self.use_cascade = bool(cascade)

    def load(self) -> None:
        self.nanodet = nanodet_for(*self._nanodet_args)
        self.ocr = shared_ppocr(*self._ocr_args)
        self.reader = shared_reader(*self._rec_args) if self.verify else None
        self.trees = load_rescorer(self._rescore_path) if self.verify and self.rescore == "trees" else None
        self.cascade = None
        if self.use_cascade:
            self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_russian_plate_number.xml")

    def model_infos(self) -> list[ModelInfo]:
        o, n = self.ocr.info(), self.nanodet.info()
        return [o, n, *([self.reader.info()] if self.reader is not None else []),
                *([self.trees.info] if self.trees is not None else [])]

    def info(self) -> ModelInfo:
        """One line for the whole search (the audit lists each model through `infos`)."""
        self.ensure_loaded()
        o, n = self.ocr.info(), self.nanodet.info()
        return ModelInfo("plates:ppocrv4-det+nanodet", f"{o.version}+{n.version}", o.weights_sha256, o.source,
                         "Apache-2.0")

    def _search(self, frame: np.ndarray, region: tuple[int, int, int, int], scale: float, rel_width: float):
        """Text boxes found in one region, as plate candidates in frame pixels."""
        x0, y0, x1, y1 = region
        crop = frame[y0:y1, x0:x1]
        b, s = self.ocr.boxes(crop, scale, box_threshold=self.text_threshold)
        if not len(b):
            return b, s
        b, s = join_lines(b, s)
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        c = (b[:, :2] + b[:, 2:]) / 2
        half = np.stack([w * self.grow[0], h * self.grow_y(h * scale)], 1) / 2
        b = np.concatenate([c - half, c + half], 1) + np.array([x0, y0, x0, y0], np.float32)
        ar = (b[:, 2] - b[:, 0]) / np.maximum(b[:, 3] - b[:, 1], 1e-6)
        keep = (ar >= self.min_aspect) & (ar <= self.max_aspect) & (b[:, 3] - b[:, 1] >= self.min_height)
        keep &= (b[:, 2] - b[:, 0]) <= self.max_width_share * rel_width
        return b[keep], s[keep]

    def predict(self, frames: Sequence[np.ndarray], min_score: float, work: SharedWork) -> list[Detections]:
        out: list[Detections] = [Detections.empty() for _ in frames]
        gate = self.nanodet.detect(frames, work, tiles=False)
        todo = [i for i, g in enumerate(gate) if self.gate_threshold <= 0 or len(vehicles(g, self.gate_threshold))]
        if self.vehicle_tiles and todo:
            found = self.nanodet.detect([frames[i] for i in todo], work, tiles=True)
        else:  # the gate's whole-frame view is all the search needs
            found = [gate[i] for i in todo]
        for i, objs in zip(todo, found):
            out[i] = self._detect_one(frames[i], objs, min_score)
        return out

    def grow_y(self, net_height: np.ndarray) -> np.ndarray:
        """Vertical growth from the text box to the plate border, by the text box's height in network pixels.

        PP-OCR's text box covers the characters less fully when they are small in its input (a soft probability
        map) and more than fully when they are large (the unclip margin grows with the box): on
        ../shared/data/plates the annotated plate is 1.18x our 1.45x-grown box at 18-25 px net height, 1.04x at
        25-35 and 0.84x at 50+ px. So the factor falls linearly from grow_y_small (<= 24 px) to grow_y_large
        (>= 50 px); None for both restores the single factor grow_y (recall 0.894 -> 0.904 with 1.6 / 1.25).
        """
        (h0, g0), (h1, g1) = (24.0, self.grow_y_small), (50.0, self.grow_y_large)
        t = np.clip((np.asarray(net_height, np.float32) - h0) / (h1 - h0), 0.0, 1.0)
        return g0 + (g1 - g0) * t

    def _frame_region(self, objs: Detections, w: int, h: int) -> tuple[int, int, int, int]:
        """Where the frame-scale search looks: the whole frame, or (frame_region="vehicles") the box around every
        vehicle the gate would accept, widened by `region_margin` of its size on each side."""
        if self.frame_region != "vehicles":
            return 0, 0, w, h
        v = vehicles(objs, self.gate_threshold)
        if not len(v):
            return 0, 0, w, h
        lo, hi = v.xyxy[:, :2].min(0), v.xyxy[:, 2:].max(0)
        pad = (hi - lo) * self.region_margin
        x0, y0 = np.floor(np.maximum(lo - pad, 0)).astype(int)
        x1, y1 = np.ceil(np.minimum(hi + pad, [w, h])).astype(int)
        return int(x0), int(y0), int(x1), int(y1)

    def _detect_one(self, frame: np.ndarray, objs: Detections, min_score: float) -> Detections:
        h, w = frame.shape[:2]
        boxes, scores = [], []
        veh = vehicles(objs, self.vehicle_threshold)
        frame_scale = min(max(1.0, self.frame_min_side / min(h, w)), self.frame_max_side / max(h, w))
        region = self._frame_region(objs, w, h)
        # a frame that passed the gate only on maybe-vehicles (none >= vehicle_threshold) gets the weak budget
        weak = not len(veh) and self.gate_threshold > 0
        budget = self.frame_max_pixels or (self.weak_max_pixels if weak else 0)
        if budget:  # pixel budget of the frame-scale pass (cost; see models/plates.md)
            area = max((region[2] - region[0]) * (region[3] - region[1]), 1)
            frame_scale = min(frame_scale, float(np.sqrt(budget / area)))
        for vb in veh.xyxy[nms(veh.xyxy, veh.scores, 0.7)] if len(veh) else []:
            x0, y0 = int(max(0, vb[0])), int(max(0, vb[1]))
            x1, y1 = int(min(w, np.ceil(vb[2]))), int(min(h, np.ceil(vb[3])))
            if x1 - x0 < 16 or y1 - y0 < 16:
                continue
            if self.whole_frame and (x1 - x0) * frame_scale >= self.vehicle_min_width:
                continue  # the whole-frame search already sees this vehicle at enough resolution
            # plates are ~1/5 of a car's width: enlarge small cars so their plate text is ~16 px+ high
            scale = min(max(1.0, self.vehicle_min_width / (x1 - x0)), self.vehicle_max_side / max(x1 - x0, y1 - y0))
            b, s = self._search(frame, (x0, y0, x1, y1), scale, x1 - x0)
            boxes.append(b)
            scores.append(s)
        if self.whole_frame:
            b, s = self._search(frame, region, frame_scale, w)
            if len(veh) and len(b):
                # text outside every vehicle is more often a sign than a plate: lower its score
                inside = intersection_over_first(b, veh.xyxy).max(1) > 0.8
                s = np.where(inside, s, s * 0.9)
            boxes.append(b)
            scores.append(s)
        if self.cascade is not None:
            gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
            r = self.cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=4, minSize=(20, 6))
            if len(r):
                r = np.asarray(r, np.float32)
                boxes.append(np.concatenate([r[:, :2], r[:, :2] + r[:, 2:]], 1))
                scores.append(np.full(len(r), 0.5, np.float32))
        if boxes and sum(len(b) for b in boxes):
            b, s = np.concatenate(boxes).astype(np.float32), np.concatenate(scores).astype(np.float32)
            b[:, [0, 2]] = b[:, [0, 2]].clip(0, w)
            b[:, [1, 3]] = b[:, [1, 3]].clip(0, h)
            keep = nms(b, s, 0.3)
            b, s = b[keep], s[keep]
            if self.trees is not None:
                s = learned_scores(self.trees, self.reader, frame, b, s, vehicles(objs, 0.0), self.verify_large[0])
            elif self.reader is not None:  # the check only lowers scores: read only what could still pass
                b, s = b[s >= min_score], s[s >= min_score]
                floor = np.where(b[:, 3] - b[:, 1] >= self.verify_large[0], self.verify_large[1], self.verify_floor)
                s = verified_scores(self.reader, frame, b, s, floor)
            keep = s >= min_score
            return Detections(b[keep], s[keep], np.full(int(keep.sum()), "plate", object))
        return Detections.empty()


@register_detector("plate")
def _plate(**params) -> PlateDetector:
    return PlateDetector(**params)
