"""``frames``: uniform frame subsampling, every token of the kept frames.

Keeps F frames at ``round(linspace(0, T-1, F))`` (first and last frame kept when F >= 2,
frame 0 when F == 1).  Output is the kept frames' tokens in raster order, ``F*H*W <= M``
slots, the rest padded.

aux:
  frame_index  [B, F] int32: kept frame ids.
  source_index [B, M] int32: flat raster index of each slot's token, -1 for pads.
  assign       [B, T*H*W] int32: slot of the same (h, w) cell in the nearest kept frame
               (ties go to the earlier frame), so ``tokens[assign]`` is the
               nearest-frame reconstruction.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from td_jax.compressors.base import Compressed, CompressorModule, check_tokens, register
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

    def __call__(self, tokens: jax.Array, deterministic: bool = True) -> Compressed:
        check_tokens(tokens)
        b, t, h, w, d = tokens.shape
        f = self.num_frames if self.num_frames is not None else min(t, self.budget // (h * w))
        if f < 1:
            raise ValueError(f"frames: budget={self.budget} is smaller than one frame of H*W={h * w} tokens "
                             f"(tokens {tuple(tokens.shape)})")
        if f > t:
            raise ValueError(f"frames: num_frames={f} > T={t} frames in tokens {tuple(tokens.shape)}")
        check_budget_fits("frames", f * h * w, self.budget, f"{f} frames of {h}x{w}")
        kept = uniform_frame_indices(t, f)
        out = tokens[:, kept].reshape(b, f * h * w, d)
        cells = np.arange(h * w, dtype=np.int32)
        source = (kept[:, None] * (h * w) + cells[None, :]).reshape(-1)
        assign = (nearest_kept(t, kept)[:, None] * (h * w) + cells[None, :]).reshape(-1)
        source = jnp.broadcast_to(jnp.asarray(source), (b, f * h * w))
        out, mask, slot = pad_to_budget(out, self.budget, slot_aux={"source_index": source})
        aux = {"frame_index": jnp.broadcast_to(jnp.asarray(kept), (b, f)),
               "source_index": slot["source_index"],
               "assign": jnp.broadcast_to(jnp.asarray(assign), (b, t * h * w))}
        return Compressed(tokens=out, mask=mask, aux=aux)
