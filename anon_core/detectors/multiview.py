"""Run a raw face network over several views of each frame (scales, flips, tiles) and merge.

Recall is what matters for anonymization: small faces need upscaled views, profiles gain from
a mirrored view, and large images are tiled so that no face falls below the network's smallest
anchor. Views of equal size are batched together across frames.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from anon_core.boxes import iou_matrix
from anon_core.detections import Detections


@dataclass(frozen=True)
class View:
    frame: int
    scale: float  # network pixels per image pixel
    flip: bool
    x0: int  # crop origin in image pixels
    y0: int
    x1: int
    y1: int
    rot: int = 0  # counter-clockwise quarter turns of the view (lying and upside-down faces)

    @property
    def key(self) -> tuple:
        """The evidence this view stands for in fusion: upscaled, mirrored and rotated views are separate witnesses."""
        return (self.scale > 1, self.flip, self.rot)


def _round_up(v: float, m: int) -> int:
    return max(m, int(np.ceil(v / m) * m))


def plan_views(
    shape: tuple[int, int],
    frame: int,
    scales: Sequence[float],
    max_side: int,
    flip: bool,
    tile_size: int,
    rotations: Sequence[int] = (),
) -> list[View]:
    """Views for one frame.

    Upscaled views (scale > 1) are capped so the scaled frame fits in max_side: their job is the
    smallest faces, and past the cap the cost grows faster than the recall. A frame that is larger
    than max_side even at scale 1 is cut into overlapping tiles of about tile_size instead. `rotations`
    (quarter turns, 1-3) add rotated copies of the native-scale views: the networks were trained on upright faces.
    """
    h, w = shape
    views: list[View] = []
    done: list[float] = []
    for s in scales:
        if s > 1:
            s = min(s, max_side / max(w, h))
            if s <= 1.0 or any(abs(s - d) < 0.1 * d for d in done):
                continue  # the cap made it a duplicate of a view we already run
        done.append(s)
        if max(w, h) * s <= max_side:
            crops = [(0, 0, w, h)]
        else:
            crops = grid_tiles(w, h, tile_size / s, overlap=0.2)
        for c in crops:
            views.append(View(frame, s, False, *c))
            if flip:
                views.append(View(frame, s, True, *c))
            if s == 1.0:
                views += [View(frame, s, False, *c, rot=int(k) % 4) for k in rotations if int(k) % 4]
    return views


def grid_tiles(w: int, h: int, tile: float, overlap: float) -> list[tuple[int, int, int, int]]:
    """Square tiles of side `tile` covering a w x h frame, neighbours overlapping by `overlap` (x1, y1, x2, y2)."""
    def starts(n: int) -> list[int]:
        if n <= tile:
            return [0]
        k = int(np.ceil((n - tile * overlap) / (tile * (1 - overlap))))
        step = (n - tile) / max(k - 1, 1)
        return [int(round(i * step)) for i in range(k)]

    t = int(round(tile))
    return [(x, y, min(x + t, w), min(y + t, h)) for y in starts(h) for x in starts(w)]


def _render(frame: np.ndarray, v: View, stride: int) -> tuple[np.ndarray, float, float]:
    crop = frame[v.y0 : v.y1, v.x0 : v.x1]
    cw, ch = v.x1 - v.x0, v.y1 - v.y0
    nw, nh = _round_up(cw * v.scale, stride), _round_up(ch * v.scale, stride)
    interp = cv2.INTER_LINEAR if v.scale >= 1 else cv2.INTER_AREA
    img = cv2.resize(crop, (nw, nh), interpolation=interp) if (nw, nh) != (cw, ch) else crop
    if v.flip:
        img = img[:, ::-1]
    if v.rot:
        img = np.rot90(img, v.rot)
    return np.ascontiguousarray(img), nw / cw, nh / ch


def unrotate(pts: np.ndarray, k: int, w: float, h: float) -> np.ndarray:
    """Points (..., 2) of an image turned by np.rot90(., k) back to the unturned w x h image."""
    x, y = pts[..., 0], pts[..., 1]
    k %= 4
    if k == 1:
        x, y = w - y, x
    elif k == 2:
        x, y = w - x, h - y
    elif k == 3:
        x, y = y, h - x
    return np.stack([x, y], axis=-1)


def unrotate_boxes(b: np.ndarray, k: int, w: float, h: float) -> np.ndarray:
    c = unrotate(b.reshape(-1, 2, 2), k, w, h)
    return np.concatenate([c.min(axis=1), c.max(axis=1)], axis=1)


def run_views(model, frames: Sequence[np.ndarray], views: list[View], threshold: float, batch_size: int):
    """Returns per-frame lists of (boxes, scores, landmarks, view), boxes in image coordinates."""
    per_frame: dict[int, list] = defaultdict(list)
    groups: dict[tuple[int, int], list] = defaultdict(list)
    for v in views:
        img, sx, sy = _render(frames[v.frame], v, model.stride)
        groups[img.shape[:2]].append((img, sx, sy, v))
    for items in groups.values():
        for i in range(0, len(items), batch_size):
            chunk = items[i : i + batch_size]
            results = model.forward(np.stack([c[0] for c in chunk]), threshold)
            for (img, sx, sy, v), (b, s, lm) in zip(chunk, results):
                if not len(s):
                    continue
                b, lm = b.copy(), lm.copy()
                if v.rot:  # back to the unturned (scaled) view first, then mirror, then scale
                    hn, wn = img.shape[:2] if v.rot == 2 else img.shape[1::-1]
                    b = unrotate_boxes(b, v.rot, wn, hn).astype(np.float32)
                    lm = unrotate(lm, v.rot, wn, hn).astype(np.float32)
                if v.flip:
                    wn = img.shape[1]
                    b[:, [0, 2]] = wn - b[:, [2, 0]]
                    lm[:, :, 0] = wn - lm[:, :, 0]
                    lm = lm[:, [1, 0, 2, 4, 3]]  # left/right eye and mouth corners swap in a mirror
                b[:, [0, 2]] = b[:, [0, 2]] / sx + v.x0
                b[:, [1, 3]] = b[:, [1, 3]] / sy + v.y0
                lm[:, :, 0] = lm[:, :, 0] / sx + v.x0
                lm[:, :, 1] = lm[:, :, 1] / sy + v.y0
                if (v.x0, v.y0, v.x1, v.y1) != (0, 0, frames[v.frame].shape[1], frames[v.frame].shape[0]):
                    keep = _not_cut_by_inner_edge(b, v, frames[v.frame].shape)
                    b, s, lm = b[keep], s[keep], lm[keep]
                per_frame[v.frame].append((b, s, lm, v, model.name))
    return per_frame


def _not_cut_by_inner_edge(b: np.ndarray, v: View, shape: tuple) -> np.ndarray:
    """A face touching a tile edge that is inside the image is only partly seen; its neighbour tile sees it whole."""
    h, w = shape[:2]
    m = 2.0
    cut = np.zeros(len(b), bool)
    if v.x0 > 0:
        cut |= b[:, 0] <= v.x0 + m
    if v.y0 > 0:
        cut |= b[:, 1] <= v.y0 + m
    if v.x1 < w:
        cut |= b[:, 2] >= v.x1 - m
    if v.y1 < h:
        cut |= b[:, 3] >= v.y1 - m
    return ~cut


def evidence_key(net: str, v: View) -> str:
    """A view's name in the evidence: net@1 (native), net@2 (upscaled), suffix f (mirrored), rK (turned)."""
    return f"{net}@{2 if v.scale > 1 else 1}{'f' if v.flip else ''}{f'r{v.rot}' if v.rot else ''}"


