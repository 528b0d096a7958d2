"""Detector-independent leak rate: did the anonymized image really hide each ground-truth object?

Each GT box is cropped from the original and the anonymized image, both crops are resampled so the shorter
side is NORM_SIDE (32) px -- thresholds then mean the same for a 12 px and a 300 px face, and tiny boxes get
the 7 px SSIM window -- and two scores are computed:
- SSIM (grayscale, 7x7 window): low when the structure was replaced (fill, strong blur, coarse pixelation).
- Retained fine detail: projection of the anonymized Laplacian onto the original Laplacian,
  <L(anon), L(orig)> / <L(orig), L(orig)>: 1 when the original high-frequency detail is intact, ~0 when it was
  removed. Unlike a plain Laplacian-variance ratio it ignores *new* edges (pixelation block borders, noise),
  which carry no identity.
A box is obscured when SSIM < ssim_threshold OR detail < detail_threshold; otherwise it leaked.

Defaults (SSIM 0.5, detail 0.4) come from a sweep over skimage's astronaut face at 12-128 px and 1042 WIDER
dev-set faces >= 10 px (share counted obscured): solid fill 100 %, gaussian blur sigma = 0.1 * min(w, h)
100 % (0.08: 98 %, 0.05: 65 %), pixelation to 4 blocks 100 %, to 8 blocks 88 % (the misses are faces under
~20 px, where 8 blocks barely change the pixels); unchanged 0 %, JPEG q40 0 %, +-20 noise 0 %, a quarter of
the box blurred or filled 2 % (detail 5th percentile 0.46-0.48, SSIM 0.66-0.78). Half the box blurred is
deliberately in between (33 %). The detail score decides nearly every case; SSIM is the backstop for
replacements that keep edges.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image
from skimage.metrics import structural_similarity

from anon_core.evaluation.groundtruth import GroundTruthImage

SSIM_THRESHOLD = 0.5
DETAIL_THRESHOLD = 0.4
MIN_SIZE = 10
NORM_SIDE = 32  # crops are resampled to this shorter side before scoring
_WIN = 7  # SSIM window
# Size bands (shorter box side, px) every leak figure is reported by; boxes under MIN_SIZE are not scored.
SIZE_BANDS: tuple[tuple[float, float], ...] = ((10, 24), (24, 64), (64, math.inf))


def _gray(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] >= 3:
        return cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_RGB2GRAY).astype(np.float64)
    return img.reshape(img.shape[:2]).astype(np.float64)


def _int_box(box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """Pixels whose centres lie in the box (x2/y2 exclusive), clipped to the image."""
    x1, y1 = int(np.floor(box[0])), int(np.floor(box[1]))
    x2, y2 = int(np.ceil(box[2])), int(np.ceil(box[3]))
    return max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)


def _normalise(a: np.ndarray, b: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Resample both crops so the shorter side is `side` (area averaging down, linear up)."""
    h, w = a.shape
    f = side / max(min(h, w), 1)
    size = (max(side, round(w * f)), max(side, round(h * f)))
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
    return cv2.resize(a, size, interpolation=interp), cv2.resize(b, size, interpolation=interp)


def box_scores(original: np.ndarray, anonymized: np.ndarray, norm_side: int = NORM_SIDE) -> tuple[float, float]:
    """(SSIM, retained detail) of two same-size crops (gray or RGB)."""
    a, b = _normalise(_gray(original), _gray(anonymized), max(norm_side, _WIN))
    ssim = float(structural_similarity(a, b, data_range=255.0, win_size=_WIN))
    la = cv2.Laplacian(a, cv2.CV_64F, ksize=1)
    lb = cv2.Laplacian(b, cv2.CV_64F, ksize=1)
    energy = float((la * la).sum())
    # a flat original has no detail to leak; let SSIM decide alone
    detail = float((la * lb).sum() / energy) if energy > 1e-6 * la.size else 1.0
    return ssim, max(detail, 0.0)


@dataclass
class LeakResult:
    """Per-GT-box outcome for one image. Skipped boxes (too small) have evaluated=False and leaked=False."""

    evaluated: np.ndarray
    leaked: np.ndarray
    ssim: np.ndarray
    detail: np.ndarray
    over_masking: float | None
    changed_outside: int
    pixels_outside: int

    @property
    def n_evaluated(self) -> int:
        return int(self.evaluated.sum())

    @property
    def n_leaked(self) -> int:
        return int(self.leaked.sum())

    @property
    def leak_rate(self) -> float | None:
        return self.n_leaked / self.n_evaluated if self.n_evaluated else None

    def to_dict(self) -> dict:
        return {
            "n_boxes": int(len(self.evaluated)),
            "n_evaluated": self.n_evaluated,
            "n_leaked": self.n_leaked,
            "leak_rate": self.leak_rate,
            "over_masking": self.over_masking,
            "ssim": [None if np.isnan(s) else float(s) for s in self.ssim],
            "detail": [None if np.isnan(s) else float(s) for s in self.detail],
            "leaked": [bool(x) for x in self.leaked],
            "evaluated": [bool(x) for x in self.evaluated],
        }


