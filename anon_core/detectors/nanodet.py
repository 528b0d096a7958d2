"""NanoDet (COCO-80) from the local model cache: person boxes and vehicle regions.

The network sees 416x416 letterboxed views: the whole frame plus, for frames large enough that people would
shrink below a few cells, overlapping square-ish tiles ("adaptive tiling"). One shared instance per
configuration's results are shared between detectors (persons, plate search regions) through the `SharedWork`
the pipeline passes to each of them for one batch, so a frame is run through each NanoDet view once however
many classes the policy asks for. The loaded network itself is shared per weights/device (`shared_net`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import cv2
import numpy as np

from anon_core.boxes import nms
from anon_core.detections import Detections
from anon_core.detectors.base import Detector, SharedWork, register_detector
from anon_core.detectors.multiview import grid_tiles
from anon_core.detectors.onnx_session import make_session
from anon_core.weights import ModelInfo, model_dir, resolve_built  # noqa: F401 - model_dir: for callers

COCO_IDS = {"person": 0, "bicycle": 1, "car": 2, "motorcycle": 3, "bus": 5, "truck": 7}
VEHICLES = ("car", "motorcycle", "bus", "truck")
class NanoDetNet:
    """Raw network: letterboxed BGR 416x416 in, class-wise NMS'd boxes out (per COCO id)."""

    size = 416
    strides = (8, 16, 32)
    bins = 11  # GFL: distance distribution over 0..10 strides
    mean = np.array([103.53, 116.28, 123.675], np.float32)
    std = np.array([57.375, 57.12, 58.395], np.float32)

    def __init__(self, weights: str | None = None, device: str = "auto", threads: int = 0):
        self.weights = resolve_built("nanodet", weights)
        self.session = make_session(self.weights.data, device, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.input_layout = "nchw" if self.session.get_inputs()[0].shape[1] == 3 else "nhwc"
        self._order = self._output_order()
        self.centres = {s: self._centres(s) for s in self.strides}

    def _output_order(self) -> list[tuple[int, int]]:
        """(cls output index, box output index) per stride, found from output shapes (names vary by converter)."""
        outs = self.session.get_outputs()
        by_hw: dict[int, dict[int, int]] = {}
        for i, o in enumerate(outs):
            hw, ch = o.shape[-2], o.shape[-1]
            by_hw.setdefault(int(hw), {})[int(ch)] = i
        order = []
        for s in self.strides:
            hw = (self.size // s) ** 2
            order.append((by_hw[hw][80], by_hw[hw][4 * self.bins]))
        return order

    def _centres(self, stride: int) -> np.ndarray:
        n = self.size // stride
        ys, xs = np.mgrid[0:n, 0:n]
        return np.stack([(xs.ravel() + 0.5) * stride, (ys.ravel() + 0.5) * stride], 1).astype(np.float32)

    def info(self) -> ModelInfo:
        return ModelInfo("nanodet-coco", self.weights.version, self.weights.sha256, self.weights.source)

    def prepare(self, rgb: np.ndarray) -> tuple[np.ndarray, float]:
        """Letterbox (top-left aligned) to 416x416; returns the normalised BGR tensor and the scale used."""
        h, w = rgb.shape[:2]
        s = self.size / max(h, w)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
        img = cv2.resize(rgb, (nw, nh), interpolation=interp)
        canvas = np.zeros((self.size, self.size, 3), np.float32)
        # padding stays 0: the mean colour after normalisation
        canvas[:nh, :nw] = (img[..., ::-1].astype(np.float32) - self.mean) / self.std
        return canvas, s

    def forward(self, batch: np.ndarray, class_ids: Sequence[int], threshold: float, nms_iou: float = 0.6):
        """batch: (N, 416, 416, 3) normalised. Returns per image (xyxy, scores, class ids) in network pixels."""
        x = batch.transpose(0, 3, 1, 2) if self.input_layout == "nchw" else batch
        ids = np.asarray(class_ids)
        results = []
        for b in range(len(batch)):
            # the converted graph has batch 1 baked into its reshapes: one image per run
            outs = self.session.run(None, {self.input_name: np.ascontiguousarray(x[b : b + 1])})
            boxes, scores = [], []
            for (ci, bi), s in zip(self._order, self.strides):
                cls = outs[ci][0][:, ids]  # (HW, K), already sigmoid
                best = cls.max(1)
                keep = np.nonzero(best > threshold)[0]
                if not len(keep):
                    continue
                reg = outs[bi][0][keep].reshape(-1, 4, self.bins)
                reg = np.exp(reg - reg.max(-1, keepdims=True))
                dist = (reg / reg.sum(-1, keepdims=True)) @ np.arange(self.bins, dtype=np.float32) * s
                c = self.centres[s][keep]
                boxes.append(np.concatenate([c - dist[:, :2], c + dist[:, 2:]], 1))
                # every class above the threshold at a cell is a candidate (a van is both car and truck)
                scores.append(cls[keep])
            if not boxes:
                results.append((np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)))
                continue
            bx = np.concatenate(boxes)
            sc = np.concatenate(scores)
            out_b, out_s, out_l = [], [], []
            for k, cid in enumerate(ids):
                m = sc[:, k] > threshold
                if not m.any():
                    continue
                kb, ks = bx[m], sc[m, k]
                keep = nms(kb, ks, nms_iou)
                out_b.append(kb[keep])
                out_s.append(ks[keep])
                out_l.append(np.full(len(keep), cid))
            if out_b:
                results.append((np.concatenate(out_b).astype(np.float32), np.concatenate(out_s).astype(np.float32),
                                np.concatenate(out_l).astype(np.int64)))
            else:
                results.append((np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)))
        return results


