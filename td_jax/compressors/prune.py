"""``prune``: keep the highest-scoring tokens, in their original (t, h, w) order.

Scores:
  * L2 norm of each token (default; the call gets no query);
  * attention to a query, FastV-style, when ``query`` is passed to the module call:
    ``score[n] = mean_q softmax_n(q . x_n / sqrt(D))`` with ``query [B, D]`` or
    ``[B, Q, D]`` (e.g. the prompt's last hidden state).  The functional
    ``Compressor.__call__`` passes no query; use
    ``compressor.module(budget).apply({}, tokens, query=q)`` for attention scores.

Modes: ``"video"`` keeps the top ``M`` tokens of the whole video; ``"frame"`` keeps the top
``M // T`` of every frame.  The kept tokens stay in raster order (``top_k`` indices sorted).
Masked (padding) tokens score -inf: they are kept only when a video (or frame) has fewer
real tokens than slots, and those slots are marked False.

aux:
  source_index [B, M] int32: flat raster index of each kept token, -1 for pads.
  scores       [B, T*H*W] float32: every input token's score (-inf for masked tokens).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from td_jax.compressors.base import Compressed, CompressorModule, check_tokens, register, token_mask
from td_jax.compressors.common import pad_to_budget


def norm_scores(x: jax.Array) -> jax.Array:
    """x [B, N, D] -> [B, N] L2 norms."""
    return jnp.linalg.norm(x.astype(jnp.float32), axis=-1)


def attention_scores(x: jax.Array, query: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """x [B, N, D], query [B, D] or [B, Q, D] -> [B, N]: softmax attention, mean over queries
    (over the ``valid [B, N]`` tokens only, when given)."""
    if query.ndim == 2:
        query = query[:, None]
    if query.ndim != 3 or query.shape[0] != x.shape[0] or query.shape[-1] != x.shape[-1]:
        raise ValueError(f"prune: query must be [B, D] or [B, Q, D] matching tokens [B, N, D]={tuple(x.shape)}, "
                         f"got {tuple(query.shape)}")
    logits = jnp.einsum("bqd,bnd->bqn", query.astype(jnp.float32), x.astype(jnp.float32))
    logits = logits / jnp.sqrt(jnp.float32(x.shape[-1]))
    if valid is not None:
        logits = jnp.where(valid[:, None, :], logits, -jnp.inf)
    p = jax.nn.softmax(logits, axis=-1)
    return jnp.where(jnp.isnan(p), 0.0, p).mean(axis=1)


def top_k_in_order(scores: jax.Array, k: int) -> jax.Array:
    """scores [..., N] -> [..., k] int32 indices of the k best, ascending (order kept)."""
    _, idx = jax.lax.top_k(scores, k)
    return jnp.sort(idx, axis=-1).astype(jnp.int32)


@register("prune")
class Prune(CompressorModule):
    """Top-score token pruning: ``[B, T, H, W, D] -> [B, M, D]``.

    mode: ``"video"`` (top M of all T*H*W tokens) or ``"frame"`` (top M // T per frame).
    """

    mode: str = "video"

    # Kept tokens ranked by norm; a query's softmax attention depends on the scale.
    SCALE_EQUIVARIANT = True
    SCALE_DEPENDENT_INPUTS = frozenset({"query"})

    def __call__(self, tokens: jax.Array, deterministic: bool = True, mask: jax.Array | None = None,
                 query: jax.Array | None = None) -> Compressed:
        check_tokens(tokens)
        b, t, h, w, d = tokens.shape
        n = t * h * w
        real = token_mask(mask, tokens.shape).reshape(b, n)
        flat = jnp.where(real[..., None], tokens.reshape(b, n, d), 0).astype(tokens.dtype)
        scores = norm_scores(flat) if query is None else attention_scores(flat, query, real)
        scores = jnp.where(real, scores, -jnp.inf)
        if self.mode == "video":
            idx = top_k_in_order(scores, min(self.budget, n))
        elif self.mode == "frame":
            per = min(self.budget // t, h * w)
            if per < 1:
                raise ValueError(f"prune(mode='frame'): budget={self.budget} < T={t} frames of tokens "
                                 f"{tuple(tokens.shape)}; use mode='video'")
            idx = top_k_in_order(scores.reshape(b, t, h * w), per)
            idx = (idx + (jnp.arange(t, dtype=jnp.int32) * (h * w))[None, :, None]).reshape(b, t * per)
        else:
            raise ValueError(f"prune: mode must be 'video' or 'frame', got {self.mode!r}")
        kept = jnp.take_along_axis(flat, idx[..., None], axis=1)
        kept_real = jnp.take_along_axis(real, idx, axis=1)
        idx = jnp.where(kept_real, idx, -1)
        out, slot_mask, slot = pad_to_budget(kept, self.budget, mask=kept_real, slot_aux={"source_index": idx})
        return Compressed(tokens=out, mask=slot_mask, aux={"source_index": slot["source_index"], "scores": scores})
