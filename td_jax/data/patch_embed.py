"""A fixed, deterministic patch embedding: a stand-in vision tower for precomputed tokens.

Each ``p × p`` patch's pixels (``p·p·3`` values scaled to ``[-1, 1]``) go through a fixed
random projection ``W [p·p·3, D]`` drawn from ``seed`` (Gaussian, variance ``1/(p·p·3)``),
so colour and shape survive into the tokens; then, as a real tower's tokens carry where
they are (SigLIP adds a learned position embedding before its blocks), a fixed 2-D
sin-cos position embedding of the patch's row and column is added (``pos_embed``), with
per-entry RMS ``pos_scale`` (default 0.1; the content's per-entry RMS is ~0.25 on the
moving-shapes videos at 4-px patches, so position is readable but content dominates).
``temporal=True`` also adds a 1-D sin-cos embedding of the frame index (off by default:
LLaVA-OneVision's tower sees single frames, and the frame order survives as the order of
the tokens).  ``frames [B, T, R, R, 3] uint8 → tokens [B, T, R/p, R/p, D] float32``.

``context=c`` (default 0: the patch alone) projects the ``(2c+1)p × (2c+1)p``-px window
centred on each patch instead (zero-padded beyond the frame, i.e. mid-grey), with a projection
``[(2c+1)²·p²·3, D]`` drawn the same way: each token then sees its neighbourhood, as a real
tower's tokens do after self-attention (a SigLIP token at an object knows the object's shape;
a lone 4-px patch of a 10-px disc or square does not).  Still fixed and parameter-free.

``tower=PATH`` replaces the random projection by a pretrained, frozen per-window network
(``td_jax.data.tower``: ``relu(window @ w1 + b1) @ w2 + b2``, trained on other videos so that
a linear read-out of one token names the shape and colour under it, as a real tower's
does); its window must be the ``context`` one, its width ``dim``.
"""
from __future__ import annotations

import functools
from typing import Callable

import einops
import jax.numpy as jnp
import numpy as np

POS_EMBEDS = ("sincos2d", "none")


@functools.lru_cache(maxsize=8)
def projection(patch_size: int, dim: int, seed: int, patches: int = 1) -> np.ndarray:
    """The fixed projection ``[patches·p·p·3, D]`` float32 for ``(patch_size, dim, seed)``
    (``patches``: the window's patch count, ``(2c+1)²``)."""
    fan_in = patches * patch_size * patch_size * 3
    w = np.random.default_rng([int(seed), fan_in, int(dim)]).normal(size=(fan_in, dim)) / np.sqrt(fan_in)
    w = w.astype(np.float32)
    w.flags.writeable = False
    return w


