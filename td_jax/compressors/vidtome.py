"""``vidtome``: VidToMe (Li et al., CVPR 2024): video token merging with local and global
token memories - the Token Dynamics paper's strongest rival.

The algorithm, as the official code runs it (lixirui142/VidToMe, ``vidtome/patch.py``
``compute_merge`` and ``vidtome/merge.py``; defaults from ``configs/default.yaml``):

1. **Local (inter-frame) merging** - the video is cut into chunks of ``chunk_size`` (4)
   frames.  In each chunk one *target frame* is drawn at random; its tokens are the dst
   set, the other frames' tokens the src set.  Every src token finds its most similar dst
   token (cosine), and the ``local_ratio`` (0.9) share of src tokens with the most similar
   partners merge into them (bipartite soft matching, ``bipartite_soft_matching_randframe``).
   A chunk keeps ``[unmerged src, dst]``.
2. **Global merging** - a global token memory starts as the first chunk's tokens; each
   next chunk is merged with it by the same matching, one side src and the other dst
   (the chunk is src with probability ``1 - global_rand``, 0.5), ``global_ratio`` (0.8) of
   the src side merging away (``bipartite_soft_matching_2s``); the result is the memory.

For an LLM the memory after the last chunk is the video's token set.  These steps cannot
go below one frame's worth of tokens (a bipartite step never removes dst tokens), so to
reach a budget M the memory is then merged by ToMe rounds (:func:`td_jax.compressors.tome.merge_to`,
size-weighted) down to M; when the default ratios would already undershoot M, both ratios
are scaled down together (the largest scale that keeps >= M tokens) and the ToMe rounds
take the small rest.  ``plan("vidtome", ...)`` reports the ratios and rounds used.

Deviations, all static-shape or LLM-side choices: merged tokens are size-weighted means
(``merge_mode="mean"``, the default; VidToMe's editing code uses ``"replace"`` - dst kept
as is - and unweighted means, both available as ``merge_mode="replace"`` / the sizes being
1 in the local step); the global step merges ``floor(global_ratio * min(|chunk|, |memory|))``
tokens whichever side is src (so the count does not depend on the coin); and the random
target frame is drawn among the chunk's real frames.  VidToMe's editing-only parts
(unmerging back to full size inside the diffusion U-Net, cross-batch alignment for
plug-and-play) do not apply to an LLM input.

Randomness (targets, coins) comes from the ``"compress"`` RNG stream: the same key gives
the same result.

Padded videos (``mask``): masked tokens enter with size 0 and are merged away first in
every step (see :mod:`td_jax.compressors.tome`); a chunk of padding is always the src
side.  Slots holding only padding have size 0 and ``mask`` False.

aux:
  sizes         [B, M] float32: real input tokens each slot averages.
  assign        [B, T*H*W] int32: slot each input token was merged into (-1: masked).
  target_frame  [B, n_chunks] int32: the target frame drawn in each chunk.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from td_jax.compressors.base import RNG_STREAM, Compressed, CompressorModule, check_tokens, register, token_mask
from td_jax.compressors.common import check_options, gather_flat, pad_to_budget, scatter_add_flat
from td_jax.compressors.ops import unit_rows
from td_jax.compressors.tome import DEFAULT_MAX_ROUNDS, MATCH_BLOCK, best_match, merge_schedule, merge_to

MERGE_MODES = ("mean", "replace")


def merge_src_into_dst(src, src_size, dst, dst_size, r: int, mode: str = "mean", block: int | None = MATCH_BLOCK):
    """One bipartite step: the ``r`` src tokens with the most similar dst partners merge into
    them.  src [G, S, D], dst [G, Q, D] with sizes (0 = padding: merged first, never chosen
    as a partner while a real one exists).

    Returns (tokens [G, S - r + Q, D] = [unmerged src (most similar first), dst], sizes,
    pos_src [G, S], pos_dst [G, Q] int32: new index of every src / dst token).
    """
    dst_ok = dst_size > 0
    dst_pick = dst_ok | ~jnp.any(dst_ok, axis=1, keepdims=True)
    best, node_max = best_match(unit_rows(src), unit_rows(dst), block, dst_pick)
    return apply_merge(src, src_size, dst, dst_size, best, node_max, r, mode)


def apply_merge(src, src_size, dst, dst_size, best, node_max, r: int, mode: str = "mean"):
    """Merge the ``r`` src tokens with the highest ``node_max [G, S]`` (their cosine to
    ``best [G, S]``, their dst partner) into their partners; see :func:`merge_src_into_dst`."""
    g, s, _ = src.shape
    q = dst.shape[1]
    dst_ok = dst_size > 0
    node_max = jnp.where(src_size > 0, node_max, jnp.inf)
    order = jnp.argsort(-node_max, axis=1, stable=True).astype(jnp.int32)
    src_idx, unm_idx = order[:, :r], order[:, r:]
    dst_idx = jnp.take_along_axis(best, src_idx, axis=1)
    w_src = src_size[..., None].astype(jnp.float32)
    moved = gather_flat(src.astype(jnp.float32) * w_src, src_idx)
    moved_size = gather_flat(src_size, src_idx)
    new_size = scatter_add_flat(dst_size, dst_idx, moved_size)
    safe = jnp.where(new_size > 0, new_size, 1.0)[..., None]
    if mode == "mean":
        total = scatter_add_flat(dst.astype(jnp.float32) * dst_size[..., None], dst_idx, moved)
        dst_val = jnp.where(new_size[..., None] > 0, total / safe, 0.0)
    else:   # "replace": a real dst keeps its value; a padded one that received tokens takes their mean
        received = scatter_add_flat(jnp.zeros(dst.shape, jnp.float32), dst_idx, moved)
        dst_val = jnp.where(dst_ok[..., None], dst.astype(jnp.float32), received / safe)
    unm = gather_flat(src, unm_idx).astype(jnp.float32)
    out = jnp.concatenate([unm, dst_val], axis=1).astype(src.dtype)
    sizes = jnp.concatenate([gather_flat(src_size, unm_idx), new_size], axis=1)
    n_unm = s - r
    zeros = jnp.zeros((g, s), jnp.int32)
    rank = scatter_add_flat(zeros, unm_idx, jnp.broadcast_to(jnp.arange(n_unm, dtype=jnp.int32), (g, n_unm)))
    merged = scatter_add_flat(zeros, src_idx, jnp.ones((g, r), jnp.int32)) > 0
    pos_src = jnp.where(merged, n_unm + best, rank)
    pos_dst = jnp.broadcast_to(n_unm + jnp.arange(q, dtype=jnp.int32), (g, q))
    return out, sizes, pos_src, pos_dst


def global_step(chunk, chunk_size, mem, mem_size, r: int, mode: str, chunk_src: jax.Array):
    """Merge a chunk with the memory, the chunk the src side where ``chunk_src [B]``, the
    memory elsewhere (one similarity matrix serves both).  Returns (memory [B, n, D], sizes,
    new index of the memory's tokens [B, |mem|], of the chunk's [B, |chunk|])."""
    sim = jnp.einsum("bcd,bmd->bcm", unit_rows(chunk), unit_rows(mem))

    def best(s, dst_size):                  # s [B, S, Q] -> each src row's best dst
        ok = dst_size > 0
        ok = ok | ~jnp.any(ok, axis=1, keepdims=True)
        s = jnp.where(ok[:, None, :], s, -jnp.inf)
        top = jnp.max(s, axis=-1)
        iota = jnp.arange(s.shape[-1], dtype=jnp.int32)
        return jnp.min(jnp.where(s >= top[..., None], iota, s.shape[-1]), axis=-1).astype(jnp.int32), top

    ba, ta = best(sim, mem_size)
    bb, tb = best(sim.swapaxes(1, 2), chunk_size)
    a_out, a_size, a_src, a_dst = apply_merge(chunk, chunk_size, mem, mem_size, ba, ta, r, mode)
    b_out, b_size, b_src, b_dst = apply_merge(mem, mem_size, chunk, chunk_size, bb, tb, r, mode)
    sel = chunk_src[:, None]
    return (jnp.where(sel[..., None], a_out, b_out), jnp.where(sel, a_size, b_size),
            jnp.where(sel, a_dst, b_src), jnp.where(sel, a_src, b_dst))


def chunk_bounds(t: int, chunk: int) -> list[tuple[int, int]]:
    """[(first, last + 1)] frames of each chunk."""
    return [(s, min(s + chunk, t)) for s in range(0, t, chunk)]


def token_counts(t: int, p: int, chunk: int, local_ratio: float, global_ratio: float) -> tuple[int, list, list]:
    """Static token counts: (tokens after local + global merging, local merges per chunk,
    global merges per step) for T frames of P tokens."""
    sizes, local = [], []
    for a, e in chunk_bounds(t, chunk):
        n_src = (e - a - 1) * p
        r = min(n_src, int(n_src * local_ratio))
        local.append(r)
        sizes.append(n_src - r + p)
    mem, glob = sizes[0], []
    for n_c in sizes[1:]:
        r = int(global_ratio * min(n_c, mem))
        glob.append(r)
        mem = mem + n_c - r
    return mem, local, glob


def ratio_scale(t: int, p: int, chunk: int, local_ratio: float, global_ratio: float, budget: int) -> float:
    """1.0 when the ratios leave >= ``budget`` tokens, else the largest scale s in [0, 1) with
    ``count(s * local_ratio, s * global_ratio) >= budget`` (bisection)."""
    if token_counts(t, p, chunk, local_ratio, global_ratio)[0] >= budget:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if token_counts(t, p, chunk, mid * local_ratio, mid * global_ratio)[0] >= budget:
            lo = mid
        else:
            hi = mid
    return lo


@register("vidtome")
class VidToMe(CompressorModule):
    """VidToMe to the budget: ``[B, T, H, W, D] -> [B, M, D]`` (see the module docstring).

    chunk_size: frames per local chunk (one target frame each).
    local_ratio: share of a chunk's src tokens merged into its target frame.
    global_ratio: share of the src side merged in each global step.
    global_rand: probability that the memory (not the chunk) is the src side.
    merge_mode: ``"mean"`` (size-weighted average) or ``"replace"`` (dst kept as is).
    max_rounds: most ToMe rounds allowed for the final compaction to M.
    """

    chunk_size: int = 4
    local_ratio: float = 0.9
    global_ratio: float = 0.8
    global_rand: float = 0.5
    merge_mode: str = "mean"
    max_rounds: int = DEFAULT_MAX_ROUNDS

    def _validate(self):
        check_options("vidtome", self, at_least_one=("chunk_size",),
                      unit_interval=("local_ratio", "global_ratio", "global_rand"))
        if self.merge_mode not in MERGE_MODES:
            raise ValueError(f"vidtome: merge_mode must be one of {MERGE_MODES}, got {self.merge_mode!r}")

    def schedule(self, t: int, p: int) -> dict:
        """The static plan for T frames of P tokens: ratios used, merges per step, rounds."""
        m = min(self.budget, t * p)
        s = ratio_scale(t, p, self.chunk_size, self.local_ratio, self.global_ratio, m)
        lr, gr = s * self.local_ratio, s * self.global_ratio
        n_pre, local, glob = token_counts(t, p, self.chunk_size, lr, gr)
        rounds = merge_schedule(n_pre, m, None, self.max_rounds) if n_pre > m else []
        return {"local_ratio": lr, "global_ratio": gr, "local": local, "global": glob, "before_tome": n_pre,
                "tome_rounds": len(rounds)}

    def _local(self, x, size, frame_real, u, r: int):
        """Local merging of G chunks: x [G, F, P, D], size [G, F, P], frame_real [G, F], u [G]
        uniform draws picking the target among the real frames.  Returns (tokens [G, n, D],
        sizes [G, n], pos [G, F*P] = each input token's index in the chunk's output, target [G])."""
        g, f, p, d = x.shape
        n_real = jnp.sum(frame_real, axis=1)
        pick = jnp.minimum(jnp.floor(u * jnp.maximum(n_real, 1)).astype(jnp.int32), f - 1)
        real_order = jnp.argsort(~frame_real, axis=1, stable=True).astype(jnp.int32)
        target = jnp.where(n_real > 0, jnp.take_along_axis(real_order, pick[:, None], axis=1)[:, 0],
                           jnp.minimum(jnp.floor(u * f).astype(jnp.int32), f - 1))
        if f == 1:
            return x[:, 0], size[:, 0], jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (g, p)), target
        perm = jnp.argsort(jnp.arange(f)[None, :] == target[:, None], axis=1, stable=True).astype(jnp.int32)
        xc = jnp.take_along_axis(x, perm[:, :, None, None], axis=1)                        # src frames, then target
        sc = jnp.take_along_axis(size, perm[:, :, None], axis=1)
        out, osize, pos_src, pos_dst = merge_src_into_dst(
            xc[:, :-1].reshape(g, (f - 1) * p, d), sc[:, :-1].reshape(g, (f - 1) * p), xc[:, -1], sc[:, -1], r,
            self.merge_mode)
        pos_perm = jnp.concatenate([pos_src, pos_dst], axis=1).reshape(g, f, p)
        inv = jnp.argsort(perm, axis=1).astype(jnp.int32)
        pos = jnp.take_along_axis(pos_perm, inv[:, :, None], axis=1).reshape(g, f * p)
        return out, osize, pos, target

    SCALE_EQUIVARIANT = True      # Size-weighted means, matched by cosine similarity.

    def __call__(self, tokens: jax.Array, deterministic: bool = True, mask: jax.Array | None = None) -> Compressed:
        """tokens [B, T, H, W, D], mask [B, T, H, W] / [B, T] (optional)."""
        check_tokens(tokens)
        self._validate()
        b, t, h, w, d = tokens.shape
        p, n = h * w, t * h * w
        m = min(self.budget, n)
        plan = self.schedule(t, p)
        real = token_mask(mask, tokens.shape).reshape(b, t, p)
        x = jnp.where(real[..., None], tokens.reshape(b, t, p, d), 0).astype(tokens.dtype)
        size = real.astype(jnp.float32)
        bounds = chunk_bounds(t, self.chunk_size)
        k_target, k_coin = jax.random.split(self.make_rng(RNG_STREAM))
        u_target = jax.random.uniform(k_target, (b, len(bounds)))
        u_coin = jax.random.uniform(k_coin, (b, len(bounds)))
        frame_real = jnp.any(real, axis=2)                                                  # [B, T]
        # 1. local merging: the full chunks batched together, then a shorter last chunk
        chunks, targets = [], []
        groups = [(a, e) for a, e in bounds if e - a == self.chunk_size]
        if groups:
            nf = len(groups)
            f = self.chunk_size
            outs = self._local(x[:, :nf * f].reshape(b * nf, f, p, d), size[:, :nf * f].reshape(b * nf, f, p),
                               frame_real[:, :nf * f].reshape(b * nf, f), u_target[:, :nf].reshape(b * nf),
                               plan["local"][0])
            out, osize, pos, target = (v.reshape((b, nf) + v.shape[1:]) for v in outs)
            for c in range(nf):
                chunks.append((out[:, c], osize[:, c], pos[:, c]))
                targets.append(c * f + target[:, c])
        if len(groups) < len(bounds):
            a, e = bounds[-1]
            out, osize, pos, target = self._local(x[:, a:e], size[:, a:e], frame_real[:, a:e], u_target[:, -1],
                                                  plan["local"][-1])
            chunks.append((out, osize, pos))
            targets.append(a + target)
        # 2. global merging into the memory
        mem, mem_size, assign = chunks[0]
        for c in range(1, len(chunks)):
            xc, sc, pos = chunks[c]
            r = plan["global"][c - 1]
            chunk_src = u_coin[:, c] >= self.global_rand
            chunk_src = jnp.where(~jnp.any(sc > 0, axis=1), True, jnp.where(~jnp.any(mem_size > 0, axis=1),
                                                                         False, chunk_src))
            mem, mem_size, pos_mem, pos_chunk = global_step(xc, sc, mem, mem_size, r, self.merge_mode, chunk_src)
            assign = jnp.concatenate([jnp.take_along_axis(pos_mem, assign, axis=1),
                                      jnp.take_along_axis(pos_chunk, pos, axis=1)], axis=1)
        # 3. ToMe rounds down to the budget
        if mem.shape[1] > m:
            mem, mem_size, comp = merge_to(mem, m, size=mem_size, max_rounds=self.max_rounds,
                                           mask=None if mask is None else mem_size > 0)
            assign = jnp.take_along_axis(jnp.maximum(comp, 0), assign, axis=1)
        assign = jnp.where(real.reshape(b, n), assign, -1)
        out, slot_mask, slot = pad_to_budget(mem, self.budget, mask=mem_size > 0, slot_aux={"sizes": mem_size})
        return Compressed(tokens=out, mask=slot_mask,
                          aux={"sizes": slot["sizes"], "assign": assign, "target_frame": jnp.stack(targets, 1)})

