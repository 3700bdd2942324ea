"""``none``: keep every token (the full model's input), padded to the budget's slots.

Masked (padding) tokens keep their slots, zeroed and marked False.

aux:
  source_index [B, M] int32: flat raster index (t, h, w) of each slot's token, -1 for pads.
  assign       [B, T*H*W] int32: the slot each input token lands in (the identity here;
               -1 for masked tokens).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from td_jax.compressors.base import Compressed, CompressorModule, check_tokens, register, token_mask
from td_jax.compressors.common import check_budget_fits, flatten_video, pad_to_budget


@register("none")
class NoCompression(CompressorModule):
    """All T*H*W tokens: ``[B, T, H, W, D] -> [B, M, D]`` with M >= T*H*W."""

    SCALE_EQUIVARIANT = True      # The tokens themselves.

    def __call__(self, tokens: jax.Array, deterministic: bool = True, mask: jax.Array | None = None) -> Compressed:
        check_tokens(tokens)
        b, t, h, w, _ = tokens.shape
        n = t * h * w
        check_budget_fits("none", n, self.budget, f"keeping all T*H*W of tokens {tuple(tokens.shape)}")
        real = token_mask(mask, tokens.shape).reshape(b, n)
        flat = jnp.where(real[..., None], flatten_video(tokens), 0).astype(tokens.dtype)
        index = jnp.where(real, jnp.arange(n, dtype=jnp.int32), -1)
        out, slot_mask, slot = pad_to_budget(flat, self.budget, mask=real, slot_aux={"source_index": index})
        return Compressed(tokens=out, mask=slot_mask, aux={"source_index": slot["source_index"], "assign": index})
