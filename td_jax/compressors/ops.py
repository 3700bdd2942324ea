"""Static-shape selection and clustering steps shared by the peer compressors.

The video-LLM token reducers (VisionZip, FastVID, HoliTom, DyCoke, VidToMe) choose a
data-dependent number of tokens per frame, segment or window.  Under ``jit`` every shape
is static, so they are written here as masks and ranks over fixed axes:

* :func:`rank_within` ranks tokens inside data-dependent groups (a frame's dynamic or
  static tokens, a segment's anchor frame) by a score, so "the top ``q_g`` of group g"
  is ``rank < q[group]`` with ``q`` a traced array;
* :func:`split_quota` splits a total count over groups in proportion to their sizes with
  exact integer totals (cumulative rounding);
* :func:`first_slots` packs the selected tokens into exactly M slots in their original
  order (position order, as FastVID/HoliTom hand tokens to the LLM);
* :func:`dpc_knn_score` is the density-peaks (DPC-kNN) centre score of FastVID and HoliTom.

All functions work on the last axes and broadcast / vmap over leading ones.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

NEG = -jnp.inf


def rank_within(score: jax.Array, group: jax.Array, valid: jax.Array) -> jax.Array:
    """Rank of each element among the valid elements of its group, best score first.

    score [..., N] float, group [..., N] int (any values), valid [..., N] bool ->
    rank [..., N] int32; ties go to the lower index; invalid elements get N.
    """
    n = score.shape[-1]
    s = jnp.where(valid & ~jnp.isnan(score), score, NEG)
    g = jnp.where(valid, group.astype(jnp.int32), jnp.iinfo(jnp.int32).max)
    by_score = jnp.argsort(-s, axis=-1, stable=True)
    order = jnp.take_along_axis(by_score, jnp.argsort(jnp.take_along_axis(g, by_score, -1), axis=-1, stable=True), -1)
    gs = jnp.take_along_axis(g, order, -1)
    pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), gs.shape)
    starts = jnp.concatenate([jnp.ones(gs.shape[:-1] + (1,), bool), gs[..., 1:] != gs[..., :-1]], axis=-1)
    start = jax.lax.cummax(jnp.where(starts, pos, 0), axis=gs.ndim - 1)
    rank_sorted = pos - start
    rank = jnp.zeros_like(pos)
    rank = jnp.put_along_axis(rank, order, rank_sorted, axis=-1, inplace=False)
    return jnp.where(valid, rank, n)


def split_quota(total: jax.Array | int, weights: jax.Array) -> jax.Array:
    """Split ``total`` (an int, or ints of shape [...]) over groups in proportion to
    ``weights [..., G]`` (>= 0).

    Cumulative rounding: group i gets ``floor(total*c_i/S) - floor(total*c_{i-1}/S)`` with
    ``c`` the cumulative weights and ``S`` their sum, so the parts are integers summing to
    exactly ``total`` (0 everywhere when S = 0) and, when ``total <= S`` and the weights are
    counts, no group gets more than its weight.  Returns int32 [..., G].
    """
    w = jnp.maximum(weights.astype(jnp.float32), 0.0)
    c = jnp.cumsum(w, axis=-1)
    s = c[..., -1:]
    tot = jnp.asarray(total, jnp.float32)
    tot = jnp.broadcast_to(tot[..., None] if tot.ndim else tot, s.shape)
    bounds = jnp.clip(jnp.floor(tot * c / jnp.maximum(s, 1e-30)), 0, tot)
    bounds = jnp.concatenate([bounds[..., :-1], tot], axis=-1)
    prev = jnp.concatenate([jnp.zeros_like(bounds[..., :1]), bounds[..., :-1]], axis=-1)
    return jnp.where(s > 0, bounds - prev, 0).astype(jnp.int32)


def first_slots(selected: jax.Array, m: int) -> tuple[jax.Array, jax.Array]:
    """The first ``m`` selected positions in ascending order.

    selected [..., N] bool -> (index [..., m] int32, valid [..., m] bool); slots past the
    number selected get index 0 and ``valid`` False.
    """
    n = selected.shape[-1]
    key = jnp.where(selected, n - jnp.arange(n, dtype=jnp.int32), -1)
    if m > n:
        key = jnp.concatenate([key, jnp.full(key.shape[:-1] + (m - n,), -1, jnp.int32)], axis=-1)
    top, _ = jax.lax.top_k(key, m)
    valid = top > 0
    return jnp.where(valid, n - top, 0).astype(jnp.int32), valid


def gather_rows(x: jax.Array, idx: jax.Array) -> jax.Array:
    """x [B, N, ...], idx [B, K] -> [B, K, ...]."""
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def unit_rows(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Rows scaled to unit L2 norm (zero rows stay zero); computed in float32 after
    dividing by each row's max-abs, so no scale of the input over- or underflows."""
    x = x.astype(jnp.float32)
    amax = jnp.max(jnp.abs(x), axis=-1, keepdims=True)
    y = x / jnp.where(amax > 0, amax, 1.0)
    return y / jnp.maximum(jnp.linalg.norm(y, axis=-1, keepdims=True), eps)


