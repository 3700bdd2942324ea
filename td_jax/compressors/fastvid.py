"""``fastvid``: FastVID (Shen et al., NeurIPS 2025): dynamic temporal segmentation + density
spatio-temporal pruning.

The algorithm, as the official LLaVA-OneVision code runs it (LunarShen/FastVID,
``modeling_qwen2.py``, "FastVID" block; defaults from its lmms-eval wrapper):

1. **DySeg** - each frame's global feature (SigLIP's attention-pooling head output) is
   compared with the next frame's (cosine); the video is cut after the ``c - 1`` least
   similar transitions *and* after every transition below ``tau`` (c = 8, tau = 0.9).
2. **STPrune** - every frame keeps ``r * H*W`` tokens, of which a share ``d`` (0.4) are
   *contextual* and the rest *salient*:
   * **ATS** (anchor token selection): a frame's salient tokens are its top tokens by the
     tower's attention (the pooling head's probe attention);
   * **DTM** (density-based token merging): a segment's contextual budget (``d * r * H*W``
     per frame) goes to its *anchor frames* - every ``p``-th frame counted back from the
     segment's last frame (p = 4) - in equal shares.  In an anchor frame the non-salient
     tokens get a DPC-kNN score (:func:`td_jax.compressors.ops.dpc_knn_score`, k = 4) and
     the top ones are the cluster centres; every non-salient token of the *whole segment*
     joins its most similar centre (cosine) of each anchor frame, and a centre becomes
     ``w * centre + (1 - w) * mean(joined)`` with ``w = max(1 / (count + 1), beta)``
     (beta = 0.6; the centre counts itself).
   Kept tokens go to the LLM in their original (t, h, w) order.

Here the per-frame ratio becomes a video budget M: C = floor(M * d) contextual slots and
S = M - C salient ones, split over the real frames as evenly as integers allow
(:func:`td_jax.compressors.ops.split_quota`), so every budget works, including M < T
(frames then get 0 or 1 salient token).  A segment's contextual slots are split evenly
over its anchors (the official code floors each share and drops the remainder).

Inputs the compressor may lack, and what it does then:
* ``saliency [B, T, H, W]`` (the tower's attention per token): optional; tokens are
  ranked by L2 norm without it (documented fallback).
* ``frame_features [B, T, Dg]`` (the pooling head's per-frame output): optional; the mean
  of the frame's tokens stands in.
Equal DPC densities are ordered by index (the official code adds 1e-6 random noise).

Padded videos (``mask``): padded frames get no slots and form segments of their own;
masked tokens are never salient, centres or joiners.

aux:
  source_index [B, M] int32: input index of each slot's token (the centre for contextual
               slots), -1 for empty slots.
  salient      [B, M] bool: slot holds a salient (ATS) token.
  segment      [B, T] int32: DySeg segment id of each frame.
  assign       [B, T*H*W] int32: slot standing in for each input token (salient: itself;
               others: the most similar centre of their segment); -1 if none / masked.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from td_jax.compressors.base import Compressed, CompressorModule, check_tokens, register, token_mask
from td_jax.compressors.common import check_options, pad_to_budget, token_scores
from td_jax.compressors.ops import NEG, dpc_knn_score, first_slots, gather_rows, rank_within, split_quota, unit_rows

MERGE_BLOCK = 512   # tokens per block when joining tokens to centres (bounds the [block, C] scores)


def dyseg(feat: jax.Array, frame_real: jax.Array, segments: int, threshold: float) -> jax.Array:
    """DySeg: feat [B, T, Dg], frame_real [B, T] -> segment id [B, T] int32 (0, 1, ...).

    Cut after transition j (frames j, j+1) when it is among the ``segments - 1`` least
    similar real transitions or its cosine is below ``threshold``; transitions touching a
    padded frame are always cut.
    """
    if feat.shape[1] == 1:
        return jnp.zeros(frame_real.shape, jnp.int32)
    u = unit_rows(feat)
    sim = jnp.sum(u[:, :-1] * u[:, 1:], axis=-1)                                           # [B, T-1]
    ok = frame_real[:, :-1] & frame_real[:, 1:]
    low = rank_within(-sim, jnp.zeros_like(sim, jnp.int32), ok) < segments - 1
    cut = ~ok | low | (sim < threshold)
    return jnp.concatenate([jnp.zeros_like(cut[:, :1], jnp.int32), jnp.cumsum(cut, axis=1).astype(jnp.int32)], 1)


def anchor_quota(seg: jax.Array, frame_real: jax.Array, ctx_frame: jax.Array, stride: int) -> jax.Array:
    """Contextual slots per frame: a segment's total (sum of ctx_frame [B, T] over it) split
    evenly over its anchor frames (every ``stride``-th frame counted back from the
    segment's end).  seg [B, T] -> [B, T] int32 (0 for non-anchors)."""
    t = seg.shape[1]
    same = seg[:, :, None] == seg[:, None, :]                                              # [B, T, T]
    idx = jnp.arange(t)
    seg_end = jnp.max(jnp.where(same, idx[None, None, :], -1), axis=2)                      # [B, T]
    anchor = frame_real & ((seg_end - idx[None, :]) % stride == 0)
    total = jnp.sum(jnp.where(same, ctx_frame[:, None, :], 0), axis=2)                    # [B, T]
    n_anchor = jnp.sum(same & anchor[:, None, :], axis=2)
    k = jnp.sum(same & anchor[:, None, :] & (idx[None, None, :] < idx[None, :, None]), axis=2)
    na = jnp.maximum(n_anchor, 1)
    q = (total * (k + 1)) // na - (total * k) // na
    return jnp.where(anchor, q, 0).astype(jnp.int32)


def join_centres(x: jax.Array, joiner: jax.Array, token_seg: jax.Array, cidx: jax.Array, cok: jax.Array,
                 cframe: jax.Array, cseg: jax.Array, n_frames: int, block: int = MERGE_BLOCK):
    """DTM's joins: every joiner token joins, for each anchor frame of its segment, that
    frame's most similar centre (cosine).

    x [B, N, D], joiner [B, N] bool, token_seg [B, N]; centres cidx/cok/cframe/cseg [B, C].
    Returns (sums [B, C, D] of joined tokens, counts [B, C], best [B, N] int32 = the most
    similar centre of the token's segment over all its anchors, -1 if none).
    """
    b, n, d = x.shape
    c = cidx.shape[1]
    unit = unit_rows(x)
    cu = gather_rows(unit, cidx)                                                           # [B, C, D]
    nblk = -(-n // block)
    pad = nblk * block - n
    padn = lambda v, fill: jnp.pad(v, [(0, 0), (0, pad)] + [(0, 0)] * (v.ndim - 2), constant_values=fill)
    xs = (padn(x.astype(jnp.float32), 0), padn(unit, 0), padn(joiner, False), padn(token_seg, -1))
    xs = tuple(v.reshape((b, nblk, block) + v.shape[2:]).swapaxes(0, 1) for v in xs)
    frame_ids = jnp.where(cok, cframe, n_frames)                                         # invalid -> extra group
    j_idx = jnp.arange(c, dtype=jnp.int32)

    def per_block(carry, blk):
        sums, counts = carry
        xb, ub, jb, sb = blk
        sim = jnp.einsum("bnd,bcd->bnc", ub, cu)
        elig = jb[:, :, None] & cok[:, None, :] & (sb[:, :, None] == cseg[:, None, :])
        sim = jnp.where(elig, sim, NEG)

        def group_first(s, fid):      # s [n, C] -> winner mask per (token, centre frame)
            gmax = jax.ops.segment_max(s.T, fid, num_segments=n_frames + 1)               # [F+1, n]
            top = (s == gmax[fid].T) & (s > NEG)
            cand = jnp.where(top, j_idx[None, :], c)
            first = jax.ops.segment_min(cand.T, fid, num_segments=n_frames + 1)           # [F+1, n]
            return top & (j_idx[None, :] == first[fid].T)

        win = jax.vmap(group_first)(sim, frame_ids)                                      # [B, n, C]
        wf = win.astype(jnp.float32)
        sums = sums + jnp.einsum("bnc,bnd->bcd", wf, xb)
        counts = counts + jnp.sum(wf, axis=1)
        best = jnp.where(jnp.any(elig, axis=-1), jnp.argmax(sim, axis=-1), -1).astype(jnp.int32)
        return (sums, counts), best

    init = (jnp.zeros((b, c, d), jnp.float32), jnp.zeros((b, c), jnp.float32))
    (sums, counts), best = jax.lax.scan(per_block, init, xs)
    best = best.swapaxes(0, 1).reshape(b, nblk * block)[:, :n]
    return sums, counts, best


@register("fastvid")
class FastVID(CompressorModule):
    """FastVID to the budget: ``[B, T, H, W, D] -> [B, M, D]`` (see the module docstring).

    segments: c, DySeg's minimum number of segments (cuts at the c - 1 least similar transitions).
    threshold: tau, DySeg also cuts below this cosine.
    context_ratio: d, share of the budget given to DTM's contextual tokens.
    anchor_stride: p, anchor frames every p-th frame from a segment's end.
    merge_floor: beta, the least weight a centre keeps in its merge.
    knn: neighbours of the DPC-kNN density.
    """

    segments: int = 8
    threshold: float = 0.9
    context_ratio: float = 0.4
    anchor_stride: int = 4
    merge_floor: float = 0.6
    knn: int = 4

    def __call__(self, tokens: jax.Array, deterministic: bool = True, mask: jax.Array | None = None,
                 saliency: jax.Array | None = None, frame_features: jax.Array | None = None) -> Compressed:
        """tokens [B, T, H, W, D], mask [B, T, H, W] / [B, T], saliency [B, T, H, W] and
        frame_features [B, T, Dg] (both optional)."""
        check_tokens(tokens)
        check_options("fastvid", self, at_least_one=("segments", "anchor_stride", "knn"),
                      unit_interval=("context_ratio", "merge_floor"))
        b, t, h, w, d = tokens.shape
        p, n = h * w, t * h * w
        if frame_features is not None and (frame_features.ndim != 3 or tuple(frame_features.shape[:2]) != (b, t)):
            raise ValueError(f"fastvid: frame_features must be [B, T, Dg] with [B, T]={[b, t]}, "
                             f"got {list(frame_features.shape)}")
        m = min(self.budget, n)
        real = token_mask(mask, tokens.shape).reshape(b, t, p)
        x = jnp.where(real[..., None], tokens.reshape(b, t, p, d), 0).astype(tokens.dtype)
        frame_real = jnp.any(real, axis=2)
        n_ctx = int(m * self.context_ratio)
        n_sal = m - n_ctx
        # DySeg
        if frame_features is None:
            cnt = jnp.maximum(jnp.sum(real, axis=2, keepdims=True), 1)
            feat = jnp.sum(x.astype(jnp.float32), axis=2) / cnt
        else:
            feat = frame_features
        seg = dyseg(feat, frame_real, self.segments, self.threshold)                          # [B, T]
        # ATS: salient tokens per frame
        score = token_scores("fastvid", x.reshape(b, t, h, w, d), saliency).reshape(b, t, p)
        sal_q = jnp.minimum(split_quota(n_sal, frame_real.astype(jnp.float32)), jnp.sum(real, axis=2))
        salient = real & (rank_within(score, jnp.zeros_like(real, jnp.int32), real) < sal_q[..., None])
        # DTM: centres in anchor frames by DPC-kNN score
        rest = real & ~salient
        ctx_q = anchor_quota(seg, frame_real, split_quota(n_ctx, frame_real.astype(jnp.float32)),
                             self.anchor_stride)
        ctx_q = jnp.minimum(ctx_q, jnp.sum(rest, axis=2))
        dens, _ = dpc_knn_score(x, rest, self.knn, self.knn)                                   # [B, T, P]
        centre = rest & (rank_within(dens, jnp.zeros_like(rest, jnp.int32), rest) < ctx_q[..., None])
        flat = x.reshape(b, n, d)
        centre_f, salient_f = centre.reshape(b, n), salient.reshape(b, n)
        cidx, cok = first_slots(centre_f, max(n_ctx, 1))
        cframe = cidx // p
        cseg = jnp.take_along_axis(seg, cframe, axis=1)
        token_seg = jnp.broadcast_to(seg[:, :, None], (b, t, p)).reshape(b, n)
        sums, counts, best = join_centres(flat, rest.reshape(b, n), token_seg, cidx, cok, cframe, cseg, t)
        wgt = jnp.maximum(1.0 / (counts + 1.0), self.merge_floor)[..., None]
        merged = wgt * gather_rows(flat, cidx).astype(jnp.float32) + (1 - wgt) * sums / jnp.maximum(counts, 1.0)[..., None]
        # slots: salient + centres in (t, h, w) order
        idx, ok = first_slots(salient_f | centre_f, m)
        crank = jnp.cumsum(centre_f, axis=1) - 1                                              # [B, N]
        slot_c = jnp.take_along_axis(crank, idx, axis=1)
        is_c = jnp.take_along_axis(centre_f, idx, axis=1) & ok
        vals = jnp.where(is_c[..., None], gather_rows(merged, jnp.maximum(slot_c, 0)),
                         gather_rows(flat, idx).astype(jnp.float32))
        out = jnp.where(ok[..., None], vals, 0).astype(tokens.dtype)
        slot_of = jnp.full((b, n + 1), -1, jnp.int32).at[jnp.arange(b)[:, None], jnp.where(ok, idx, n)].set(
            jnp.broadcast_to(jnp.arange(m, dtype=jnp.int32), idx.shape))[:, :n]
        centre_slot = jnp.take_along_axis(slot_of, cidx, axis=1)                              # [B, C]
        joined_slot = jnp.where(best >= 0, jnp.take_along_axis(centre_slot, jnp.maximum(best, 0), axis=1), -1)
        assign = jnp.where(salient_f | centre_f, slot_of, joined_slot)
        assign = jnp.where(real.reshape(b, n), assign, -1)
        sal_slot = jnp.take_along_axis(salient_f, idx, axis=1) & ok
        out, slot_mask, slot = pad_to_budget(out, self.budget, mask=ok,
                                             slot_aux={"source_index": jnp.where(ok, idx, -1), "salient": sal_slot})
        return Compressed(tokens=out, mask=slot_mask,
                          aux={"source_index": slot["source_index"], "salient": slot["salient"], "segment": seg,
                               "assign": assign})
