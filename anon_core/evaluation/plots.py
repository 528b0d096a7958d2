"""Validation pictures: the PR / recall-FPR curves and a contact sheet of the worst misses."""

from __future__ import annotations

import heapq
import logging
import math
from pathlib import Path

import numpy as np

from anon_core.evaluation.groundtruth import GroundTruthImage

log = logging.getLogger("anon.validate")
GALLERY_SIZE = 24


class MissGallery:
    """Keeps crops of the largest missed GT boxes (a missed big face is the worst miss), bounded in memory."""

    def __init__(self, size: int = GALLERY_SIZE, side: int = 96):
        self.size, self.side = size, side
        self.heap: list[tuple[float, int, dict]] = []
        self.n = 0

    def add(self, img: np.ndarray, gt: GroundTruthImage, missed: np.ndarray, best: np.ndarray, leaked: np.ndarray):
        import cv2

        for i in np.flatnonzero(missed):
            x1, y1, x2, y2 = gt.boxes[i]
            side = float(min(x2 - x1, y2 - y1))
            if side < 10:
                continue
            self.n += 1
            if len(self.heap) == self.size and side <= self.heap[0][0]:
                continue
            xi1, yi1 = max(int(x1), 0), max(int(y1), 0)
            xi2, yi2 = min(int(math.ceil(x2)), img.shape[1]), min(int(math.ceil(y2)), img.shape[0])
            crop = img[yi1:yi2, xi1:xi2]
            if crop.size == 0:
                continue
            f = self.side / max(crop.shape[:2])
            crop = cv2.resize(crop, (max(1, round(crop.shape[1] * f)), max(1, round(crop.shape[0] * f))))
            item = {"crop": crop, "file": gt.file, "box": [float(v) for v in gt.boxes[i]], "min_side": side,
                    "best_score": None if not np.isfinite(best[i]) else float(best[i]), "leaked": bool(leaked[i])}
            entry = (side, self.n, item)
            if len(self.heap) < self.size:
                heapq.heappush(self.heap, entry)
            else:
                heapq.heapreplace(self.heap, entry)

    def items(self) -> list[dict]:
        return [e[2] for e in sorted(self.heap, key=lambda e: -e[0])]

    def save(self, path: Path) -> bool:
        from PIL import Image, ImageDraw

        items = self.items()
        if not items:
            return False
        cols = min(6, len(items))
        rows = -(-len(items) // cols)
        cell_w, cell_h = self.side + 8, self.side + 30
        sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), (255, 255, 255))
        draw = ImageDraw.Draw(sheet)
        for k, it in enumerate(items):
            x, y = (k % cols) * cell_w + 4, (k // cols) * cell_h + 4
            sheet.paste(Image.fromarray(np.ascontiguousarray(it["crop"])), (x, y))
            score = "none" if it["best_score"] is None else f"{it['best_score']:.2f}"
            draw.text((x, y + self.side + 1), f"{it['min_side']:.0f}px s={score}", fill=(0, 0, 0))
            draw.text((x, y + self.side + 13), "LEAKED" if it["leaked"] else "masked anyway",
                      fill=(200, 0, 0) if it["leaked"] else (0, 120, 0))
        sheet.save(path)
        return True


def plot_pr(metrics: dict, path: Path) -> bool:
    """PR curve + recall/FPR against threshold, one line per class. False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib not installed: no PR curve plot (pip install matplotlib)")
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for c, res in metrics["detection"].items():
        cur = res.get("pr_curve") or {}
        if not cur.get("threshold"):
            continue
        r = [np.nan if v is None else v for v in cur["recall"]]
        p = [np.nan if v is None else v for v in cur["precision"]]
        ap = res.get("ap")
        line = ax1.plot(r, p, label=f"{c} AP@{metrics['iou']:g}={ap:.3f}" if ap is not None else c)[0]
        at = res["at_threshold"]
        if at["recall"] is not None and at["precision"] is not None:
            ax1.plot(at["recall"], at["precision"], "o", color=line.get_color())
            ax1.annotate(f"thr {at['threshold']:.2f}", (at["recall"], at["precision"]), fontsize=8)
        cal = (metrics.get("calibration") or {}).get(c) or {}
        if cal.get("threshold") is not None:
            ax1.plot(cal["recall"], cal["precision"], "s", color=line.get_color())
            ax1.annotate(f"FPR<={cal['target_fpr']:g}: {cal['threshold']:.2f}", (cal["recall"], cal["precision"]),
                         fontsize=8)
        t = cur["threshold"]
        ax2.plot(t, r, color=line.get_color(), label=f"{c} recall")
        ax2.plot(t, [np.nan if v is None else v for v in cur["fpr"]], "--", color=line.get_color(),
                 label=f"{c} FPR")
    ax1.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="precision / recall")
    ax2.set(xlabel="score threshold", ylabel="rate", xlim=(0, 1), ylim=(0, 1.02),
            title="recall and FPR (false / all detections)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.suptitle(Path(metrics["dataset"]["path"]).name, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
