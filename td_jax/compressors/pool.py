"""``pool``: pooling of the token grid over space and, where needed, time.

Two kinds (``kind``):

* ``"area"`` (what :func:`td_jax.compressors.budget.plan` sets up): every output cell is the exact area average of the input region
  it covers - the ``[T, H, W]`` grid is cut into ``t' x h' x w'`` equal boxes (fractional
  box edges split a cell's weight by overlap, so any output size works, e.g. 27 -> 4), and
  a box's token is the mean of the tokens under it.  No centre sampling: every input token
  contributes to its cell.  ``out_t < T`` pools time as well (needed below one token per
  frame: 8 tokens of 16 frames are 8 boxes of 2 frames x the whole frame).
* ``"bilinear"`` (the module's default, so ``get("pool")`` is what the converted LLaVA-OV
  checkpoints expect): LLaVA-OneVision's spatial pooling (LLaVA-NeXT ``get_2dPool`` with
  ``mm_spatial_pool_mode="bilinear"``; transformers ``LlavaOnevisionModel.apply_pooling``):
  each frame's ``[h, w]`` grid resized with ``torch.nn.functional.interpolate(...,
  mode="bilinear")`` (``align_corners=False``, no antialiasing: output cell ``o`` samples
  ``src = (o + 0.5) * (in / out) - 0.5``, clamped at 0, mixing two neighbouring rows /
  columns).  :func:`bilinear_matrix` builds those weights; LLaVA-OV's stride 2 gives 14x14
  of a 27x27 grid.  Time is never pooled in this kind.

Both are separable: fixed ``[out, in]`` weight matrices per axis (time's depends on the
video's real length, below), applied as three small matmuls.

Padded videos (``mask``): the mean runs over real tokens only (weights times mask,
renormalised); a cell with no real token is zero with ``mask`` False.  The time boxes
partition the video's *real* span ``[0, last real frame + 1)``, so a 4-frame video padded
to 32 frames still fills every time box (with ``out_t`` = 8, each box is half a frame).

aux:
  grid   [3] int32: the pooled (t', h', w').
  assign [B, T*H*W] int32: slot of the cell holding each input cell's centre (a
         nearest-cell reconstruction map); -1 for masked tokens.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from td_jax.compressors.base import Compressed, CompressorModule, check_tokens, register, token_mask
from td_jax.compressors.common import check_budget_fits, pad_to_budget

DEFAULT_STRIDE = 2
KINDS = ("area", "bilinear")


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


def area_matrix(in_size, out_size: int, n_in: int | None = None):
    """[out, n_in] overlap weights of ``out_size`` equal boxes over ``[0, in_size)``.

    Entry (o, i) is the length of ``[i, i+1) ∩ [o*in/out, (o+1)*in/out)``; rows sum to the
    box length ``in/out``.  ``in_size`` may be a traced scalar (a video's real length), then
    ``n_in`` (static) is the number of input positions (those >= in_size get weight 0).
    Returns numpy for static sizes, a jax array for traced ones.
    """
    xp = np if isinstance(in_size, (int, np.integer)) else jnp
    n_in = int(in_size) if n_in is None else n_in
    edge = xp.arange(out_size + 1) * (in_size / out_size)
    i = xp.arange(n_in)
    lo = xp.maximum(edge[:-1, None], i[None, :])
    hi = xp.minimum(edge[1:, None], i[None, :] + 1)
    return xp.maximum(hi - lo, 0)


def bilinear_resize(tokens: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
    """[B, T, H, W, D] -> [B, T, h', w', D], PyTorch-bilinear (align_corners=False) per frame."""
    _, _, h, w, _ = tokens.shape
    mh = jnp.asarray(bilinear_matrix(h, out_hw[0]), tokens.dtype)
    mw = jnp.asarray(bilinear_matrix(w, out_hw[1]), tokens.dtype)
    hp = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,bthwd->btowd", mh, tokens, precision=hp)
    return jnp.einsum("pw,btowd->btopd", mw, x, precision=hp)


def nearest_cell(in_size: int, out_size: int) -> np.ndarray:
    """[in] int: pooled index nearest to each input position's centre (bilinear grid)."""
    pos = (np.arange(in_size) + 0.5) * (out_size / in_size) - 0.5
    return np.clip(np.floor(pos + 0.5), 0, out_size - 1).astype(np.int32)


def box_of(in_size, out_size: int, n_in: int):
    """[n_in] int32: the box (of ``out_size`` equal boxes over ``[0, in_size)``) holding each
    input position's centre; ``in_size`` may be traced (then positions past it get -1)."""
    xp = np if isinstance(in_size, (int, np.integer)) else jnp
    i = xp.arange(n_in)
    box = xp.clip(xp.floor((i + 0.5) * out_size / in_size), 0, out_size - 1).astype(xp.int32)
    return xp.where(i < in_size, box, -1)


def real_span(frame_real: jax.Array) -> jax.Array:
    """frame_real [B, T] bool -> [B] int32: last real frame + 1 (0 for an empty video)."""
    t = frame_real.shape[1]
    return jnp.max(jnp.where(frame_real, jnp.arange(1, t + 1), 0), axis=1).astype(jnp.int32)


def masked_pool(tokens: jax.Array, real: jax.Array, mt: jax.Array, mh, mw) -> tuple[jax.Array, jax.Array]:
    """Weighted mean over real tokens: tokens [B, T, H, W, D], real [B, T, H, W], per-axis
    weights mt [B, t', T], mh [h', H], mw [w', W] -> (pooled [B, t', h', w', D], weight
    [B, t', h', w'] of real tokens under each cell)."""
    hp = jax.lax.Precision.HIGHEST
    f = real.astype(jnp.float32)
    x = tokens.astype(jnp.float32) * f[..., None]
    mh, mw = jnp.asarray(mh, jnp.float32), jnp.asarray(mw, jnp.float32)

    def sep(v):   # [B, T, H, W, ...] -> [B, t', h', w', ...]
        v = jnp.einsum("bot,bt...->bo...", mt, v, precision=hp)
        v = jnp.einsum("ph,boh...->bop...", mh, v, precision=hp)
        return jnp.einsum("qw,bopw...->bopq...", mw, v, precision=hp)

    num, den = sep(x), sep(f)
    pooled = jnp.where(den[..., None] > 0, num / jnp.where(den > 0, den, 1.0)[..., None], 0.0)
    return pooled.astype(tokens.dtype), den


@register("pool")
class Pool(CompressorModule):
    """Pooling to the budget: ``[B, T, H, W, D] -> [B, M, D]``, ``t'*h'*w' <= M`` real.

    kind: ``"bilinear"`` (LLaVA-OneVision; default) or ``"area"`` (exact box means, any
      grid including time; what the budget planner picks).
    stride: spatial grid ``ceil(H/stride) x ceil(W/stride)`` (default 2 when ``out_hw``
      is not given: LLaVA-OV's grid).
    out_hw: explicit spatial grid ``(h', w')``; give either this or ``stride``.
    out_t: time boxes (area kind only; None keeps every frame).
    """

    kind: str = "bilinear"
    stride: int | None = None
    out_hw: tuple[int, int] | None = None
    out_t: int | None = None

    def grid(self, t: int, h: int, w: int) -> tuple[int, int, int]:
        """The pooled (t', h', w') for a ``t x h x w`` input grid."""
        if self.kind not in KINDS:
            raise ValueError(f"pool: kind must be one of {KINDS}, got {self.kind!r}")
        if self.stride is not None and self.out_hw is not None:
            raise ValueError(f"pool: give stride or out_hw, not both (stride={self.stride}, out_hw={self.out_hw})")
        if self.out_hw is not None:
            oh, ow = (int(v) for v in self.out_hw)
            if not (1 <= oh and 1 <= ow):
                raise ValueError(f"pool: out_hw must be positive, got {self.out_hw}")
        else:
            stride = DEFAULT_STRIDE if self.stride is None else int(self.stride)
            if stride < 1:
                raise ValueError(f"pool: stride must be >= 1, got {self.stride}")
            oh, ow = pooled_size(h, stride), pooled_size(w, stride)
        ot = t if self.out_t is None else int(self.out_t)
        if not 1 <= ot <= t:
            raise ValueError(f"pool: out_t must be in [1, T={t}], got {self.out_t}")
        if self.kind == "bilinear" and ot != t:
            raise ValueError(f"pool(kind='bilinear') pools space only (LLaVA-OneVision); out_t={ot} needs kind='area'")
        if self.kind == "area" and (oh > h or ow > w):
            raise ValueError(f"pool(kind='area'): grid {oh}x{ow} is larger than the input {h}x{w}")
        return ot, oh, ow

    SCALE_EQUIVARIANT = True      # Weighted means of the tokens.

    def __call__(self, tokens: jax.Array, deterministic: bool = True, mask: jax.Array | None = None) -> Compressed:
        check_tokens(tokens)
        b, t, h, w, d = tokens.shape
        ot, oh, ow = self.grid(t, h, w)
        check_budget_fits("pool", ot * oh * ow, self.budget, f"{t} frames x {h}x{w} pooled to {ot}x{oh}x{ow}")
        real = token_mask(mask, tokens.shape)
        tokens = jnp.where(real[..., None], tokens, 0).astype(tokens.dtype)
        span = real_span(jnp.any(real, axis=(2, 3))) if mask is not None else jnp.full((b,), t, jnp.int32)
        if self.kind == "area":
            mt = jax.vmap(lambda s: area_matrix(s, ot, t))(span.astype(jnp.float32))
            mh, mw = area_matrix(h, oh), area_matrix(w, ow)
            tbox = jax.vmap(lambda s: box_of(s.astype(jnp.float32), ot, t))(span)
            hbox, wbox = box_of(h, oh, h), box_of(w, ow, w)
        else:
            mt = jnp.broadcast_to(jnp.eye(t, dtype=jnp.float32), (b, t, t))
            mh, mw = bilinear_matrix(h, oh), bilinear_matrix(w, ow)
            tbox = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
            hbox, wbox = nearest_cell(h, oh), nearest_cell(w, ow)
        pooled, weight = masked_pool(tokens, real, mt, mh, mw)
        n_out = ot * oh * ow
        out, slot_mask, _ = pad_to_budget(pooled.reshape(b, n_out, d), self.budget,
                                          mask=(weight > 0).reshape(b, n_out))
        assign = (tbox[:, :, None, None] * (oh * ow) + jnp.asarray(hbox)[None, None, :, None] * ow
                  + jnp.asarray(wbox)[None, None, None, :])
        assign = jnp.where(real & (tbox[:, :, None, None] >= 0), assign, -1).reshape(b, t * h * w)
        aux = {"grid": jnp.asarray([ot, oh, ow], jnp.int32), "assign": assign.astype(jnp.int32)}
        return Compressed(tokens=out, mask=slot_mask, aux=aux)