def plan_tiles(w: int, h: int, tile_size: int, min_side: int) -> list[tuple[int, int, int, int]]:
    """The whole frame, plus overlapping tiles of about tile_size px when the frame is big enough to need them."""
    crops = [(0, 0, w, h)]
    if max(w, h) >= min_side:
        tile = min(tile_size, max(w, h))
        tiles = grid_tiles(w, h, tile, overlap=0.2)
        if len(tiles) > 1:
            crops += tiles
    return crops


def up_tile_side(w: int, h: int, tile_size: int, upscale: float, max_per_row: int = 4) -> int:
    """Side of the upscaled view's tiles: tile_size / upscale, but at most max_per_row tiles across big frames."""
    return int(round(max(tile_size / upscale, max(w, h) / max_per_row)))


def plan_views(w: int, h: int, tile_size: int, min_side: int, kind: str, upscale: float) -> list[tuple]:
    """Crops of one view kind: "whole" (the frame), "tiles" (overlapping tiles of big frames) or "up" (smaller
    tiles: people look bigger)."""
    if kind == "whole":
        return [(0, 0, w, h)]
    if kind == "tiles":
        return plan_tiles(w, h, tile_size, min_side)[1:]
    tiles = grid_tiles(w, h, up_tile_side(w, h, tile_size, upscale), overlap=0.2)
    return tiles if len(tiles) > 1 else []


def _cut_by_inner_edge(b: np.ndarray, crop: tuple[int, int, int, int], w: int, h: int, m: float = 3.0) -> np.ndarray:
    x0, y0, x1, y1 = crop
    cut = np.zeros(len(b), bool)
    if x0 > 0:
        cut |= b[:, 0] <= x0 + m
    if y0 > 0:
        cut |= b[:, 1] <= y0 + m
    if x1 < w:
        cut |= b[:, 2] >= x1 - m
    if y1 < h:
        cut |= b[:, 3] >= y1 - m
    return cut


@lru_cache(maxsize=4)
def shared_net(weights: str | None = None, device: str = "auto", threads: int = 0) -> NanoDetNet:
    """One loaded network per weights/device in a process (sessions are read-only and thread-safe)."""
    return NanoDetNet(weights, device, threads)