def pairwise_dist(a: jax.Array, b: jax.Array) -> jax.Array:
    """Euclidean distances: a [..., n, D], b [..., m, D] -> [..., n, m] (float32, >= 0)."""
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    sq = (jnp.sum(a * a, -1)[..., :, None] + jnp.sum(b * b, -1)[..., None, :]
          - 2.0 * jnp.einsum("...nd,...md->...nm", a, b, precision=jax.lax.Precision.HIGHEST))
    return jnp.sqrt(jnp.maximum(sq, 0.0))


def dpc_knn_score(x: jax.Array, valid: jax.Array, k: jax.Array | int, k_max: int) -> tuple[jax.Array, jax.Array]:
    """Density-peaks centre score (DPC-kNN), as FastVID and HoliTom use it.

    x [..., n, D] tokens, valid [..., n] bool, k (int, or int array of shape [...]) the
    neighbourhood size (<= ``k_max``, static).  With ``d`` the Euclidean distance divided
    by sqrt(D): density ``rho_i = exp(-mean of the k smallest d_ij^2)`` (j over valid
    tokens, i itself included at 0, as ``topk`` over a distance matrix does); ``delta_i`` =
    distance to the nearest token of higher density (or, for the densest, the largest
    distance in the group); score = ``rho * delta``.  Equal densities are ordered by index
    (the official code adds 1e-6 noise instead).  Returns (score [..., n] with -inf for
    invalid tokens, d [..., n, n]).
    """
    n, dim = x.shape[-2], x.shape[-1]
    d = pairwise_dist(x, x) / jnp.sqrt(jnp.float32(dim))
    pair = valid[..., :, None] & valid[..., None, :]
    kk = min(k_max, n)
    near = -jax.lax.top_k(-jnp.where(pair, d, jnp.inf), kk)[0]                  # [..., n, kk] ascending
    k_arr = jnp.minimum(jnp.asarray(k, jnp.int32), jnp.sum(valid, -1).astype(jnp.int32))[..., None]
    take = (jnp.arange(kk) < k_arr[..., None]) & jnp.isfinite(near)
    mean_sq = jnp.sum(jnp.where(take, near * near, 0.0), -1) / jnp.maximum(jnp.sum(take, -1), 1)
    rho = jnp.exp(-mean_sq)
    idx = jnp.arange(n)
    higher = (rho[..., None, :] > rho[..., :, None]) | (
        (rho[..., None, :] == rho[..., :, None]) & (idx[None, :] < idx[:, None]))
    higher = higher & pair
    d_max = jnp.max(jnp.where(pair, d, 0.0), axis=(-2, -1))[..., None]
    delta = jnp.min(jnp.where(higher, d, jnp.inf), axis=-1)
    delta = jnp.where(jnp.isfinite(delta), delta, d_max)
    return jnp.where(valid, rho * delta, NEG), d
