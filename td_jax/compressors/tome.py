"""``tome``: Token Merging (Bolya et al., ICLR 2023) by bipartite soft matching.

One round on a sequence of N tokens (:func:`merge_round`), as in the paper:

1. split the tokens alternately into A = positions 0, 2, 4, ... and B = 1, 3, 5, ...;
2. cosine similarity of every A token to every B token, on a *metric* (ToMe uses the
   attention keys; a compressor sees no attention, so the metric is the tokens themselves
   unless :func:`bipartite_soft_matching` is given one);
3. each A token keeps its most similar B token (its edge);
4. the ``r`` A tokens with the most similar edges merge into their B partners;
5. merging is a size-weighted average (``sum(size * x) / sum(size)``, one scatter-add),
   and the sizes add up, ready for ToMe's proportional attention
   (``softmax(q k^T / sqrt(d) + log(size))``, see :func:`proportional_attention_bias`).

The merged sequence is ``[unmerged A tokens (most similar first), then all B tokens]``,
ToMe's own order.  A round removes at most ``floor(N / 2)`` tokens, so reaching a budget
takes several rounds (:func:`merge_schedule`); the rounds unroll statically under ``jit``.
Nothing loops over pairs in Python.

Variants (``mode``): ``"video"`` merges all T*H*W tokens of a video together (budget M
exactly); ``"frame"`` merges within each frame to ``M // T`` tokens per frame (T*(M//T)
real tokens, the rest padded).

Padded inputs (``mask``): masked tokens enter with size 0, so they add nothing to any
average.  Before each round the size-0 slots are moved onto the A side and their edges
ranked first, and no real A token picks a size-0 B partner while a real one exists: every
round spends its merges on padding first, so all padding is gone after ``P`` merges (P =
masked tokens) and the remaining merges are ordinary ToMe on the real tokens.  A video
with at least M real tokens therefore fills all M slots with real tokens; with fewer, the
slots left holding only padding have size 0 and ``mask`` False.  Without a mask the
rounds are exactly ToMe's.

aux:
  sizes  [B, M] float32: how many (real) input tokens each slot averages (0 for pads).
  assign [B, T*H*W] int32: the slot each input token was merged into, so
         ``tokens[assign]`` is ToMe's reconstruction of the video (-1 for masked tokens).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from td_jax.compressors.base import Compressed, CompressorModule, check_tokens, register, token_mask
from td_jax.compressors.common import gather_flat, pad_to_budget, scatter_add_flat

DEFAULT_MAX_ROUNDS = 64
_EPS = 1e-12


class Matching(NamedTuple):
    """One round's bipartite matching over B sequences of N tokens (A = even, B = odd).

    src_idx [B, r] int32: A-indices merged away (into B).
    dst_idx [B, r] int32: B-index each merged A token joins.
    unm_idx [B, |A| - r] int32: A-indices kept, most similar edge first.
    best    [B, |A|] int32: every A token's best B match.
    """

    src_idx: jax.Array
    dst_idx: jax.Array
    unm_idx: jax.Array
    best: jax.Array


def merge_schedule(n: int, target: int, r: int | None = None,
                   max_rounds: int = DEFAULT_MAX_ROUNDS) -> list[int]:
    """Tokens merged per round to go from ``n`` to ``target`` tokens.

    Each round merges ``min(r, floor(n_i / 2), n_i - target)`` (all it can when ``r`` is
    None).  Raises ValueError if more than ``max_rounds`` rounds would be needed.
    """
    if not 1 <= target:
        raise ValueError(f"tome: target token count must be >= 1, got {target}")
    if r is not None and r < 1:
        raise ValueError(f"tome: r (tokens merged per round) must be >= 1, got {r}")
    sched = []
    while n > target:
        ri = min(n // 2, n - target) if r is None else min(r, n // 2, n - target)
        sched.append(ri)
        n -= ri
        if len(sched) > max_rounds:
            raise ValueError(f"tome: reaching {target} tokens needs more than max_rounds={max_rounds} "
                             f"rounds with r={r}; raise r or max_rounds")
    return sched


MATCH_BLOCK = 128   # A rows per block of the similarity matrix (see best_match)


def _best_in_block(a: jax.Array, b: jax.Array, b_valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """a [B, n, D], b [B, M, D] (unit rows) -> (index of the best b per a row [B, n] int32,
    its cosine [B, n]); ties go to the lowest index, as ``argmax``.  ``b_valid [B, M]``
    (optional) excludes B rows (their score is -inf)."""
    scores = jnp.einsum("bid,bjd->bij", a, b)
    if b_valid is not None:
        scores = jnp.where(b_valid[:, None, :], scores, -jnp.inf)
    top = jnp.max(scores, axis=-1)
    # max + "first index reaching it" is ~2x faster on CPU than a variadic argmax reduce
    iota = jnp.arange(scores.shape[-1], dtype=jnp.int32)
    best = jnp.min(jnp.where(scores >= top[..., None], iota, scores.shape[-1]), axis=-1)
    return best.astype(jnp.int32), top


def best_match(a: jax.Array, b: jax.Array, block: int | None = MATCH_BLOCK,
               b_valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Each A token's most similar B token: ``a [B, NA, D]``, ``b [B, NB, D]`` unit rows ->
    (best [B, NA] int32, cosine [B, NA]).

    The [B, NA, NB] similarity is never materialised whole: A is processed ``block`` rows at
    a time (``lax.map``; ``None`` = one dense block), which keeps each block's scores in
    cache (``experiments/benchmarks/tome_bench.py`` times both).  ``b_valid [B, NB]``
    (optional) excludes B rows.
    """
    bsz, na, d = a.shape
    if block is None or na <= block:
        return _best_in_block(a, b, b_valid)
    nblk = -(-na // block)
    pad = nblk * block - na
    ap = jnp.pad(a, ((0, 0), (0, pad), (0, 0))) if pad else a
    blocks = ap.reshape(bsz, nblk, block, d).transpose(1, 0, 2, 3)            # [nblk, B, block, D]
    best, top = jax.lax.map(lambda x: _best_in_block(x, b, b_valid), blocks)  # [nblk, B, block]
    best = best.transpose(1, 0, 2).reshape(bsz, nblk * block)[:, :na]
    top = top.transpose(1, 0, 2).reshape(bsz, nblk * block)[:, :na]
    return best, top


def bipartite_soft_matching(metric: jax.Array, r: int, block: int | None = MATCH_BLOCK,
                            valid: jax.Array | None = None) -> Matching:
    """ToMe's matching on ``metric [B, N, Dk]``: merge the ``r`` most similar A->B edges
    (``block``: see :func:`best_match`).  ``valid [B, N]`` (optional, False = padding):
    padded A tokens rank first and real A tokens only pick real B partners (if any)."""
    n = metric.shape[1]
    if not 0 <= r <= n // 2:
        raise ValueError(f"tome: r={r} must be in [0, N//2] for N={n} tokens")
    m = metric / jnp.maximum(jnp.linalg.norm(metric, axis=-1, keepdims=True), _EPS)
    if valid is None:
        best, node_max = best_match(m[:, 0::2], m[:, 1::2], block)   # cosine of every A token's best B edge
    else:
        b_valid = valid[:, 1::2]
        b_valid = b_valid | ~jnp.any(b_valid, axis=1, keepdims=True)  # no real B at all: any partner
        best, node_max = best_match(m[:, 0::2], m[:, 1::2], block, b_valid)
        node_max = jnp.where(valid[:, 0::2], node_max, jnp.inf)
    order = jnp.argsort(-node_max, axis=-1, stable=True).astype(jnp.int32)
    src_idx = order[:, :r]
    return Matching(src_idx=src_idx, dst_idx=jnp.take_along_axis(best, src_idx, axis=1),
                    unm_idx=order[:, r:], best=best)


def merge_sum(v: jax.Array, match: Matching) -> jax.Array:
    """Apply a matching to per-token values ``v [B, N, ...]`` by summing merged rows.

    Returns ``[B, N - r, ...]`` in ToMe's order ``[unmerged A, B (+ merged A)]``.
    """
    a, b = v[:, 0::2], v[:, 1::2]
    dst = scatter_add_flat(b, match.dst_idx, gather_flat(a, match.src_idx))
    return jnp.concatenate([gather_flat(a, match.unm_idx), dst], axis=1)


def new_positions(n: int, match: Matching) -> jax.Array:
    """[B, N] int32: index in the merged sequence of every token before the round."""
    bsz, na = match.best.shape
    r, keep = match.src_idx.shape[1], match.unm_idx.shape[1]
    # rank of every A token in the matching's order [merged (r), kept (keep)]: one scatter
    rank = inverse_permutation(jnp.concatenate([match.src_idx, match.unm_idx], axis=1))
    pos_a = jnp.where(rank < r, keep + match.best, rank - r)
    pos_b = jnp.broadcast_to(keep + jnp.arange(na, dtype=jnp.int32), (bsz, na))   # B has na or na - 1 tokens
    return jnp.stack([pos_a, pos_b], axis=-1).reshape(bsz, 2 * na)[:, :n]


def padding_to_a(valid: jax.Array) -> jax.Array:
    """New position of every slot so that padded slots (``valid [B, N]`` False) take the A
    positions 0, 2, 4, ... first (then B positions 1, 3, ...), real slots the rest in their
    order.  All-valid rows keep the identity.  Returns [B, N] int32 (closed form, no sort)."""
    n = valid.shape[1]
    na = (n + 1) // 2
    n_pad = jnp.sum(~valid, axis=1, keepdims=True).astype(jnp.int32)
    pad_rank = jnp.cumsum(~valid, axis=1, dtype=jnp.int32) - 1
    real_rank = jnp.cumsum(valid, axis=1, dtype=jnp.int32) - 1
    # padding fills A positions 0, 2, ... (na of them), then B positions 1, 3, ...
    pad_pos = jnp.where(pad_rank < na, 2 * pad_rank, 2 * (pad_rank - na) + 1)
    # the k-th free position, ascending: with n_pad <= na the odd positions below 2 n_pad,
    # then every position from 2 n_pad on; with more padding, every other odd position left
    k = real_rank
    few = jnp.where(k < n_pad, 2 * k + 1, k + n_pad)
    many = 2 * (n_pad - na) + 1 + 2 * k
    real_pos = jnp.where(n_pad <= na, few, many)
    return jnp.where(valid, real_pos, pad_pos).astype(jnp.int32)


def inverse_permutation(perm: jax.Array) -> jax.Array:
    """``perm [B, N]`` (a permutation per row) -> its inverse [B, N] int32 (one scatter)."""
    bsz, n = perm.shape
    return scatter_add_flat(jnp.zeros((bsz, n), jnp.int32), perm,
                            jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (bsz, n)))


