"""``holitom``: HoliTom (Shao et al., NeurIPS 2025): holistic token merging, outer-LLM part.

The algorithm before the LLM, as the official code runs it (cokeshao/HoliTom,
``holitom/llava_arch.py``; defaults from its scripts and environment variables):

1. **Global redundancy-aware temporal segmentation** - for every grid position p the
   cosine of consecutive frames' tokens; position p is *static* in a window [s, e] when
   every step inside it is above ``tau`` (0.8).  Merging a window's static positions saves
   ``(#static positions) * (e - s)`` tokens, and a dynamic programme over frames picks the
   partition into windows (length <= ``max_window``) that saves the most (a frame alone
   when nothing is gained; ties keep the shorter window).
2. **Temporal merging** - in a window, each static position becomes one token, the mean
   of its frames' tokens; the other positions stay *dynamic*, one token per frame.
3. **Spatial merging** - the retained share ``r`` is raised to ``r' = r * N / (N - saved)``
   and applied per unit: each frame's dynamic tokens keep ``ceil(n * r')``, of which a
   share ``1 - D`` are the frame's top tokens by the tower's attention (SigLIP's last
   layer, averaged over heads and queries) and the rest DPC-kNN cluster centres with the
   other dynamic tokens merged in; each window's static tokens keep ``round(n * r')`` DPC-kNN
   centres (k = min(7, that count)), the others merged into their nearest centre
   (Euclidean) as ``beta * centre + (1 - beta) * mean(members)`` (beta = 0.6; a centre with
   no members stays itself).  D = 0 in the official scripts (dynamic tokens all by attention).

Here the budget M replaces ``r``: the units (each window's static tokens, each frame's
dynamic tokens) share M in proportion to their sizes with exact integer totals
(:func:`td_jax.compressors.ops.split_quota`) - HoliTom's r' = M / (N - saved) without its
per-unit ceil/round overshoot - so every M works.  Kept tokens go out in (t, h, w) order, a
static token at its window's first frame.

Left out: **inner-LLM merging** (HoliTom's third stage merges similar visual tokens
inside the LLM at layer K with ratio R; it needs the LLM's hidden states and is not a
compressor step), and the LLaVA-OV 2x2 pooling HoliTom runs first (the compressor works on
whatever grid it is given).

Inputs the compressor may lack: ``saliency [B, T, H, W]`` (the tower's attention per
token) - optional; tokens are ranked by L2 norm without it (documented fallback).  Equal
DPC densities are ordered by index (the official code adds 1e-6 noise).

Padded videos (``mask``): a masked token never counts as static, is never a candidate and
never joins a cluster.

aux:
  source_index [B, M] int32: input index of each slot's token (a static token: its
               position in the window's first frame), -1 for empty slots.
  window_start [B, T] int32: first frame of each frame's window.
  assign       [B, T*H*W] int32: slot standing in for each input token (static positions:
               their cluster's slot; dynamic: itself or its cluster), -1 if pruned / masked.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from td_jax.compressors.base import Compressed, CompressorModule, check_tokens, register, token_mask
from td_jax.compressors.common import check_options, pad_to_budget, token_scores
from td_jax.compressors.ops import NEG, dpc_knn_score, first_slots, gather_rows, rank_within, split_quota, unit_rows


def static_steps(x: jax.Array, real: jax.Array, tau: float) -> jax.Array:
    """x [B, T, P, D], real [B, T, P] -> [B, T-1, P] bool: frame j -> j+1 at position p is
    above ``tau`` (cosine), both tokens real."""
    u = unit_rows(x)
    sim = jnp.sum(u[:, :-1] * u[:, 1:], axis=-1)
    return (sim > tau) & real[:, :-1] & real[:, 1:]


def saved_count(ok: jax.Array) -> jax.Array:
    """ok [T-1, P] -> [T, T] float: tokens saved by the window [s, e] (s <= e):
    (#positions static over all its steps) * (e - s); 0 for e <= s."""
    t = ok.shape[0] + 1
    breaks = jnp.concatenate([jnp.zeros((1, ok.shape[1]), jnp.int32), jnp.cumsum(~ok, axis=0).astype(jnp.int32)])
    n_static = jnp.sum(breaks[None, :, :] == breaks[:, None, :], axis=-1)                  # [s, e]
    length = jnp.arange(t)[None, :] - jnp.arange(t)[:, None]
    return jnp.where(length > 0, n_static * length, 0).astype(jnp.float32)


def segment_windows(saved: jax.Array, max_window: int) -> jax.Array:
    """HoliTom's dynamic programme: saved [T, T] -> window start of every frame [T] int32.

    dp[i] = max(dp[i-1], max over window sizes 2..min(i+1, max_window) of
    dp[i-ws] + saved[i-ws+1, i]); the first maximum wins (alone, then shorter windows),
    as the official strict ``>`` comparisons do.
    """
    t = saved.shape[0]
    ws = jnp.arange(t + 1)

    def step(i, carry):
        dp, start = carry
        alone = jnp.where(i > 0, dp[jnp.maximum(i - 1, 0)], 0.0)
        j = i - ws                                                                          # window [j+1, i]
        ok = (ws >= 2) & (ws <= jnp.minimum(i + 1, max_window))
        prev = jnp.where(j >= 0, dp[jnp.maximum(j, 0)], 0.0)
        val = jnp.where(ok, prev + saved[jnp.clip(j + 1, 0, t - 1), i], NEG)
        cand = jnp.concatenate([alone[None], val])
        k = jnp.argmax(cand)
        best_start = jnp.where(k == 0, i, i - ws[jnp.maximum(k - 1, 0)] + 1)
        return dp.at[i].set(cand[k]), start.at[i].set(best_start)

    _, prev_start = jax.lax.fori_loop(0, t, step, (jnp.zeros(t, jnp.float32), jnp.zeros(t, jnp.int32)))

    def back(_, carry):                 # walk the chosen windows from the end
        i, out = carry
        s = prev_start[jnp.maximum(i, 0)]
        frames = jnp.arange(t)
        out = jnp.where((i >= 0) & (frames >= s) & (frames <= i), s, out)
        return jnp.where(i >= 0, s - 1, i), out

    _, start = jax.lax.fori_loop(0, t, back, (jnp.int32(t - 1), jnp.zeros(t, jnp.int32)))
    return start


def cluster_merge(cand: jax.Array, unit: jax.Array, quota: jax.Array, knn: int, beta: float):
    """DPC-kNN clustering inside each frame's unit: cand [B, T, P, D] candidate tokens,
    unit [B, T, P] bool (the unit's candidates), quota [B, T] centres per unit.

    Returns (centre [B, T, P] bool, value [B, T, P, D] merged centre tokens, nearest
    [B, T, P] int32 = the centre position each member joins, -1 outside).
    """
    k = jnp.minimum(knn, quota)
    score, dist = dpc_knn_score(cand, unit, k, knn)
    centre = unit & (rank_within(score, jnp.zeros_like(unit, jnp.int32), unit) < quota[..., None])
    member = unit & ~centre
    d_c = jnp.where(centre[:, :, None, :], dist, jnp.inf)                                  # [B, T, P, P]
    nearest = jnp.argmin(d_c, axis=-1).astype(jnp.int32)
    has = jnp.any(centre, axis=-1, keepdims=True)
    nearest = jnp.where(member & has, nearest, jnp.where(centre, jnp.arange(cand.shape[2]), -1))
    b, t, p, d = cand.shape
    seg = jnp.where(member & has, (jnp.arange(b * t)[:, None] * p).reshape(b, t, 1) + nearest, b * t * p)
    sums = jax.ops.segment_sum(cand.reshape(-1, d).astype(jnp.float32), seg.reshape(-1), b * t * p + 1)[:-1]
    cnt = jax.ops.segment_sum((member & has).reshape(-1).astype(jnp.float32), seg.reshape(-1), b * t * p + 1)[:-1]
    sums, cnt = sums.reshape(b, t, p, d), cnt.reshape(b, t, p)
    c = cand.astype(jnp.float32)
    value = jnp.where(cnt[..., None] > 0, beta * c + (1 - beta) * sums / jnp.maximum(cnt, 1.0)[..., None], c)
    return centre, value, nearest


@register("holitom")
class HoliTom(CompressorModule):
    """HoliTom's outer-LLM merging to the budget: ``[B, T, H, W, D] -> [B, M, D]``.

    threshold: tau, the cosine above which a position is static between frames.
    max_window: longest temporal window of the segmentation.
    contextual_ratio: D, share of a frame's dynamic slots given to DPC-kNN centres (0).
    merge_weight: beta, a cluster's value is beta * centre + (1 - beta) * mean(members).
    knn: K, neighbours of the DPC-kNN density (capped by the unit's centre count).
    """

    threshold: float = 0.8
    max_window: int = 1024
    contextual_ratio: float = 0.0
    merge_weight: float = 0.6
    knn: int = 7

    def __call__(self, tokens: jax.Array, deterministic: bool = True, mask: jax.Array | None = None,
                 saliency: jax.Array | None = None) -> Compressed:
        """tokens [B, T, H, W, D], mask [B, T, H, W] / [B, T], saliency [B, T, H, W] (optional)."""
        check_tokens(tokens)
        check_options("holitom", self, at_least_one=("max_window", "knn"),
                      unit_interval=("contextual_ratio", "merge_weight"))
        b, t, h, w, d = tokens.shape
        p, n = h * w, t * h * w
        m = min(self.budget, n)
        real = token_mask(mask, tokens.shape).reshape(b, t, p)
        x = jnp.where(real[..., None], tokens.reshape(b, t, p, d), 0).astype(tokens.dtype)
        # 1. windows
        ok = static_steps(x, real, self.threshold)                                           # [B, T-1, P]
        start = jax.vmap(lambda o: segment_windows(saved_count(o), self.max_window))(ok)   # [B, T]
        frames = jnp.arange(t)
        same = start[:, :, None] == start[:, None, :]                                        # [B, T, T]
        end = jnp.max(jnp.where(same, frames[None, None, :], -1), axis=2)                    # [B, T]
        # position p is static in frame t's window when no break lies in [start, end)
        brk = jnp.concatenate([jnp.zeros((b, 1, p), jnp.int32), jnp.cumsum(~ok, axis=1).astype(jnp.int32)], 1)
        b_start = jnp.take_along_axis(brk, start[..., None], axis=1)
        b_end = jnp.take_along_axis(brk, end[..., None], axis=1)
        static = (b_start == b_end) & (end > start)[..., None]                             # [B, T, P]
        # 2. candidates: static means at the window's first frame, dynamic tokens everywhere
        win_len = (end - start + 1).astype(jnp.float32)
        csum = jnp.cumsum(x.astype(jnp.float32), axis=1)
        csum = jnp.concatenate([jnp.zeros_like(csum[:, :1]), csum], axis=1)                # [B, T+1, P, D]
        wsum = (jnp.take_along_axis(csum, (end + 1)[:, :, None, None], axis=1)
                - jnp.take_along_axis(csum, start[:, :, None, None], axis=1))
        mean = wsum / win_len[:, :, None, None]
        is_head = (start == frames[None, :])[..., None]
        stat_unit = static & is_head & real
        dyn_unit = ~static & real
        cand = jnp.where(stat_unit[..., None], mean, x.astype(jnp.float32))
        # 3. quotas: units [static of frame t, dynamic of frame t] in frame order
        sizes = jnp.stack([jnp.sum(stat_unit, -1), jnp.sum(dyn_unit, -1)], axis=-1).reshape(b, 2 * t)
        quota = split_quota(m, sizes.astype(jnp.float32)).reshape(b, t, 2)
        quota = jnp.minimum(quota, sizes.reshape(b, t, 2))
        q_stat, q_dyn = quota[..., 0], quota[..., 1]
        q_ctx = q_dyn - jnp.round(q_dyn * (1.0 - self.contextual_ratio)).astype(jnp.int32)
        q_dom = q_dyn - q_ctx
        score = token_scores("holitom", x.reshape(b, t, h, w, d), saliency).reshape(b, t, p)
        dominant = dyn_unit & (rank_within(score, jnp.zeros_like(dyn_unit, jnp.int32), dyn_unit) < q_dom[..., None])
        s_centre, s_value, s_near = cluster_merge(cand, stat_unit, q_stat, self.knn, self.merge_weight)
        if self.contextual_ratio > 0:
            d_unit = dyn_unit & ~dominant
            d_centre, d_value, d_near = cluster_merge(cand, d_unit, q_ctx, self.knn, self.merge_weight)
        else:
            d_unit = jnp.zeros_like(dyn_unit)
            d_centre, d_value, d_near = d_unit, cand, jnp.full(dyn_unit.shape, -1, jnp.int32)
        value = jnp.where(s_centre[..., None], s_value, jnp.where(d_centre[..., None], d_value, cand))
        selected = (dominant | s_centre | d_centre).reshape(b, n)
        idx, slot_ok = first_slots(selected, m)
        out = jnp.where(slot_ok[..., None], gather_rows(value.reshape(b, n, d), idx), 0).astype(tokens.dtype)
        slot_of = jnp.full((b, n + 1), -1, jnp.int32).at[jnp.arange(b)[:, None], jnp.where(slot_ok, idx, n)].set(
            jnp.broadcast_to(jnp.arange(m, dtype=jnp.int32), idx.shape))[:, :n].reshape(b, t, p)
        # assign: a static position of any window frame -> its head's cluster slot
        row = (jnp.arange(t)[None, :, None] * p)
        s_rep = jnp.take_along_axis(s_near, start[..., None], axis=1)                        # head's nearest centre
        s_slot = jnp.take_along_axis(slot_of.reshape(b, n), (start[..., None] * p + jnp.maximum(s_rep, 0)).reshape(b, n),
                                     axis=1).reshape(b, t, p)
        d_slot = jnp.take_along_axis(slot_of.reshape(b, n), (row + jnp.maximum(d_near, 0)).reshape(b, n),
                                     axis=1).reshape(b, t, p)
        assign = jnp.where(static, jnp.where(s_rep >= 0, s_slot, -1),
                           jnp.where(dominant, slot_of, jnp.where(d_near >= 0, d_slot, -1)))
        assign = jnp.where(real, assign, -1).reshape(b, n)
        out, slot_mask, slot = pad_to_budget(out, self.budget, mask=slot_ok,
                                             slot_aux={"source_index": jnp.where(slot_ok, idx, -1)})
        return Compressed(tokens=out, mask=slot_mask,
                          aux={"source_index": slot["source_index"], "window_start": start, "assign": assign})
