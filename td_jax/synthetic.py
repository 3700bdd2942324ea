"""Synthetic structured video tokens for tests and benchmarks.

Tokens that look like a video's visual tokens to a clusterer: a few background regions
and moving objects, each with a prototype vector that drifts slowly over time, plus
per-token noise. The planted labels say which region/object each grid cell shows.
"""
from __future__ import annotations

import numpy as np


def structured_tokens(seed: int, t: int, h: int, w: int, d: int, *, n_objects: int = 8,
                      n_background: int = 4, noise: float = 0.6, drift: float = 0.02,
                      object_size: float = 0.25, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Tokens [T, H, W, D] and planted labels [T, H, W] int32.

    The background is split into ``n_background`` vertical bands; each object is a square
    of side ``object_size * min(h, w)`` cells that moves with a constant velocity and
    bounces off the borders (later objects are drawn on top). Label ids are
    0..n_background-1 for bands, then n_background.. for objects. Each token is its
    region's prototype (unit norm, drifting by ``drift`` per frame) plus Gaussian noise of
    ``noise`` per-dimension std scaled by 1/sqrt(d) (so ``noise`` is relative to the
    prototype norm).
    """
    rng = np.random.default_rng(seed)
    n_regions = n_background + n_objects
    proto = rng.standard_normal((n_regions, d)).astype(np.float32)
    proto /= np.linalg.norm(proto, axis=-1, keepdims=True)
    labels = np.zeros((t, h, w), np.int32)
    band = np.minimum((np.arange(w) * n_background) // w, n_background - 1)
    labels[:] = band[None, None, :]
    side = max(1, int(round(object_size * min(h, w))))
    pos = rng.uniform(0, [h - side, w - side], size=(n_objects, 2))
    vel = rng.uniform(-1.0, 1.0, size=(n_objects, 2)) * max(1.0, min(h, w) / 16)
    for ti in range(t):
        for o in range(n_objects):
            y, x = (int(round(v)) for v in pos[o])
            labels[ti, y:y + side, x:x + side] = n_background + o
        pos += vel
        for axis, hi in ((0, h - side), (1, w - side)):
            out = (pos[:, axis] < 0) | (pos[:, axis] > hi)
            vel[out, axis] *= -1
            pos[:, axis] = np.clip(pos[:, axis], 0, hi)
    walk = np.cumsum(rng.standard_normal((t, n_regions, d)).astype(np.float32) * (drift / np.sqrt(d)), axis=0)
    protos_t = proto[None] + walk                                    # [T, R, D]
    tokens = np.take_along_axis(protos_t[:, None, None, :, :],
                                labels[..., None, None], axis=3)[..., 0, :]  # [T, H, W, D]
    tokens = tokens + rng.standard_normal(tokens.shape, dtype=np.float32) * (noise / np.sqrt(d))
    return tokens.astype(dtype), labels