def merge_round(x: jax.Array, size: jax.Array, r: int, metric: jax.Array | None = None,
                block: int | None = MATCH_BLOCK, masked: bool = False):
    """One ToMe round on ``x [B, N, D]`` with sizes ``size [B, N]``.

    Returns (x [B, N-r, D] size-weighted means, size [B, N-r], metric [B, N-r, Dk] or None,
    new_pos [B, N] int32).  A given metric is merged by the same size-weighted average.
    ``masked``: size-0 slots are padding (see the module docstring): they are moved to the
    A side and merged first; slots left with size 0 hold zeros.
    """
    n = x.shape[1]
    perm_pos = None
    valid = None
    if masked:
        valid = size > 0
        perm_pos = padding_to_a(valid)
        src = inverse_permutation(perm_pos)
        x, size, valid = gather_flat(x, src), gather_flat(size, src), gather_flat(valid, src)
        metric = None if metric is None else gather_flat(metric, src)
    match = bipartite_soft_matching(x if metric is None else metric, r, block, valid)
    # tokens, metric and sizes merged together: one gather + one scatter-add per round, in float32
    w = size[..., None].astype(jnp.float32)
    cols = [x.astype(jnp.float32) * w] + ([] if metric is None else [metric.astype(jnp.float32) * w])
    merged = merge_sum(jnp.concatenate(cols + [w], axis=-1), match)
    new_size = merged[..., -1]
    denom = jnp.where(new_size > 0, new_size, 1.0)[..., None]
    d = x.shape[-1]
    nx = (merged[..., :d] / denom).astype(x.dtype)
    nm = None if metric is None else (merged[..., d:-1] / denom).astype(metric.dtype)
    pos = new_positions(n, match)
    if perm_pos is not None:
        pos = jnp.take_along_axis(pos, perm_pos, axis=1)
    return nx, new_size, nm, pos