class NanoDet:
    """Tiled NanoDet over frames. Labels are COCO names (person, car, ...).

    Raw per-view results go into the caller's `SharedWork` under this configuration's key, so two detectors
    built on the same configuration (persons, plates) run each view of a frame once per batch.
    """

    def __init__(
        self,
        weights: str | None = None,
        threshold: float = 0.2,
        tile_size: int = 640,
        tile_min_side: int = 600,
        nms_iou: float = 0.6,
        merge_iou: float = 0.55,
        batch_size: int = 8,
        device: str = "auto",
        threads: int = 0,
        class_names: Sequence[str] = ("person", *VEHICLES),
    ):
        self.net = shared_net(weights, device, int(threads))
        self.threshold, self.tile_size, self.tile_min_side = float(threshold), int(tile_size), int(tile_min_side)
        self.nms_iou, self.merge_iou, self.batch_size = float(nms_iou), float(merge_iou), int(batch_size)
        self.class_names = tuple(class_names)
        self.class_ids = [COCO_IDS[c] for c in self.class_names]
        self._id_to_name = {COCO_IDS[c]: c for c in self.class_names}
        # what makes two instances' raw views interchangeable
        self.work_key = ("nanodet", weights, device, self.threshold, self.tile_size, self.tile_min_side,
                         self.nms_iou, self.class_names)

    def info(self) -> ModelInfo:
        return self.net.info()

    def detect(self, frames: Sequence[np.ndarray], work: SharedWork | None = None, flip: bool = False,
               upscale: float = 0.0, tiles: bool = True) -> list[Detections]:
        """Boxes from the base views (whole frame, and tiles unless `tiles` is false), plus optionally their mirror
        images and upscaled tiles.

        Raw results are kept in `work` per frame and per view, so the plate search (base views) and the person
        detector (base + extra views) share the base passes of one batch.
        """
        work = work if work is not None else SharedWork()
        keys = [("whole", False)] + ([("tiles", False)] if tiles else [])
        if upscale > 1:
            keys.append(("up", False))
        if flip:
            keys += [(k, True) for k, _ in keys]
        entries = [work.for_frame(f, self.work_key) for f in frames]
        todo = [(i, k) for i, e in enumerate(entries) for k in keys if k not in e]
        if todo:
            self._run(frames, todo, entries, upscale)
        return [self._merge([p for k in keys for p in e[k]]) for e in entries]

    def _run(self, frames: Sequence[np.ndarray], todo: list[tuple[int, tuple[str, bool]]], entries: list[dict],
             upscale: float) -> None:
        items = []  # (frame index, view key, crop)
        for i, key in todo:
            h, w = frames[i].shape[:2]
            entries[i][key] = []
            items += [(i, key, c) for c in plan_views(w, h, self.tile_size, self.tile_min_side, key[0], upscale)]
        for k in range(0, len(items), self.batch_size):
            chunk = items[k : k + self.batch_size]
            tensors, scales = [], []
            for i, (_kind, flip), (x0, y0, x1, y1) in chunk:
                crop = frames[i][y0:y1, x0:x1]
                t, s = self.net.prepare(np.ascontiguousarray(crop[:, ::-1]) if flip else crop)
                tensors.append(t)
                scales.append(s)
            res = self.net.forward(np.stack(tensors), self.class_ids, self.threshold, self.nms_iou)
            for (i, key, crop), s, (b, sc, lab) in zip(chunk, scales, res):
                if not len(sc):
                    continue
                h, w = frames[i].shape[:2]
                b = b / s
                if key[1]:  # back from the mirror image
                    b[:, [0, 2]] = (crop[2] - crop[0]) - b[:, [2, 0]]
                b = b + np.array([crop[0], crop[1], crop[0], crop[1]], np.float32)
                b[:, [0, 2]] = b[:, [0, 2]].clip(crop[0], crop[2])
                b[:, [1, 3]] = b[:, [1, 3]].clip(crop[1], crop[3])
                if crop != (0, 0, w, h):
                    keep = ~_cut_by_inner_edge(b, crop, w, h)
                    b, sc, lab = b[keep], sc[keep], lab[keep]
                entries[i][key].append((b, sc, lab))

    def _merge(self, parts: list) -> Detections:
        parts = [p for p in parts if len(p[1])]
        if not parts:
            return Detections.empty()
        b = np.concatenate([p[0] for p in parts])
        s = np.concatenate([p[1] for p in parts])
        lab = np.concatenate([p[2] for p in parts])
        ob, os_, ol = [], [], []
        for cid in np.unique(lab):
            m = lab == cid
            keep = nms(b[m], s[m], self.merge_iou)
            ob.append(b[m][keep])
            os_.append(s[m][keep])
            ol += [self._id_to_name[int(cid)]] * len(keep)
        return Detections(np.concatenate(ob), np.concatenate(os_), np.array(ol, object))


def nanodet_for(weights: str | None, device: str, threads: int, threshold: float, tile_size: int,
                tile_min_side: int) -> NanoDet:
    """The NanoDet configuration the person and plate detectors build on (same arguments: shared results)."""
    return NanoDet(weights=weights, threshold=threshold, tile_size=tile_size, tile_min_side=tile_min_side,
                   device=device, threads=threads)


class PersonDetector(Detector):
    """Person boxes from NanoDet; with `silhouettes`, a per-person mask from the selfie segmentation model."""

    classes = ("person",)

    def __init__(
        self,
        weights: str | None = None,
        threshold: float = 0.35,
        candidate_threshold: float = 0.1,
        tile_size: int = 640,
        tile_min_side: int = 600,
        silhouettes: bool = True,
        silhouette_min_height: int = 64,
        segmentation_weights: str | None = None,
        device: str = "auto",
        threads: int = 0,
        flip: bool = True,
        upscale: float = 2.0,
    ):
        self.threshold = float(threshold)
        # Extra views (measured on shared/data/persons, AP50 0.797 -> 0.816, see models/nanodet.md): the mirror image
        # (NanoDet is not flip-invariant) and tiles of tile_size/upscale px, where small people cover more cells.
        # Views are merged by class-wise NMS (max score): noisy-OR fusion raised recall but lowered AP here.
        self.flip, self.upscale = bool(flip), float(upscale)
        self._nanodet_args = (weights, device, int(threads), float(candidate_threshold), int(tile_size),
                              int(tile_min_side))
        self._seg_args = (segmentation_weights, device, int(threads), int(silhouette_min_height))
        self.silhouettes = bool(silhouettes)

    def load(self) -> None:
        self.nanodet = nanodet_for(*self._nanodet_args)
        self.segmenter = None
        if self.silhouettes:
            from anon_core.detectors.segmentation import PersonSegmenter

            self.segmenter = PersonSegmenter(*self._seg_args)

    def model_infos(self) -> list[ModelInfo]:
        return [self.nanodet.info()]

    def predict(self, frames: Sequence[np.ndarray], min_score: float, work: SharedWork) -> list[Detections]:
        out = []
        for f, d in zip(frames, self.nanodet.detect(frames, work, flip=self.flip, upscale=self.upscale)):
            d = d[(d.labels == "person") & (d.scores >= min_score)]
            if self.segmenter is not None and len(d):
                d.masks = self.segmenter.masks(f, d.xyxy)
            out.append(d)
        return out


@register_detector("nanodet_person")
def _person(**params) -> PersonDetector:
    return PersonDetector(**params)
