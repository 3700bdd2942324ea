"""``pool``: LLaVA-OneVision's spatial bilinear pooling of every frame's grid.

LLaVA-OneVision (LLaVA-NeXT ``get_2dPool`` with ``mm_spatial_pool_mode="bilinear"``;
transformers ``LlavaOnevisionModel.apply_pooling``) resizes each frame's ``[h, w]`` grid to
``[ceil(h / stride), ceil(w / stride)]`` with
``torch.nn.functional.interpolate(x, size=..., mode="bilinear")``, i.e. ``align_corners=False``
and no antialiasing: output cell ``o`` samples input coordinate
``src = (o + 0.5) * (in / out) - 0.5`` (clamped at 0) and mixes the two neighbouring rows /
columns linearly (the far one clamped to the last index).  :func:`bilinear_matrix` builds
exactly those weights as a static ``[out, in]`` matrix; the resize is two small matmuls,
separable over height and width.  (``jax.image.resize(..., "bilinear", antialias=False)``
gives the same numbers; its default ``antialias=True`` does not when downsampling.)

aux:
  grid   [2] int32: the pooled (h', w').
  assign [B, T*H*W] int32: slot of the pooled cell nearest to each input cell (its centre
         mapped into the pooled grid and rounded), a nearest-cell reconstruction map.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from td_jax.compressors.base import Compressed, CompressorModule, check_tokens, register
from td_jax.compressors.common import check_budget_fits, pad_to_budget

DEFAULT_STRIDE = 2


def pooled_size(size: int, stride: int) -> int:
    """LLaVA-OneVision's pooled side length: ``ceil(size / stride)``."""
    return math.ceil(size / stride)


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] float64 weights of PyTorch's bilinear ``interpolate`` (align_corners=False).

    Row ``o`` holds the weights of input positions for output position ``o``; rows sum to 1.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"bilinear_matrix: sizes must be >= 1, got in={in_size}, out={out_size}")
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size) + 0.5) * scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = src - lo
    mat = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    np.add.at(mat, (rows, lo), 1.0 - frac)
    np.add.at(mat, (rows, hi), frac)
    return mat


def bilinear_resize(tokens: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
    """[B, T, H, W, D] -> [B, T, h', w', D], PyTorch-bilinear (align_corners=False) per frame."""
    _, _, h, w, _ = tokens.shape
    mh = jnp.asarray(bilinear_matrix(h, out_hw[0]), tokens.dtype)
    mw = jnp.asarray(bilinear_matrix(w, out_hw[1]), tokens.dtype)
    hp = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,bthwd->btowd", mh, tokens, precision=hp)
    return jnp.einsum("pw,btowd->btopd", mw, x, precision=hp)


def nearest_cell(in_size: int, out_size: int) -> np.ndarray:
    """[in] int: pooled index nearest to each input position's centre."""
    pos = (np.arange(in_size) + 0.5) * (out_size / in_size) - 0.5
    return np.clip(np.floor(pos + 0.5), 0, out_size - 1).astype(np.int32)


@register("pool")
class BilinearPool(CompressorModule):
    """Per-frame bilinear pooling: ``[B, T, H, W, D] -> [B, M, D]``, ``T*h'*w' <= M`` real.

    stride: LLaVA-OneVision's ``mm_spatial_pool_stride``; output grid ``ceil(H/stride) x
      ceil(W/stride)``.  Default 2 when ``out_hw`` is not given.
    out_hw: explicit output grid ``(h', w')`` (any size, e.g. chosen by the budget planner);
      give either this or ``stride``, not both.
    """

    stride: int | None = None
    out_hw: tuple[int, int] | None = None

    def grid(self, h: int, w: int) -> tuple[int, int]:
        """The pooled (h', w') for an ``h x w`` input grid."""
        if self.stride is not None and self.out_hw is not None:
            raise ValueError(f"pool: give stride or out_hw, not both (stride={self.stride}, out_hw={self.out_hw})")
        if self.out_hw is not None:
            oh, ow = (int(v) for v in self.out_hw)
            if not (1 <= oh and 1 <= ow):
                raise ValueError(f"pool: out_hw must be positive, got {self.out_hw}")
            return oh, ow
        stride = DEFAULT_STRIDE if self.stride is None else int(self.stride)
        if stride < 1:
            raise ValueError(f"pool: stride must be >= 1, got {self.stride}")
        return pooled_size(h, stride), pooled_size(w, stride)

    def __call__(self, tokens: jax.Array, deterministic: bool = True) -> Compressed:
        check_tokens(tokens)
        b, t, h, w, d = tokens.shape
        oh, ow = self.grid(h, w)
        check_budget_fits("pool", t * oh * ow, self.budget, f"{t} frames pooled {h}x{w} -> {oh}x{ow}")
        pooled = bilinear_resize(tokens, (oh, ow)).reshape(b, t * oh * ow, d)
        out, mask, _ = pad_to_budget(pooled, self.budget)
        ci, cj = nearest_cell(h, oh), nearest_cell(w, ow)
        assign = (np.arange(t)[:, None, None] * (oh * ow) + ci[None, :, None] * ow + cj[None, None, :])
        aux = {"grid": jnp.asarray([oh, ow], jnp.int32),
               "assign": jnp.broadcast_to(jnp.asarray(assign.reshape(-1), jnp.int32), (b, t * h * w))}
        return Compressed(tokens=out, mask=mask, aux=aux)