def over_masking(
    original: np.ndarray, anonymized: np.ndarray, protected: np.ndarray, tolerance: int = 10
) -> tuple[float | None, int, int]:
    """Share of pixels outside `protected` boxes (GT + ignore) that changed by more than `tolerance` in any channel.

    The tolerance absorbs lossy re-encoding noise. Returns (share or None if nothing is outside, changed, outside).
    """
    o, a = np.asarray(original), np.asarray(anonymized)
    if o.shape != a.shape:
        raise ValueError(f"image shapes differ: {o.shape} vs {a.shape}")
    h, w = o.shape[:2]
    diff = np.abs(o.astype(np.int16) - a.astype(np.int16))
    changed = diff.max(axis=2) > tolerance if diff.ndim == 3 else diff > tolerance
    outside = np.ones((h, w), bool)
    for box in np.asarray(protected, float).reshape(-1, 4):
        x1, y1, x2, y2 = _int_box(box, w, h)
        outside[y1:y2, x1:x2] = False
    n_out = int(outside.sum())
    n_changed = int((changed & outside).sum())
    return (n_changed / n_out if n_out else None), n_changed, n_out


def leak_image(
    original: np.ndarray,
    anonymized: np.ndarray,
    gt: GroundTruthImage | np.ndarray,
    ssim_threshold: float = SSIM_THRESHOLD,
    detail_threshold: float = DETAIL_THRESHOLD,
    min_size: float = MIN_SIZE,
    tolerance: int = 10,
    norm_side: int = NORM_SIDE,
) -> LeakResult:
    """Classify each GT box of one image as obscured or leaked, and measure over-masking.

    gt: a GroundTruthImage (boxes + ignore) or a bare (N, 4) box array. Boxes with min(w, h) < min_size are
    skipped: they are too small to identify anyone and SSIM on them is noise.
    """
    o, a = np.asarray(original), np.asarray(anonymized)
    if o.shape != a.shape:
        raise ValueError(f"image shapes differ: {o.shape} vs {a.shape}")
    if isinstance(gt, GroundTruthImage):
        boxes, ignore = gt.boxes, gt.ignore
    else:
        boxes, ignore = np.asarray(gt, float).reshape(-1, 4), np.zeros((0, 4))
    h, w = o.shape[:2]
    n = len(boxes)
    evaluated = np.zeros(n, bool)
    leaked = np.zeros(n, bool)
    ssim = np.full(n, np.nan)
    detail = np.full(n, np.nan)
    for i, box in enumerate(boxes):
        x1, y1, x2, y2 = _int_box(box, w, h)
        if min(box[2] - box[0], box[3] - box[1]) < min_size or x2 <= x1 or y2 <= y1:
            continue
        s, d = box_scores(o[y1:y2, x1:x2], a[y1:y2, x1:x2], norm_side)
        evaluated[i] = True
        ssim[i], detail[i] = s, d
        leaked[i] = not (s < ssim_threshold or d < detail_threshold)
    share, changed, outside = over_masking(o, a, np.concatenate([boxes, ignore]), tolerance)
    return LeakResult(evaluated, leaked, ssim, detail, share, changed, outside)


def leak_dataset(
    items: Iterable[tuple[np.ndarray, np.ndarray, GroundTruthImage | np.ndarray]], **kwargs
) -> dict:
    """Aggregate over (original, anonymized, gt) triples: leak_rate = leaked / evaluated over all boxes."""
    n_eval = n_leak = changed = outside = 0
    n_images = 0
    bands: dict = {}
    for orig, anon, gt in items:
        r = leak_image(orig, anon, gt, **kwargs)
        add_bands(bands, gt.boxes if isinstance(gt, GroundTruthImage) else gt, r)
        n_images += 1
        n_eval += r.n_evaluated
        n_leak += r.n_leaked
        changed += r.changed_outside
        outside += r.pixels_outside
    return {
        "n_images": n_images,
        "n_evaluated": n_eval,
        "n_leaked": n_leak,
        "leak_rate": n_leak / n_eval if n_eval else None,
        "by_size": band_rates(bands),
        "over_masking": changed / outside if outside else None,
    }