def merge_to(x: jax.Array, target: int, *, r: int | None = None, metric: jax.Array | None = None,
             max_rounds: int = DEFAULT_MAX_ROUNDS, block: int | None = MATCH_BLOCK,
             mask: jax.Array | None = None, size: jax.Array | None = None):
    """Repeated ToMe rounds on ``x [B, N, D]`` until ``target`` tokens remain per sequence.

    ``metric [B, N, Dk]`` (optional) is what similarity is measured on (ToMe: attention
    keys); by default the tokens themselves.  ``mask [B, N]`` (optional, True = real):
    padding is merged away first (module docstring).  ``size [B, N]`` (optional): the
    tokens' starting sizes when they already average several inputs (with ``mask``, size 0
    = padding; without it every size must be positive).
    Returns (tokens [B, target, D], sizes [B, target] float32, assign [B, N] int32; masked
    tokens' assign is -1).
    """
    bsz, n = x.shape[:2]
    if target > n:
        raise ValueError(f"tome: cannot merge {n} tokens up to {target}")
    if metric is not None and metric.shape[:2] != (bsz, n):
        raise ValueError(f"tome: metric shape {tuple(metric.shape)} does not match tokens {tuple(x.shape)}")
    masked = mask is not None
    size = jnp.ones((bsz, n), jnp.float32) if size is None else size.astype(jnp.float32)
    if masked:
        size = jnp.where(mask, size, 0.0)
        mask = size > 0
        x = jnp.where(mask[..., None], x, 0).astype(x.dtype)
        metric = None if metric is None else jnp.where(mask[..., None], metric, 0).astype(metric.dtype)
    assign = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (bsz, n))
    for ri in merge_schedule(n, target, r, max_rounds):
        x, size, metric, pos = merge_round(x, size, ri, metric, block, masked=masked)
        assign = jnp.take_along_axis(pos, assign, axis=1)
    if mask is not None:
        assign = jnp.where(mask, assign, -1)
    return x, size, assign