def fuse(parts: list, iou: float, width: int, height: int, label: str, upscale_max_face: float = 0.0,
         score_fusion: str = "noisy_or") -> Detections:
    """Merge the detections of all views into one set (see `fuse_evidence`)."""
    return fuse_evidence(parts, iou, width, height, label, upscale_max_face, score_fusion)[0]


def fuse_evidence(parts: list, iou: float, width: int, height: int, label: str, upscale_max_face: float = 0.0,
                  score_fusion: str = "noisy_or") -> tuple[Detections, dict[str, np.ndarray], np.ndarray]:
    """Merge the detections of all views into one set, with each view's best score per merged detection.

    - Upscaled views exist to find small faces; their large detections are mostly texture seen too
      close, so a view with scale > 1 only contributes faces smaller than `upscale_max_face` px
      (in image pixels; 0 = no limit), like a scale-specific valid range.
    - Boxes in a cluster are averaged, weighted by score (steadier than any single view).
    - Scores: "noisy_or" treats each (network, scale, flip, rotation) view as independent evidence,
      1 - prod(1 - best score per view), so a face seen by several views outranks a blip seen by one; "max"
      keeps the best single score.

    Returns (detections, evidence, rot): evidence maps `evidence_key` -> (N,) best score of that view in each
    merged detection (0 where it saw nothing); rot is the quarter turn of each detection's best view (a verifier
    looks at a lying face the way the view that found it did).

    Greedy clustering, best score first, one box against the remaining ones per step: memory stays
    linear in the number of candidates (crowds give thousands at low thresholds).
    """
    sel, names = [], {}
    for p in parts:
        b, s, lm, v = p[:4]
        net = p[4] if len(p) > 4 else ""
        if upscale_max_face and v.scale > 1:
            k = (b[:, 2:] - b[:, :2]).min(axis=1) < upscale_max_face
            b, s, lm = b[k], s[k], lm[k]
        if len(s):
            key = evidence_key(net, v)
            vi = names.setdefault(key, len(names))
            sel.append((b, s, lm, np.full(len(s), vi), np.full(len(s), v.rot)))
    if not sel:
        return Detections.empty(), {}, np.zeros(0, np.int64)
    b = np.concatenate([p[0] for p in sel]).astype(np.float64)
    s = np.concatenate([p[1] for p in sel])
    lm = np.concatenate([p[2] for p in sel])
    vid = np.concatenate([p[3] for p in sel])
    rots = np.concatenate([p[4] for p in sel])
    order = np.argsort(-s, kind="stable")
    b, s, lm, vid, rots = b[order], s[order], lm[order], vid[order], rots[order]
    remaining = np.arange(len(s))
    ob, os_, olm, orot, ev = [], [], [], [], []
    while remaining.size:
        i = remaining[0]
        members = remaining[iou_matrix(b[i : i + 1], b[remaining])[0] > iou]
        members = members if members.size else remaining[:1]
        remaining = np.setdiff1d(remaining, members, assume_unique=True)
        wts = s[members][:, None]
        ob.append((b[members] * wts).sum(0) / wts.sum())
        olm.append((lm[members] * wts[:, :, None]).sum(0) / wts.sum())
        orot.append(int(rots[i]))
        best = np.zeros(len(names))
        for j in members[::-1]:  # members are in descending score order: the last write per view is its best
            best[vid[j]] = s[j]
        ev.append(best)
        if score_fusion == "noisy_or":
            os_.append(1.0 - float(np.prod(1.0 - best)))
        else:
            os_.append(float(s[i]))
    xyxy = np.asarray(ob, np.float32)
    xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, width)
    xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, height)
    evm = np.asarray(ev, np.float32)
    evidence = {k: evm[:, i] for k, i in names.items()}
    dets = Detections(xyxy, np.asarray(os_, np.float32), np.full(len(os_), label, object), landmarks=np.asarray(olm))
    return dets, evidence, np.asarray(orot, np.int64)
