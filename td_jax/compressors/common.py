"""Small shape helpers shared by the baseline compressors.

Every compressor returns exactly ``budget`` slots; a method that yields fewer real tokens
pads with zeros and ``mask=False`` (:func:`pad_to_budget`).  Flat token indices are
raster order over ``[T, H, W]``: ``index = (t * H + h) * W + w``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# Fill values for padded aux slots, by dtype kind.
INDEX_PAD = -1


def flatten_video(tokens: jax.Array) -> jax.Array:
    """[B, T, H, W, D] -> [B, T*H*W, D] in raster order (t, h, w)."""
    b, t, h, w, d = tokens.shape
    return tokens.reshape(b, t * h * w, d)


def check_budget_fits(name: str, n_real: int, budget: int, detail: str) -> None:
    """A method must never yield more real tokens than the budget's static slots."""
    if n_real > budget:
        raise ValueError(f"{name}: {detail} gives {n_real} tokens, more than budget={budget}; "
                         f"use td_jax.compressors.budget.plan() to pick the method's knob for a budget")


def pad_to_budget(tokens: jax.Array, budget: int, mask: jax.Array | None = None,
                  slot_aux: dict | None = None) -> tuple[jax.Array, jax.Array, dict]:
    """Pad ``tokens [B, N, D]`` (N <= budget) to ``[B, budget, D]``.

    ``mask [B, N]`` defaults to all True; padded slots get ``mask=False`` and zero tokens.
    ``slot_aux`` holds per-slot arrays ``[B, N, ...]``, padded alongside: integer arrays with
    -1, bool arrays with False, float arrays with 0.
    Returns (tokens [B, budget, D], mask [B, budget], padded slot_aux).
    """
    b, n, _ = tokens.shape
    if n > budget:
        raise ValueError(f"pad_to_budget: {n} tokens exceed budget={budget}")
    if mask is None:
        mask = jnp.ones((b, n), bool)
    extra = budget - n
    out = {}
    for k, v in (slot_aux or {}).items():
        if v.shape[:2] != (b, n):
            raise ValueError(f"pad_to_budget: slot aux {k!r} has shape {tuple(v.shape)}, expected [{b}, {n}, ...]")
        if jnp.issubdtype(v.dtype, jnp.integer):
            fill = INDEX_PAD
        elif v.dtype == jnp.bool_:
            fill = False
        else:
            fill = 0
        out[k] = jnp.pad(v, [(0, 0), (0, extra)] + [(0, 0)] * (v.ndim - 2), constant_values=fill)
    tokens = jnp.pad(tokens, ((0, 0), (0, extra), (0, 0)))
    mask = jnp.pad(mask, ((0, 0), (0, extra)), constant_values=False)
    return tokens, mask, out


def raster_index(t: int, h: int, w: int) -> jax.Array:
    """[T, H, W] int32 flat raster index of every grid cell."""
    return jnp.arange(t * h * w, dtype=jnp.int32).reshape(t, h, w)


# Batched gathers / scatters written on flattened [B*N] rows: XLA compiles these 1-D index
# ops quickly, while vmapped (batched) gathers over many unrolled merge rounds took minutes
# to compile for a 23k-token video.
def gather_flat(v: jax.Array, idx: jax.Array) -> jax.Array:
    """v [B, N, ...], idx [B, K] -> [B, K, ...]."""
    b, n = v.shape[:2]
    flat = v.reshape((b * n,) + v.shape[2:])
    offs = (jnp.arange(b, dtype=jnp.int32) * n)[:, None]
    return flat[(idx + offs).reshape(-1)].reshape(idx.shape + v.shape[2:])


def scatter_add_flat(v: jax.Array, idx: jax.Array, upd: jax.Array) -> jax.Array:
    """v [B, N, ...] with upd [B, K, ...] added at rows idx [B, K]."""
    b, n = v.shape[:2]
    flat = v.reshape((b * n,) + v.shape[2:])
    offs = (jnp.arange(b, dtype=jnp.int32) * n)[:, None]
    flat = flat.at[(idx + offs).reshape(-1)].add(upd.reshape((-1,) + upd.shape[2:]))
    return flat.reshape(v.shape)


def check_options(name: str, module, *, at_least_one: tuple = (), unit_interval: tuple = ()) -> None:
    """Config checks shared by the peer methods: integer fields >= 1, fractions in [0, 1]."""
    for f in at_least_one:
        if getattr(module, f) < 1:
            raise ValueError(f"{name}: {f} must be >= 1, got {getattr(module, f)}")
    for f in unit_interval:
        if not 0.0 <= getattr(module, f) <= 1.0:
            raise ValueError(f"{name}: {f} must be in [0, 1], got {getattr(module, f)}")


def token_scores(name: str, tokens: jax.Array, saliency: jax.Array | None) -> jax.Array:
    """How much the vision tower attends to each token: ``saliency [B, T, H, W]`` when
    given (checked against tokens [B, T, H, W, D]), else the tokens' L2 norms (the documented
    fallback).  Returns [B, T, H, W] float32."""
    if saliency is None:
        return jnp.linalg.norm(tokens.astype(jnp.float32), axis=-1)
    if tuple(saliency.shape) != tuple(tokens.shape[:4]):
        raise ValueError(f"{name}: saliency must be [B, T, H, W]={list(tokens.shape[:4])}, got {list(saliency.shape)}")
    return saliency.astype(jnp.float32)
