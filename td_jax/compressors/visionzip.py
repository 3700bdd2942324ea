"""``visionzip``: VisionZip (Yang et al., CVPR 2025): dominant tokens + contextual tokens.

The algorithm (official code: dvlab-research/VisionZip ``clip_encoder.py``; its video
adaptation for LLaVA-OneVision in cokeshao/HoliTom ``visionzip/``), on a group of tokens:

1. **dominant tokens**: the ``D`` tokens the vision tower attends to most (CLIP: the
   [CLS] row of the attention, summed over heads; SigLIP has no [CLS], so the video
   adaptation averages the last layer's attention over heads and queries), kept as they are;
2. **contextual tokens**: of the remaining tokens (in their order), every ``step``-th
   (``step = max(1, n_remaining // C)``, the first ``C`` of them) is a *target*; every other
   remaining token joins its most similar target (cosine, argmax) and each target becomes
   the merge of itself and the tokens that joined it.

Here a group is the whole video (``mode="video"``, the default: D + C = M over all T*H*W
tokens, so any budget works) or each frame (``mode="frame"``: M // T per frame, as the
LLaVA-OV adaptation does).  D = floor(M * dominant_ratio) (VisionZip's main setting 54
dominant + 10 contextual of 64: ratio 54/64), C = M - D.

Inputs the compressor may lack, and what it does then:
* ``saliency [B, T, H, W]`` (the tower's attention received by each token) - optional;
  without it tokens are ranked by L2 norm (documented fallback).
* VisionZip measures similarity on the last layer's attention *keys*; the compressor sees
  no keys, so similarity is on the tokens themselves (as this project's ToMe does).
Left out: nothing else of the algorithm; VisionZip's optional projector fine-tuning is a
training recipe, not part of the compression.

Merging (``contextual_merge``): ``"mean"`` (default) = mean of the target and the tokens
that joined it; ``"official"`` = the released code's ``target + mean(joined)`` (the target
itself when none joined).

Padded videos (``mask``): masked tokens are never dominant, targets or joiners; slots that
find no real token are False.

aux:
  source_index [B, M] int32: input index of each slot's token (the target for contextual
               slots), -1 for empty slots.
  dominant     [B, M] bool: slot holds a dominant token.
  assign       [B, T*H*W] int32: slot standing in for each input token (-1: masked).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from td_jax.compressors.base import Compressed, CompressorModule, check_tokens, register, token_mask
from td_jax.compressors.common import check_options, pad_to_budget, token_scores
from td_jax.compressors.ops import NEG, first_slots, gather_rows, unit_rows

MODES = ("video", "frame")
MERGES = ("mean", "official")
DEFAULT_DOMINANT_RATIO = 54 / 64


def split_counts(per_group: int, dominant_ratio: float) -> tuple[int, int]:
    """(dominant D, contextual C) slots of a group of ``per_group`` slots: D = floor(M*ratio)."""
    d = int(per_group * dominant_ratio)
    return d, per_group - d


def visionzip_group(x: jax.Array, valid: jax.Array, score: jax.Array, n_dom: int, n_ctx: int,
                    merge: str = "mean"):
    """VisionZip on groups: x [G, n, D], valid [G, n] bool, score [G, n] ->
    (tokens [G, n_dom + n_ctx, D], slot_valid, source [G, S] int32, dominant [G, S] bool,
    assign [G, n] int32 (slot per token, -1 masked))."""
    g, n, _ = x.shape
    score = jnp.where(valid, score, NEG)
    # 1. dominant: top n_dom by score, kept in input order
    if n_dom:
        top_s, top_i = jax.lax.top_k(score, n_dom)
        dom_sel = jnp.zeros((g, n), bool).at[jnp.arange(g)[:, None], top_i].set(top_s > NEG)
    else:
        dom_sel = jnp.zeros((g, n), bool)
    dom_idx, dom_ok = first_slots(dom_sel, n_dom)
    # 2. contextual: every step-th remaining token is a target
    rest = valid & ~dom_sel
    n_rest = jnp.sum(rest, axis=1, keepdims=True)
    rank = jnp.cumsum(rest, axis=1) - 1
    step = jnp.maximum(1, n_rest // max(n_ctx, 1))
    is_target = rest & (rank % step == 0) & (rank // step < n_ctx)
    tgt_idx, tgt_ok = first_slots(is_target, n_ctx)
    if n_ctx:
        unit = unit_rows(x)
        sim = jnp.einsum("gnd,gkd->gnk", unit, gather_rows(unit, tgt_idx))
        sim = jnp.where(tgt_ok[:, None, :], sim, NEG)
        best = jnp.argmax(sim, axis=-1).astype(jnp.int32)                               # [G, n]
    else:                                                           # dominant tokens only
        best = jnp.zeros((g, n), jnp.int32)
    joins = rest & ~is_target & jnp.any(tgt_ok, axis=1, keepdims=True)
    seg = jnp.where(joins, jnp.arange(g)[:, None] * n_ctx + best, g * n_ctx).reshape(-1)
    cnt = jax.ops.segment_sum(joins.reshape(-1).astype(jnp.float32), seg, g * n_ctx + 1)[:-1].reshape(g, n_ctx)
    d = x.shape[-1]
    joined = jax.ops.segment_sum(x.reshape(g * n, d).astype(jnp.float32), seg, g * n_ctx + 1)[:-1]
    joined = joined.reshape(g, n_ctx, d)
    tgt = gather_rows(x, tgt_idx).astype(jnp.float32)
    if merge == "mean":
        ctx = (tgt + joined) / (1.0 + cnt)[..., None]
    else:
        ctx = tgt + joined / jnp.maximum(cnt, 1.0)[..., None]
    tokens = jnp.concatenate([gather_rows(x, dom_idx).astype(jnp.float32), ctx], axis=1).astype(x.dtype)
    slot_valid = jnp.concatenate([dom_ok, tgt_ok], axis=1)
    tokens = jnp.where(slot_valid[..., None], tokens, 0).astype(x.dtype)
    source = jnp.where(slot_valid, jnp.concatenate([dom_idx, tgt_idx], axis=1), -1)
    dominant = jnp.concatenate([dom_ok, jnp.zeros_like(tgt_ok)], axis=1)
    # assign: dominant -> own slot, target -> own slot, joiner -> its target's slot
    slot_of = jnp.full((g, n), -1, jnp.int32)
    rows = jnp.arange(g)[:, None]
    slot_of = slot_of.at[rows, jnp.where(dom_ok, dom_idx, n)].set(
        jnp.broadcast_to(jnp.arange(n_dom, dtype=jnp.int32), dom_idx.shape), mode="drop")
    slot_of = slot_of.at[rows, jnp.where(tgt_ok, tgt_idx, n)].set(
        jnp.broadcast_to(n_dom + jnp.arange(n_ctx, dtype=jnp.int32), tgt_idx.shape), mode="drop")
    assign = jnp.where(joins, n_dom + best, slot_of)
    return tokens, slot_valid, source, dominant, jnp.where(valid, assign, -1)


@register("visionzip")
class VisionZip(CompressorModule):
    """VisionZip to the budget: ``[B, T, H, W, D] -> [B, M, D]`` (see the module docstring).

    mode: ``"video"`` (D + C = M over the whole video) or ``"frame"`` (M // T per frame).
    dominant_ratio: share D / (D + C) of dominant tokens (54/64).
    contextual_merge: ``"mean"`` or ``"official"`` (target + mean of joined).
    """

    mode: str = "video"
    dominant_ratio: float = DEFAULT_DOMINANT_RATIO
    contextual_merge: str = "mean"

    SCALE_EQUIVARIANT = True      # Tokens kept by saliency (or norm rank) and means merged by cosine similarity.

    def __call__(self, tokens: jax.Array, deterministic: bool = True, mask: jax.Array | None = None,
                 saliency: jax.Array | None = None) -> Compressed:
        """tokens [B, T, H, W, D], mask [B, T, H, W] / [B, T], saliency [B, T, H, W] (optional)."""
        check_tokens(tokens)
        b, t, h, w, d = tokens.shape
        if self.mode not in MODES:
            raise ValueError(f"visionzip: mode must be one of {MODES}, got {self.mode!r}")
        if self.contextual_merge not in MERGES:
            raise ValueError(f"visionzip: contextual_merge must be one of {MERGES}, got {self.contextual_merge!r}")
        check_options("visionzip", self, unit_interval=("dominant_ratio",))
        real = token_mask(mask, tokens.shape)
        x = jnp.where(real[..., None], tokens, 0).astype(tokens.dtype)
        score = token_scores("visionzip", x, saliency)
        if self.mode == "video":
            groups, per = b, min(self.budget, t * h * w)
        else:
            groups, per = b * t, min(self.budget // t, h * w)
            if per < 1:
                raise ValueError(f"visionzip(mode='frame'): budget={self.budget} < T={t} frames of tokens "
                                 f"{tuple(tokens.shape)}; use mode='video'")
        n_dom, n_ctx = split_counts(per, self.dominant_ratio)
        n = t * h * w // (groups // b)
        out, ok, src, dom, assign = visionzip_group(x.reshape(groups, n, d), real.reshape(groups, n),
                                                    score.reshape(groups, n), n_dom, n_ctx, self.contextual_merge)
        if self.mode == "frame":
            offs_in = (jnp.arange(t, dtype=jnp.int32) * (h * w))[None, :, None]
            offs_out = (jnp.arange(t, dtype=jnp.int32) * per)[None, :, None]
            src = src.reshape(b, t, per)
            src = jnp.where(src >= 0, src + offs_in, -1)
            assign = assign.reshape(b, t, h * w)
            assign = jnp.where(assign >= 0, assign + offs_out, -1)
        out = out.reshape(b, -1, d)
        ok, src, dom = (v.reshape(b, -1) for v in (ok, src, dom))
        out, slot_mask, slot = pad_to_budget(out, self.budget, mask=ok, slot_aux={"source_index": src,
                                                                                  "dominant": dom})
        return Compressed(tokens=out, mask=slot_mask,
                          aux={"source_index": slot["source_index"], "dominant": slot["dominant"],
                               "assign": assign.reshape(b, t * h * w)})
