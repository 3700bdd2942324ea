"""``frames``: uniform frame subsampling, every token of the kept frames.

Keeps F frames at ``round(linspace(0, T-1, F))`` (first and last frame kept when F >= 2,
frame 0 when F == 1).  Output is the kept frames' tokens in raster order, ``F*H*W <= M``
slots, the rest padded.

Padded videos (``mask``): a frame is real if any of its tokens is; the F frames are spread
over the video's real frames (``round(linspace(0, T_real-1, F))`` of them), a frame picked
twice (F > T_real) fills its slots once, and masked tokens' slots are marked False.

aux:
  frame_index  [B, F] int32: kept frame ids (-1 for a repeated pick).
  source_index [B, M] int32: flat raster index of each slot's token, -1 for pads.
  assign       [B, T*H*W] int32: slot of the same (h, w) cell in the nearest kept frame
               (ties go to the earlier frame), so ``tokens[assign]`` is the
               nearest-frame reconstruction; -1 for masked tokens.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from td_jax.compressors.base import Compressed, CompressorModule, check_tokens, register, token_mask
from td_jax.compressors.common import check_budget_fits, pad_to_budget


def uniform_frame_indices(num_frames_in: int, num_frames_out: int) -> np.ndarray:
    """[F] int32 frame ids spread uniformly over ``[0, T-1]`` (static, numpy)."""
    if not 1 <= num_frames_out <= num_frames_in:
        raise ValueError(f"frames: cannot keep {num_frames_out} of {num_frames_in} frames")
    return np.round(np.linspace(0, num_frames_in - 1, num_frames_out)).astype(np.int32)


def nearest_kept(num_frames_in: int, kept: np.ndarray) -> np.ndarray:
    """[T] int32: position in ``kept`` of the nearest kept frame for every frame."""
    dist = np.abs(np.arange(num_frames_in)[:, None] - kept[None, :])
    return np.argmin(dist, axis=1).astype(np.int32)  # argmin picks the first (earlier) on ties


@register("frames")
class UniformFrames(CompressorModule):
    """Uniform frame subsampling: ``[B, T, H, W, D] -> [B, M, D]``.

    num_frames: frames to keep; None keeps as many whole frames as fit in the budget
      (``min(T, M // (H*W))``).
    """

    num_frames: int | None = None

    SCALE_EQUIVARIANT = True      # Whole frames, chosen by position.

    def __call__(self, tokens: jax.Array, deterministic: bool = True, mask: jax.Array | None = None) -> Compressed:
        check_tokens(tokens)
        b, t, h, w, d = tokens.shape
        f = self.num_frames if self.num_frames is not None else min(t, self.budget // (h * w))
        if f < 1:
            raise ValueError(f"frames: budget={self.budget} is smaller than one frame of H*W={h * w} tokens "
                             f"(tokens {tuple(tokens.shape)})")
        if f > t:
            raise ValueError(f"frames: num_frames={f} > T={t} frames in tokens {tuple(tokens.shape)}")
        check_budget_fits("frames", f * h * w, self.budget, f"{f} frames of {h}x{w}")
        real = token_mask(mask, tokens.shape)
        frame_real = jnp.any(real, axis=(2, 3))                                               # [B, T]
        # every real length's picks and nearest-pick map (static tables, gathered per video)
        picks = np.stack([np.round(np.linspace(0, n - 1, f)).astype(np.int32) for n in range(1, t + 1)])
        near = np.stack([np.pad(nearest_kept(n, picks[n - 1]), (0, t - n)) for n in range(1, t + 1)])
        n_real = jnp.maximum(jnp.sum(frame_real, axis=1), 1)
        real_ids = jnp.argsort(~frame_real, axis=1, stable=True).astype(jnp.int32)          # real frames first
        rank = jnp.asarray(picks)[n_real - 1]                                                # [B, F] ranks
        kept = jnp.take_along_axis(real_ids, rank, axis=1)                                   # [B, F] frame ids
        first = jnp.concatenate([jnp.ones((b, 1), bool), rank[:, 1:] != rank[:, :-1]], axis=1)
        first = first & jnp.take_along_axis(frame_real, kept, axis=1)
        out = jnp.take_along_axis(tokens, kept[:, :, None, None, None], axis=1).reshape(b, f * h * w, d)
        slot_real = (jnp.take_along_axis(real, kept[:, :, None, None], axis=1).reshape(b, f, h * w)
                     & first[:, :, None]).reshape(b, f * h * w)
        out = jnp.where(slot_real[..., None], out, 0).astype(tokens.dtype)
        cells = jnp.arange(h * w, dtype=jnp.int32)
        source = (kept[:, :, None] * (h * w) + cells).reshape(b, f * h * w)
        source = jnp.where(slot_real, source, -1)
        # nearest kept frame, in real-frame order: the frame of real rank j -> pick near[j]
        # (argmin: the earlier pick on ties, so a repeated pick maps to its first slots)
        frame_rank = jnp.cumsum(frame_real, axis=1) - 1                                      # [B, T]
        near_slot = jnp.take_along_axis(jnp.asarray(near)[n_real - 1], jnp.maximum(frame_rank, 0), axis=1)
        assign = near_slot[:, :, None] * (h * w) + cells
        assign = jnp.where(real.reshape(b, t, h * w), assign, -1).reshape(b, t * h * w)
        out, slot_mask, slot = pad_to_budget(out, self.budget, mask=slot_real, slot_aux={"source_index": source})
        aux = {"frame_index": jnp.where(first, kept, -1), "source_index": slot["source_index"],
               "assign": assign.astype(jnp.int32)}
        return Compressed(tokens=out, mask=slot_mask, aux=aux)
