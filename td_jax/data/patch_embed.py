"""A fixed, deterministic patch embedding: a stand-in vision tower for precomputed tokens.

Each ``p × p`` patch's pixels (``p·p·3`` values scaled to ``[-1, 1]``) go through a fixed
random projection ``W [p·p·3, D]`` drawn from ``seed`` (Gaussian, variance ``1/(p·p·3)``),
so colour and shape survive into the tokens:
``frames [B, T, R, R, 3] uint8 → tokens [B, T, R/p, R/p, D] float32``.
"""
from __future__ import annotations

import functools
from typing import Callable

import einops
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=8)
def projection(patch_size: int, dim: int, seed: int) -> np.ndarray:
    """The fixed projection ``[p·p·3, D]`` float32 for ``(patch_size, dim, seed)``."""
    fan_in = patch_size * patch_size * 3
    w = np.random.default_rng([int(seed), fan_in, int(dim)]).normal(size=(fan_in, dim)) / np.sqrt(fan_in)
    w = w.astype(np.float32)
    w.flags.writeable = False
    return w


def patch_embed(frames, *, patch_size: int = 8, dim: int = 64, seed: int = 0) -> jnp.ndarray:
    """``frames [B, T, R, R, 3]`` uint8 → ``tokens [B, T, R/p, R/p, D]`` float32 (jit-able)."""
    if frames.ndim != 5 or frames.shape[-1] != 3:
        raise ValueError(f"patch_embed expects frames [B, T, R, R, 3], got shape {tuple(frames.shape)}")
    H, W = frames.shape[2], frames.shape[3]
    if H % patch_size or W % patch_size:
        raise ValueError(f"frame size {H}x{W} is not a multiple of patch_size={patch_size}")
    x = jnp.asarray(frames, jnp.float32) / 127.5 - 1.0
    x = einops.rearrange(x, "b t (h p) (w q) c -> b t h w (p q c)", p=patch_size, q=patch_size)
    return x @ jnp.asarray(projection(patch_size, dim, seed))


def make_patch_embed(patch_size: int = 8, dim: int = 64, seed: int = 0) -> Callable:
    """An ``embed_fn(frames [B,T,R,R,3] uint8) -> tokens [B,T,R/p,R/p,D]`` with fixed settings."""
    return functools.partial(patch_embed, patch_size=patch_size, dim=dim, seed=seed)