def proportional_attention_bias(sizes: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """[B, M] additive key bias ``log(size)`` for ToMe's proportional attention.

    Padded slots (``mask`` False or size 0) get a large negative bias.
    """
    valid = sizes > 0 if mask is None else jnp.logical_and(mask, sizes > 0)
    return jnp.where(valid, jnp.log(jnp.where(valid, sizes, 1.0)), jnp.finfo(jnp.float32).min)


@register("tome")
class ToMe(CompressorModule):
    """Token Merging to the budget: ``[B, T, H, W, D] -> [B, M, D]``.

    mode: ``"video"`` (all T*H*W tokens together, M real tokens) or ``"frame"`` (each
      frame to ``M // T`` tokens).
    r: tokens merged per round (None: as many as a round allows, ``floor(N/2)``).
    max_rounds: refuse schedules longer than this (each round unrolls under jit).
    """

    mode: str = "video"
    r: int | None = None
    max_rounds: int = DEFAULT_MAX_ROUNDS

    SCALE_EQUIVARIANT = True      # Size-weighted means, matched by cosine similarity.

    def __call__(self, tokens: jax.Array, deterministic: bool = True, mask: jax.Array | None = None) -> Compressed:
        check_tokens(tokens)
        b, t, h, w, d = tokens.shape
        n = t * h * w
        real = None if mask is None else token_mask(mask, tokens.shape)
        if self.mode == "video":
            target = min(self.budget, n)
            out, sizes, assign = merge_to(tokens.reshape(b, n, d), target, r=self.r, max_rounds=self.max_rounds,
                                          mask=None if real is None else real.reshape(b, n))
        elif self.mode == "frame":
            per = min(self.budget // t, h * w)
            if per < 1:
                raise ValueError(f"tome(mode='frame'): budget={self.budget} < T={t} frames of tokens "
                                 f"{tuple(tokens.shape)}; use mode='video'")
            out, sizes, assign = merge_to(tokens.reshape(b * t, h * w, d), per, r=self.r,
                                          max_rounds=self.max_rounds,
                                          mask=None if real is None else real.reshape(b * t, h * w))
            offs = (jnp.arange(t, dtype=jnp.int32) * per)[None, :, None]
            assign = assign.reshape(b, t, h * w)
            assign = jnp.where(assign >= 0, assign + offs, -1).reshape(b, n)
            out, sizes = out.reshape(b, t * per, d), sizes.reshape(b, t * per)
        else:
            raise ValueError(f"tome: mode must be 'video' or 'frame', got {self.mode!r}")
        out, slot_mask, slot = pad_to_budget(out, self.budget, mask=sizes > 0, slot_aux={"sizes": sizes})
        return Compressed(tokens=out, mask=slot_mask, aux={"sizes": slot["sizes"], "assign": assign})
