"""``dycoke``: DyCoke (Tao et al., CVPR 2025): temporal token merging, then pruning.

Stage 1, **temporal token merging (TTM)**, as the official code does it (KD-TAO/DyCoke
``llava_arch.dycole_ttm``): frames go in windows of 4 (f0 f1 f2 f3).  A token is compared
with the token at the *same grid position* of the window's reference frame (cosine):
f1 against f0 and f3 against f2, then f2 against f0.  In each compared frame only the
``int((1 - K) * H*W)`` *least* similar positions survive; the others are redundant with
the reference frame's token there and are merged into it (dropped: the reference token
stands for them).  f0 is always kept whole.  ``K`` (``prune_rate``) is
TTM's pruning rate; the repo's lmms-eval example runs K = 0.7.  A last window shorter than
4 frames does what its frames allow (f1 vs f0, f2 vs f0); the official loop skips the
f2-vs-f0 step of the last window (an off-by-one), which is not copied.

Stage 2, **dynamic pruning**: DyCoke prunes the KV cache *during decoding*: at LLM layer
L it keeps the top (1 - P) of the visual tokens by the attention of the current token, and
re-selects whenever that attention pattern shifts.  A compressor runs before the LLM and
must emit a static M slots, so this stage becomes: keep the M survivors of TTM that score
highest, in their original order.  The score is the attention of a ``query`` (e.g. the
prompt's last hidden state at layer L) when one is given - the quantity DyCoke uses - and
the token's L2 norm otherwise (documented fallback).  What is left out: the per-step
re-selection during decoding (it needs the LLM's attention at every generated token).

Budgets: any M >= 1; when TTM keeps fewer than M tokens all survivors are kept and the
remaining slots are False.

Padded videos (``mask``): masked tokens never survive; a real token whose reference is
masked counts as not redundant (it survives TTM).

aux:
  source_index [B, M] int32: input index of each slot's token (-1: empty slot).
  ttm_keep     [B, T*H*W] bool: survivors of stage 1.
  assign       [B, T*H*W] int32: slot standing in for each input token - its own, or, if
               TTM merged it, its reference's (following f3 -> f2 -> f0); -1 if that
               token was pruned in stage 2 or is masked.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from td_jax.compressors.base import Compressed, CompressorModule, check_tokens, register, token_mask
from td_jax.compressors.common import check_options, pad_to_budget
from td_jax.compressors.ops import NEG, first_slots, gather_rows, rank_within, unit_rows
from td_jax.compressors.prune import attention_scores, norm_scores

WINDOW = 4


def reference_frames(t: int) -> np.ndarray:
    """[T] int: each frame's TTM reference (-1 for window heads f0): f1 -> f0, f2 -> f0,
    f3 -> f2 inside every window of 4 frames."""
    ref = np.full(t, -1, np.int64)
    for start in range(0, t, WINDOW):
        for off, r in ((1, 0), (2, 0), (3, 2)):
            if start + off < t:
                ref[start + off] = start + r
    return ref


def ttm_keep(x: jax.Array, real: jax.Array, prune_rate: float) -> jax.Array:
    """Stage 1 on x [B, T, P, D] (P = H*W), real [B, T, P] -> survivors [B, T, P] bool."""
    _, t, p, _ = x.shape
    ref = reference_frames(t)
    keep_n = int((1.0 - prune_rate) * p)
    unit = unit_rows(x)
    ref_safe = np.maximum(ref, 0)
    sim = jnp.sum(unit * unit[:, ref_safe], axis=-1)                                    # [B, T, P]
    ref_real = real[:, ref_safe]
    sim = jnp.where(ref_real, sim, NEG)              # no real reference: not redundant
    # least similar first: rank by -sim within each frame
    rank = rank_within(-sim, jnp.zeros_like(sim, jnp.int32), real)
    head = jnp.asarray(ref < 0)[None, :, None]
    return real & (head | (rank < keep_n))


def stage_two(flat: jax.Array, keep: jax.Array, m: int, query: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """Keep the m best survivors in order: flat [B, N, D], keep [B, N] -> (idx [B, m], ok [B, m])."""
    scores = norm_scores(flat) if query is None else attention_scores(flat, query, keep)
    rank = rank_within(scores, jnp.zeros(keep.shape, jnp.int32), keep)
    return first_slots(keep & (rank < m), m)


@register("dycoke")
class DyCoke(CompressorModule):
    """DyCoke to the budget: ``[B, T, H, W, D] -> [B, M, D]`` (see the module docstring).

    prune_rate: K, the share of each compared frame's positions TTM merges away (0.7).
    """

    prune_rate: float = 0.7

    # Tokens kept by cosine similarity and norm rank; a query's softmax attention depends on the scale.
    SCALE_EQUIVARIANT = True
    SCALE_DEPENDENT_INPUTS = frozenset({"query"})

    def __call__(self, tokens: jax.Array, deterministic: bool = True, mask: jax.Array | None = None,
                 query: jax.Array | None = None) -> Compressed:
        """tokens [B, T, H, W, D], mask [B, T, H, W] / [B, T], query [B, D] / [B, Q, D] (optional)."""
        check_tokens(tokens)
        check_options("dycoke", self, unit_interval=("prune_rate",))
        b, t, h, w, d = tokens.shape
        n, p = t * h * w, h * w
        real = token_mask(mask, tokens.shape).reshape(b, t, p)
        x = jnp.where(real[..., None], tokens.reshape(b, t, p, d), 0).astype(tokens.dtype)
        keep = ttm_keep(x, real, self.prune_rate).reshape(b, n)
        flat = x.reshape(b, n, d)
        idx, ok = stage_two(flat, keep, min(self.budget, n), query)
        out = jnp.where(ok[..., None], gather_rows(flat, idx), 0).astype(tokens.dtype)
        slot_of = jnp.full((b, n + 1), -1, jnp.int32).at[jnp.arange(b)[:, None], jnp.where(ok, idx, n)].set(
            jnp.broadcast_to(jnp.arange(idx.shape[1], dtype=jnp.int32), idx.shape))[:, :n]
        # a token merged by TTM is stood for by its reference's token (following the chain)
        ref = reference_frames(t)
        rep = np.arange(n).reshape(t, p)
        kept3 = keep.reshape(b, t, p)
        rep_b = jnp.broadcast_to(jnp.asarray(rep), (b, t, p))
        for f in range(t):                 # frames in order: a reference is resolved before its dependants
            if ref[f] >= 0:
                rep_b = rep_b.at[:, f].set(jnp.where(kept3[:, f], rep_b[:, f], rep_b[:, ref[f]]))
        assign = jnp.take_along_axis(slot_of, rep_b.reshape(b, n), axis=1)
        assign = jnp.where(real.reshape(b, n), assign, -1)
        out, slot_mask, slot = pad_to_budget(out, self.budget, mask=ok,
                                             slot_aux={"source_index": jnp.where(ok, idx, -1)})
        return Compressed(tokens=out, mask=slot_mask,
                          aux={"source_index": slot["source_index"], "ttm_keep": keep, "assign": assign})