def band_name(lo: float, hi: float) -> str:
    return f"{lo:g}+" if math.isinf(hi) else f"{lo:g}-{hi:g}"


def add_bands(acc: dict, boxes: np.ndarray, res: LeakResult) -> dict:
    """Add one image's evaluated/leaked counts per size band (shorter side) into acc[band] = {n_evaluated, n_leaked}."""
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    side = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    for lo, hi in SIZE_BANDS:
        m = (side >= lo) & (side < hi) & res.evaluated
        b = acc.setdefault(band_name(lo, hi), {"n_evaluated": 0, "n_leaked": 0})
        b["n_evaluated"] += int(m.sum())
        b["n_leaked"] += int((m & res.leaked).sum())
    return acc


def band_rates(acc: dict) -> dict:
    """acc from add_bands with leak_rate added per band (None where no box was evaluated)."""
    return {k: {**v, "leak_rate": v["n_leaked"] / v["n_evaluated"] if v["n_evaluated"] else None}
            for k, v in acc.items()}


# ------------------------------------------------------------------------------------------- controls
# The metric's own checks, run on real images: outputs whose answer is known whatever the detector does.
# - reencode: the unmasked image through a JPEG round trip (what an anonymizer that masked nothing publishes):
#   every face must count as leaked.
# - fill: every GT box filled with its own mean colour (the flat fill closest to the face in luminance, the
#   hardest fill for SSIM): no face may count as leaked.
# - blur: every GT box blurred with sigma = BLUR_CONTROL x its longer side (the default face mask's strength):
#   no face may count as leaked, smooth (low-detail, blurry, dark) faces included; the smoothest decile is
#   reported on its own because that is where a detail ratio is least stable.
CONTROLS = ("reencode", "fill", "blur")
BLUR_CONTROL = 0.25


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img[..., :3])).save(buf, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def control_outputs(original: np.ndarray, boxes: np.ndarray, jpeg_quality: int = 92) -> dict[str, np.ndarray]:
    """The three control outputs of one image (see CONTROLS) for its GT boxes (N, 4)."""
    o = np.asarray(original)[..., :3]
    h, w = o.shape[:2]
    filled, blurred = o.copy(), o.copy()
    for box in np.asarray(boxes, float).reshape(-1, 4):
        x1, y1, x2, y2 = _int_box(box, w, h)
        if x2 <= x1 or y2 <= y1:
            continue
        crop = o[y1:y2, x1:x2]
        filled[y1:y2, x1:x2] = crop.reshape(-1, 3).mean(0).round().astype(np.uint8)
        sigma = max(1.0, BLUR_CONTROL * max(x2 - x1, y2 - y1))
        # blur with real context around the box (as a mask operator does), then keep the box only
        m = int(math.ceil(2 * sigma))
        cx1, cy1, cx2, cy2 = max(0, x1 - m), max(0, y1 - m), min(w, x2 + m), min(h, y2 + m)
        ctx = cv2.GaussianBlur(np.ascontiguousarray(o[cy1:cy2, cx1:cx2]), (0, 0), sigma,
                               borderType=cv2.BORDER_REFLECT)
        blurred[y1:y2, x1:x2] = ctx[y1 - cy1:y2 - cy1, x1 - cx1:x2 - cx1]
    return {"reencode": _jpeg(o, jpeg_quality), "fill": filled, "blur": blurred}


def detail_energy(original: np.ndarray, box: np.ndarray, norm_side: int = NORM_SIDE) -> float:
    """Mean squared Laplacian of the normalised gray crop: how much fine detail a face has to leak."""
    h, w = original.shape[:2]
    x1, y1, x2, y2 = _int_box(np.asarray(box, float), w, h)
    if x2 <= x1 or y2 <= y1:
        return 0.0
    g = _gray(original[y1:y2, x1:x2])
    a, _ = _normalise(g, g, max(norm_side, _WIN))
    la = cv2.Laplacian(a, cv2.CV_64F, ksize=1)
    return float((la * la).mean())


class ControlLeak:
    """Accumulates the controls over images: leak rate per control, per size band, and on the smoothest faces."""

    def __init__(self, jpeg_quality: int = 92, **kwargs) -> None:
        self.jpeg_quality, self.kwargs = int(jpeg_quality), kwargs
        self.acc: dict[str, dict] = {c: {"n_evaluated": 0, "n_leaked": 0, "by_size": {}} for c in CONTROLS}
        self.per_box: dict[str, list] = {"energy": [], **{c: [] for c in CONTROLS}}
        self.n_images = 0

    def add(self, original: np.ndarray, gt: GroundTruthImage) -> dict[str, LeakResult]:
        outs = control_outputs(original, gt.boxes, self.jpeg_quality)
        res = {}
        for c, out in outs.items():
            r = leak_image(original, out, gt, **self.kwargs)
            a = self.acc[c]
            a["n_evaluated"] += r.n_evaluated
            a["n_leaked"] += r.n_leaked
            add_bands(a["by_size"], gt.boxes, r)
            self.per_box[c] += [bool(x) for x in r.leaked[r.evaluated]]
            res[c] = r
        ev = res["fill"].evaluated
        self.per_box["energy"] += [detail_energy(original, b) for b in np.asarray(gt.boxes)[ev]]
        self.n_images += 1
        return res

    def result(self) -> dict:
        out: dict = {"n_images": self.n_images, "jpeg_quality": self.jpeg_quality, "blur_strength": BLUR_CONTROL,
                     "expected_leak_rate": {"reencode": 1.0, "fill": 0.0, "blur": 0.0}}
        energy = np.asarray(self.per_box["energy"])
        smooth = energy <= np.quantile(energy, 0.1) if len(energy) else np.zeros(0, bool)
        for c in CONTROLS:
            a = self.acc[c]
            leaked = np.asarray(self.per_box[c], bool)
            out[c] = {"n_evaluated": a["n_evaluated"], "n_leaked": a["n_leaked"],
                      "leak_rate": a["n_leaked"] / a["n_evaluated"] if a["n_evaluated"] else None,
                      "by_size": band_rates(a["by_size"]),
                      "smoothest_decile": {"n_evaluated": int(smooth.sum()),
                                           "n_leaked": int((leaked & smooth).sum()) if len(leaked) else 0}}
        return out


def _longest_runs(events: dict[int, list[tuple[int, bool]]]) -> dict[int, int]:
    """Longest run of consecutive leaked frames per track; a missing frame number breaks the run."""
    out = {}
    for tid, seq in events.items():
        best = run = 0
        prev = None
        for frame, is_leak in sorted(seq):
            if not is_leak or (prev is not None and frame != prev + 1):
                run = 0
            if is_leak:
                run += 1
                best = max(best, run)
            prev = frame
        out[tid] = best
    return out


class VideoLeak:
    """`leak_video`'s accumulator: add frames one at a time (nothing but counts is kept), then `result()`."""

    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs
        self.events: dict[int, list[tuple[int, bool]]] = defaultdict(list)
        self.n_eval = self.n_leak = self.n_frames = self.frames_leaked = self.changed = self.outside = 0
        self.bands: dict = {}

    def add(self, frame: int, orig: np.ndarray, anon: np.ndarray, gt: GroundTruthImage) -> None:
        r = leak_image(orig, anon, gt, **self.kwargs)
        self.n_frames += 1
        self.n_eval += r.n_evaluated
        self.n_leak += r.n_leaked
        self.frames_leaked += int(r.n_leaked > 0)
        add_bands(self.bands, gt.boxes, r)
        self.changed += r.changed_outside
        self.outside += r.pixels_outside
        tids = gt.track_ids if gt.track_ids is not None else np.arange(len(gt.boxes))
        for tid, ev, lk in zip(tids, r.evaluated, r.leaked):
            if ev:
                self.events[int(tid)].append((int(frame), bool(lk)))

    def result(self) -> dict:
        runs = _longest_runs(self.events)
        n_eval, n_frames = self.n_eval, self.n_frames
        return {
            "n_frames": n_frames,
            "n_evaluated": n_eval,
            "n_leaked": self.n_leak,
            "leak_rate": self.n_leak / n_eval if n_eval else None,
            "by_size": band_rates(self.bands),
            "frames_with_leak": self.frames_leaked,
            "frame_leak_rate": self.frames_leaked / n_frames if n_frames else None,
            "over_masking": self.changed / self.outside if self.outside else None,
            "longest_leak_run": {str(k): v for k, v in sorted(runs.items())},
            "max_longest_leak_run": max(runs.values(), default=0),
        }


def leak_video(
    frames: Iterable[tuple[int, np.ndarray, np.ndarray, GroundTruthImage]], **kwargs
) -> dict:
    """Frame-level leak over (frame, object) pairs of a sequence.

    frames: (frame_number, original, anonymized, gt) in any order; gt.track_ids name the objects (one object
    per box index when absent). Returns leak_rate over evaluated (frame, object) pairs, the share of frames
    with any leak, and the longest run of consecutive leaked frames per track id (skipped or absent frames
    break a run; they are not counted as leaked).
    """
    acc = VideoLeak(**kwargs)
    for frame, orig, anon, gt in frames:
        acc.add(frame, orig, anon, gt)
    return acc.result()