def sincos_1d(n: int, dim: int) -> np.ndarray:
    """``[n, dim]`` sin-cos embedding of positions ``0..n-1`` (dim/2 frequencies, sin then cos);
    every entry has RMS 1/√2 over a row."""
    if dim < 2 or dim % 2:
        raise ValueError(f"sin-cos position embedding needs an even width >= 2, got {dim}")
    freqs = 1.0 / (10000.0 ** (np.arange(dim // 2, dtype=np.float64) / (dim // 2)))
    ang = np.arange(n, dtype=np.float64)[:, None] * freqs[None]
    return np.concatenate([np.sin(ang), np.cos(ang)], axis=1)


@functools.lru_cache(maxsize=16)
def position_embedding(t: int, h: int, w: int, dim: int, kind: str = "sincos2d", scale: float = 0.1,
                       temporal: bool = False) -> np.ndarray:
    """The fixed embedding added to the tokens: ``[t, h, w, dim]`` float32 (zeros for ``"none"``).

    ``"sincos2d"``: half the channels encode the row, half the column (each a 1-D sin-cos
    table), rescaled to per-entry RMS ``scale``; ``temporal`` adds a sin-cos table of the
    frame index at the same RMS.
    """
    if kind not in POS_EMBEDS:
        raise ValueError(f"pos_embed must be one of {POS_EMBEDS}, got {kind!r}")
    out = np.zeros((t, h, w, dim), np.float64)
    if kind == "sincos2d":
        if dim % 4:
            raise ValueError(f"a 2-D sin-cos position embedding needs a width divisible by 4, got {dim}")
        rows, cols = sincos_1d(h, dim // 2), sincos_1d(w, dim // 2)
        out += np.concatenate([np.broadcast_to(rows[:, None], (h, w, dim // 2)),
                               np.broadcast_to(cols[None, :], (h, w, dim // 2))], axis=-1)[None]
    if temporal:
        out += sincos_1d(t, dim)[:, None, None, :]
    if kind == "sincos2d" or temporal:
        out *= float(scale) * np.sqrt(2.0)        # sin-cos entries have RMS 1/√2
    out = out.astype(np.float32)
    out.flags.writeable = False
    return out


def windows(x, context: int):
    """``x [B, T, h, w, P]`` patches → ``[B, T, h, w, (2c+1)²·P]``: each patch with its
    ``c``-patch neighbourhood (row-major offsets), zero beyond the grid."""
    if context == 0:
        return x
    c = int(context)
    h, w = x.shape[2], x.shape[3]
    xp = jnp.pad(x, ((0, 0), (0, 0), (c, c), (c, c), (0, 0)))
    return jnp.concatenate([xp[:, :, i:i + h, j:j + w] for i in range(2 * c + 1) for j in range(2 * c + 1)],
                           axis=-1)


def window_project(x, w, context: int):
    """``windows(x, context) @ w`` without building the windows: ``x [B, T, h, w, P]``,
    ``w [(2c+1)²·P, D]`` → ``[B, T, h, w, D]``, as one 'SAME' convolution over the patch grid
    (zero beyond it; the same row-major window layout as :func:`windows`)."""
    import jax

    if context == 0:
        return x @ w
    k = 2 * int(context) + 1
    b, t, h, wd, p = x.shape
    kernel = jnp.reshape(w, (k, k, p, w.shape[-1]))                    # [kh, kw, P, D] (HWIO)
    y = jax.lax.conv_general_dilated(jnp.reshape(x, (b * t, h, wd, p)), kernel, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.reshape(y, (b, t, h, wd, w.shape[-1]))


def patch_embed(frames, *, patch_size: int = 8, dim: int = 64, seed: int = 0, pos_embed: str = "sincos2d",
                pos_scale: float = 0.1, temporal: bool = False, context: int = 0, tower: str = "") -> jnp.ndarray:
    """``frames [B, T, R, R, 3]`` uint8 → ``tokens [B, T, R/p, R/p, D]`` float32 (jit-able)."""
    if frames.ndim != 5 or frames.shape[-1] != 3:
        raise ValueError(f"patch_embed expects frames [B, T, R, R, 3], got shape {tuple(frames.shape)}")
    if not isinstance(context, (int, np.integer)) or isinstance(context, bool) or context < 0:
        raise ValueError(f"context must be an integer >= 0 (patches on each side), got {context!r}")
    T, H, W = frames.shape[1], frames.shape[2], frames.shape[3]
    if H % patch_size or W % patch_size:
        raise ValueError(f"frame size {H}x{W} is not a multiple of patch_size={patch_size}")
    x = jnp.asarray(frames, jnp.float32) / 127.5 - 1.0
    x = einops.rearrange(x, "b t (h p) (w q) c -> b t h w (p q c)", p=patch_size, q=patch_size)
    if tower:
        from td_jax.data import tower as tower_lib

        params = tower_lib.load(tower)
        fan_in = (2 * context + 1) ** 2 * patch_size * patch_size * 3
        if params["w1"].shape[0] != fan_in or params["w2"].shape[1] != dim:
            raise ValueError(f"tower {tower!r} maps {params['w1'].shape[0]} window values to width "
                             f"{params['w2'].shape[1]}; patch_size={patch_size}, context={context}, dim={dim} need "
                             f"{fan_in} -> {dim}")
        x = tower_lib.apply({k: jnp.asarray(v) for k, v in params.items()}, x,
                            first=lambda v, w: window_project(v, w, context))
    else:
        x = window_project(x, jnp.asarray(projection(patch_size, dim, seed, (2 * context + 1) ** 2)), context)
    if pos_embed != "none" or temporal:
        x = x + jnp.asarray(position_embedding(T, H // patch_size, W // patch_size, dim, pos_embed, pos_scale,
                                               temporal))
    return x


def make_patch_embed(patch_size: int = 8, dim: int = 64, seed: int = 0, pos_embed: str = "sincos2d",
                     pos_scale: float = 0.1, temporal: bool = False, context: int = 0, tower: str = "") -> Callable:
    """An ``embed_fn(frames [B,T,R,R,3] uint8) -> tokens [B,T,R/p,R/p,D]`` with fixed settings."""
    return functools.partial(patch_embed, patch_size=patch_size, dim=dim, seed=seed, pos_embed=pos_embed,
                             pos_scale=pos_scale, temporal=temporal, context=context, tower=tower)
