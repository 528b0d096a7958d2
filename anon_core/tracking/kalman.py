"""Constant-velocity Kalman filter over boxes, batched over tracks.

State per track: (cx, cy, w, h, vcx, vcy, vw, vh), in pixels and pixels per frame.
Width and height are kept separately (not aspect ratio) because plates and persons have very
different shapes and the masks are axis-aligned boxes anyway.
Noise is proportional to box size, so a 20 px face and a 400 px person behave alike.
"""

from __future__ import annotations

import numpy as np

STATE_DIM = 8
MEAS_DIM = 4


def xyxy_to_cxcywh(xyxy: np.ndarray) -> np.ndarray:
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    wh = xyxy[:, 2:] - xyxy[:, :2]
    return np.concatenate([xyxy[:, :2] + wh / 2, wh], axis=1)


def cxcywh_to_xyxy(cxcywh: np.ndarray) -> np.ndarray:
    cxcywh = np.asarray(cxcywh, dtype=np.float64).reshape(-1, 4)
    # A filter can drive sizes towards zero or below; a mask box never shrinks under one pixel.
    half = np.maximum(cxcywh[:, 2:4], 1.0) / 2
    return np.concatenate([cxcywh[:, :2] - half, cxcywh[:, :2] + half], axis=1)


class BoxKalman:
    """Batched predict/update for N tracks: means (N, 8), covariances (N, 8, 8)."""

    def __init__(self, pos_std: float = 1 / 20, vel_std: float = 1 / 160) -> None:
        # pos_std / vel_std: standard deviations as a fraction of box size (position per
        # measurement, velocity per frame); values in the range used by SORT-family trackers.
        self.pos_std = float(pos_std)
        self.vel_std = float(vel_std)

    def _size(self, mean: np.ndarray) -> np.ndarray:
        # (N, 4) scale for each measured component: w for x-like, h for y-like.
        w = np.maximum(mean[:, 2], 1.0)
        h = np.maximum(mean[:, 3], 1.0)
        return np.stack([w, h, w, h], axis=1)

    def initiate(self, xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = xyxy_to_cxcywh(xyxy)
        n = len(z)
        mean = np.zeros((n, STATE_DIM))
        mean[:, :MEAS_DIM] = z
        size = self._size(mean)
        # Velocity is unknown at birth: wide prior so the first updates can set it quickly.
        std = np.concatenate([2 * self.pos_std * size, 10 * self.vel_std * size], axis=1)
        cov = np.zeros((n, STATE_DIM, STATE_DIM))
        idx = np.arange(STATE_DIM)
        cov[:, idx, idx] = std**2
        return mean, cov

    def predict(self, mean: np.ndarray, cov: np.ndarray, dt: float | np.ndarray = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Advance each track by dt frames (scalar or per-track array)."""
        n = len(mean)
        if n == 0:
            return mean.copy(), cov.copy()
        dt = np.broadcast_to(np.asarray(dt, dtype=np.float64), (n,))
        f = np.broadcast_to(np.eye(STATE_DIM), (n, STATE_DIM, STATE_DIM)).copy()
        f[:, np.arange(MEAS_DIM), np.arange(MEAS_DIM) + MEAS_DIM] = dt[:, None]
        new_mean = (f @ mean[:, :, None])[:, :, 0]
        size = self._size(mean)
        q_std = np.concatenate([self.pos_std * size, self.vel_std * size], axis=1)
        q = np.zeros_like(cov)
        idx = np.arange(STATE_DIM)
        # Process noise accumulates with elapsed frames, so long misses widen the prior.
        q[:, idx, idx] = q_std**2 * dt[:, None]
        new_cov = f @ cov @ np.swapaxes(f, 1, 2) + q
        return new_mean, new_cov

    def update(self, mean: np.ndarray, cov: np.ndarray, xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Correct N predicted states with N measured boxes (row i with row i)."""
        if len(mean) == 0:
            return mean.copy(), cov.copy()
        z = xyxy_to_cxcywh(xyxy)
        r_std = self.pos_std * self._size(mean)
        s = cov[:, :MEAS_DIM, :MEAS_DIM].copy()
        idx = np.arange(MEAS_DIM)
        s[:, idx, idx] += r_std**2
        pht = cov[:, :, :MEAS_DIM]  # P H^T, H selects the first four state components
        # K = P H^T S^-1, computed as solve(S, (P H^T)^T)^T since S is symmetric.
        gain = np.linalg.solve(s, np.swapaxes(pht, 1, 2)).swapaxes(1, 2)
        innovation = z - mean[:, :MEAS_DIM]
        new_mean = mean + (gain @ innovation[:, :, None])[:, :, 0]
        new_cov = cov - gain @ s @ np.swapaxes(gain, 1, 2)
        return new_mean, new_cov

    @staticmethod
    def boxes(mean: np.ndarray) -> np.ndarray:
        """xyxy (N, 4) of the position part of the states."""
        return cxcywh_to_xyxy(mean[:, :MEAS_DIM])
