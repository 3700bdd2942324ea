"""Spherical k-means in pure JAX (cosine distance on L2-normalised rows).

The recipe, chosen for speed *and* cluster quality (see experiments/benchmarks/compress_bench.py):

1. draw a sample of ``sample_size`` tokens (all of them when N is small);
2. greedy k-means++ seeding on the sample (``n_local_trials`` candidates per centre, the
   best one by potential, as scikit-learn does);
3. Lloyd steps on the sample until the centres move less than ``tol``;
4. ``refine_iters`` Lloyd steps on *all* tokens (one GEMM to assign, one to update);
5. centres and inertia come from the last assignment of all tokens, so they are consistent.

Distances are cosine distances ``1 - cos(x, c)``. Rows are never copied normalised: the
assignment ``argmax_j x·c_j`` does not depend on ``|x|``, and the update weights each row by
``1/|x|`` inside the GEMM. All-zero rows have cosine 0 to every centre (distance 1).

Empty clusters are re-seeded from the sample points farthest from their centres while
iterating; a cluster still empty at the end is reported by ``counts == 0`` (its centroid is
a zero vector and ``valid`` is False), never silently used.

Everything is a pure function of arrays and a PRNG key: ``jax.jit``, ``jax.vmap`` (a batch
of videos) and inputs sharded over a mesh work unchanged.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_EPS = 1e-12


class KMeansResult(NamedTuple):
    """Result of :func:`kmeans`.

    centroids:   [K, D] unit-norm cluster centres (zero rows for empty / disabled slots).
    assignments: [N] int32 cluster id of each row; -1 for masked rows.
    counts:      [K] int32 rows per cluster.
    inertia:     [] float32, sum over unmasked rows of ``1 - cos(x, centroid)``.
    n_iter:      [] int32 Lloyd steps run on the sample (of the initialisation kept).
    raw_means:   [K, D] f32 mean of the *raw* rows of each cluster (zero when empty).
    unit_means:  [K, D] f32 mean of the L2-normalised rows of each cluster (zero when empty).
    """

    centroids: jax.Array
    assignments: jax.Array
    counts: jax.Array
    inertia: jax.Array
    n_iter: jax.Array
    raw_means: jax.Array
    unit_means: jax.Array


# ----------------------------------------------------------------------------- checks


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def assert_finite(x, name: str = "tokens") -> None:
    """Raise ValueError if a concrete array holds NaN or Inf (no-op on tracers).

    Inside ``jit`` the check cannot raise; there, non-finite rows are treated as masked
    (excluded from clustering, assigned -1) — see :func:`kmeans`.
    """
    if not _is_concrete(x):
        return
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        return
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = np.argwhere(bad.reshape(-1, arr.shape[-1]).any(-1)).ravel() if arr.ndim else np.array([0])
        raise ValueError(
            f"{name} of shape {tuple(arr.shape)} contains {int(bad.sum())} NaN/Inf values "
            f"(in {rows.size} rows, first flat row {int(rows[0])}); clean or mask them first")


def _check_k(k, n: int, what: str = "k") -> int:
    if not isinstance(k, (int, np.integer)):
        raise TypeError(f"{what} must be a Python int (it sets static shapes), got {type(k).__name__}")
    k = int(k)
    if k < 1:
        raise ValueError(f"{what} must be >= 1, got {k}")
    if k > n:
        raise ValueError(f"{what}={k} is larger than the number of tokens N={n}")
    return k


# ----------------------------------------------------------------------------- pieces


def _finite_rows(x: jax.Array) -> jax.Array:
    """[N, D] -> [N] bool, False where a row holds NaN/Inf.

    Tested through the row sum (a NaN or Inf element makes the sum non-finite), a fused
    reduction that never materialises an [N, D] mask.
    """
    return jnp.isfinite(jnp.sum(x, axis=-1, dtype=jnp.float32))


def _row_inv_norm(x: jax.Array) -> jax.Array:
    """[N, D] -> [N] 1/|x| (0 for all-zero rows)."""
    sq = jnp.einsum("nd,nd->n", x, x, preferred_element_type=jnp.float32)
    return jnp.where(sq > _EPS, jax.lax.rsqrt(jnp.maximum(sq, _EPS)), 0.0)


def _normalize(v: jax.Array) -> jax.Array:
    """Rows to unit norm; zero rows stay zero."""
    sq = jnp.sum(v * v, axis=-1, keepdims=True)
    return jnp.where(sq > _EPS, v * jax.lax.rsqrt(jnp.maximum(sq, _EPS)), 0.0)


def _assign(x: jax.Array, c: jax.Array, cmask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Nearest centre by cosine. x [N, D] (any norm), c [K, D] unit, cmask [K].

    Returns labels [N] int32 and the winning dot product x·c [N] (not divided by |x|).
    """
    scores = jnp.einsum("nd,kd->nk", x, c.astype(x.dtype), preferred_element_type=jnp.float32)
    scores = jnp.where(cmask[None, :], scores, -jnp.inf)
    labels = jnp.argmax(scores, axis=-1).astype(jnp.int32)
    return labels, jnp.max(scores, axis=-1)


def _cluster_sums(x: jax.Array, weight: jax.Array, labels: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Per-cluster weighted sums as one GEMM: returns sums [K, D] (f32) and counts [K].

    weight [N] multiplies each row (1/|x| for unit sums; 0 drops a row).
    """
    onehot = labels[:, None] == jnp.arange(k, dtype=jnp.int32)[None, :]
    counts = jnp.sum(onehot & (weight[:, None] != 0), axis=0, dtype=jnp.int32)
    w = jnp.where(onehot, weight[:, None], 0.0).astype(x.dtype)
    sums = jnp.einsum("nk,nd->kd", w, x, preferred_element_type=jnp.float32)
    return sums, counts


def _reseed_empty(c: jax.Array, counts: jax.Array, cmask: jax.Array, xs: jax.Array,
                  dist: jax.Array) -> jax.Array:
    """Move empty enabled centres onto the sample points farthest from their centres.

    c [K, D], counts [K], cmask [K], xs [S, D] unit rows, dist [S] (-inf for masked rows).
    """
    k = c.shape[0]
    empty = (counts == 0) & cmask
    rank = jnp.cumsum(empty.astype(jnp.int32)) - 1
    n_far = min(k, xs.shape[0])
    far_d, far_idx = jax.lax.top_k(dist, n_far)
    slot = jnp.clip(rank, 0, n_far - 1)
    usable = empty & (rank < n_far) & (far_d[slot] > 0)
    return jnp.where(usable[:, None], xs[far_idx[slot]], c)


def _greedy_kmeanspp(key: jax.Array, xs: jax.Array, w: jax.Array, k: int, n_trials: int) -> jax.Array:
    """Greedy k-means++ seeding. xs [S, D] unit rows, w [S] 0/1 weights -> centres [k, D].

    Each new centre is the best of ``n_trials`` candidates drawn with probability
    proportional to the current distance (1 - cos) to the nearest centre, judged by the
    total distance (potential) it leaves.
    """
    has_any = jnp.sum(w) > 0
    uniform_logits = jnp.where(has_any, jnp.log(jnp.maximum(w, 0.0)), 0.0)

    def draw(key, dist, shape):
        p = dist * w
        total = jnp.sum(p)
        logits = jnp.where(total > 0, jnp.log(jnp.maximum(p, 0.0)), uniform_logits)
        return jax.random.categorical(key, logits, shape=shape)

    key0, key_loop = jax.random.split(key)
    first = jax.random.categorical(key0, uniform_logits)
    c0 = xs[first]
    closest = jnp.maximum(1.0 - xs @ c0, 0.0)
    centres = jnp.zeros((k, xs.shape[1]), xs.dtype).at[0].set(c0)

    def body(i, carry):
        centres, closest = carry
        cand = draw(jax.random.fold_in(key_loop, i), closest, (n_trials,))
        d_cand = jnp.maximum(1.0 - xs @ xs[cand].T, 0.0)                  # [S, L]
        new_closest = jnp.minimum(closest[:, None], d_cand)
        pot = jnp.sum(new_closest * w[:, None], axis=0)                      # [L]
        best = jnp.argmin(pot)
        return centres.at[i].set(xs[cand[best]]), new_closest[:, best]

    centres, _ = jax.lax.fori_loop(1, k, body, (centres, closest))
    return centres


def _lloyd_sample(xs: jax.Array, w: jax.Array, c: jax.Array, cmask: jax.Array, iters: int,
                  tol: float) -> tuple[jax.Array, jax.Array]:
    """Lloyd steps on unit sample rows xs [S, D] with weights w [S]; c [K, D] unit.

    Stops when the summed squared centre shift is <= tol or after ``iters`` steps.
    """
    k = c.shape[0]

    def cond(state):
        _, shift, i = state
        return (i < iters) & (shift > tol)

    def body(state):
        c, _, i = state
        labels, best = _assign(xs, c, cmask)
        sums, counts = _cluster_sums(xs, w, labels, k)
        c_new = jnp.where((counts > 0)[:, None], _normalize(sums), c)
        dist = jnp.where(w > 0, 1.0 - best, -jnp.inf)
        c_new = _reseed_empty(c_new, counts, cmask, xs, dist)
        c_new = jnp.where(cmask[:, None], c_new, 0.0)
        shift = jnp.sum((c_new - c) ** 2)
        return c_new, shift, i + 1

    c, _, n = jax.lax.while_loop(cond, body, (c, jnp.asarray(jnp.inf, jnp.float32), jnp.asarray(0, jnp.int32)))
    return c, n


def _full_pass(x: jax.Array, valid: jax.Array, c: jax.Array, cmask: jax.Array, block_rows: int | None):
    """Assign all rows and sum them per cluster, in row blocks so no [N, D] temporary exists.

    x [N, D] raw rows (non-finite rows are zeroed block by block), valid [N] bool.
    Returns labels [N] int32, unit sums [K, D] f32, raw sums [K, D] f32, counts [K] int32.
    """
    k = c.shape[0]

    def block(xb, vb):
        vb = vb & _finite_rows(xb)
        xb = jnp.where(vb[:, None], xb, 0.0)
        labels, _ = _assign(xb, c, cmask)
        inv = jnp.where(vb, _row_inv_norm(xb), 0.0)
        onehot = (labels[:, None] == jnp.arange(k, dtype=jnp.int32)[None, :]) & vb[:, None]
        w = jnp.concatenate([jnp.where(onehot, inv[:, None], 0.0), onehot.astype(jnp.float32)], axis=1)
        sums = jnp.einsum("nk,nd->kd", w.astype(xb.dtype), xb, preferred_element_type=jnp.float32)
        return labels, sums[:k], sums[k:], jnp.sum(onehot, axis=0, dtype=jnp.int32)

    n, d = x.shape
    if block_rows is None or n <= block_rows:
        return block(x, valid)
    nb, rem = divmod(n, block_rows)

    def body(carry, i):
        start = i * block_rows
        xb = jax.lax.dynamic_slice_in_dim(x, start, block_rows)
        vb = jax.lax.dynamic_slice_in_dim(valid, start, block_rows)
        lab, us, rs, cnt = block(xb, vb)
        return (carry[0] + us, carry[1] + rs, carry[2] + cnt), lab

    zero = (jnp.zeros((k, d), jnp.float32), jnp.zeros((k, d), jnp.float32), jnp.zeros((k,), jnp.int32))
    (us, rs, cnt), labels = jax.lax.scan(body, zero, jnp.arange(nb))
    labels = labels.reshape(-1)
    if rem:
        lab, us2, rs2, cnt2 = block(x[nb * block_rows:], valid[nb * block_rows:])
        labels = jnp.concatenate([labels, lab])
        us, rs, cnt = us + us2, rs + rs2, cnt + cnt2
    return labels, us, rs, cnt


def _sample_indices(key: jax.Array, valid: jax.Array, size: int) -> jax.Array:
    """``size`` row indices drawn with replacement, uniformly among valid rows."""
    n = valid.shape[0]
    if size >= n:
        return jnp.arange(n)
    w = valid.astype(jnp.float32)
    total = jnp.sum(w)
    p = jnp.where(total > 0, w / jnp.maximum(total, 1.0), 1.0 / n)
    cdf = jnp.cumsum(p)
    u = jax.random.uniform(key, (size,), maxval=cdf[-1])
    return jnp.clip(jnp.searchsorted(cdf, u, side="right"), 0, n - 1)


def default_sample_size(k: int) -> int:
    """Sample used for seeding and the first Lloyd steps: 128 rows per centre, >= 4096."""
    return max(4096, 128 * k)


# ----------------------------------------------------------------------------- public


def kmeans_core(x: jax.Array, cmask: jax.Array, *, key: jax.Array, mask: jax.Array | None = None,
                iters: int = 50, tol: float = 1e-4, refine_iters: int = 1,
                sample_size: int | None = None, n_local_trials: int | None = None,
                n_init: int = 1, block_rows: int | None = 8192,
                init: jax.Array | None = None) -> KMeansResult:
    """:func:`kmeans` with a centre mask ``cmask [K]`` (disabled slots take no rows).

    No eager input checks; used by :func:`kmeans` and the adaptive path. ``init [K, D]``
    skips seeding and sample iterations (used to refine given centres on all rows).
    """
    n, _ = x.shape
    k = cmask.shape[0]
    finite = _finite_rows(x)
    valid = finite if mask is None else (finite & mask.astype(bool))
    block = block_rows if block_rows else None

    if init is None:
        k_sample, k_seed = jax.random.split(key)
        size = default_sample_size(k) if sample_size is None else int(sample_size)
        idx = _sample_indices(k_sample, valid, size)
        ws = valid[idx]
        xs = jnp.where(ws[:, None], _normalize(jnp.where(ws[:, None], x[idx], 0.0).astype(jnp.float32)), 0.0)
        ws = ws.astype(jnp.float32)
        trials = 2 + int(math.log(k)) if n_local_trials is None else int(n_local_trials)

        def one_init(key):
            c = _greedy_kmeanspp(key, xs, ws, k, trials)
            c = jnp.where(cmask[:, None], c, 0.0)
            c, n_iter = _lloyd_sample(xs, ws, c, cmask, iters, tol)
            _, best = _assign(xs, c, cmask)
            return c, n_iter, jnp.sum(ws * (1.0 - best))

        cs, n_iters, pots = jax.vmap(one_init)(jax.random.split(k_seed, n_init))
        pick = jnp.argmin(pots)
        c, n_iter = cs[pick], n_iters[pick]
    else:
        c = jnp.where(cmask[:, None], _normalize(init.astype(jnp.float32)), 0.0)
        n_iter = jnp.asarray(0, jnp.int32)

    def step(c):
        labels, us, rs, counts = _full_pass(x, valid, c, cmask, block)
        return jnp.where((counts > 0)[:, None], _normalize(us), c), (labels, us, rs, counts)

    c, out = step(c)
    if refine_iters > 1:
        c, out = jax.lax.fori_loop(0, refine_iters - 1, lambda _, carry: step(carry[0]), (c, out))
    labels, us, rs, counts = out
    centroids = _normalize(us)
    raw_means = rs / jnp.maximum(counts, 1)[:, None].astype(jnp.float32)
    unit_means = us / jnp.maximum(counts, 1)[:, None].astype(jnp.float32)
    inertia = jnp.sum(valid, dtype=jnp.float32) - jnp.sum(jnp.linalg.norm(us, axis=-1))
    labels = jnp.where(valid, labels, -1)
    return KMeansResult(centroids, labels, counts, jnp.maximum(inertia, 0.0), n_iter, raw_means, unit_means)


def kmeans(x: jax.Array, k: int, *, key: jax.Array, mask: jax.Array | None = None,
           iters: int = 50, tol: float = 1e-4, refine_iters: int = 1,
           sample_size: int | None = None, n_local_trials: int | None = None, n_init: int = 2,
           block_rows: int | None = 8192) -> KMeansResult:
    """Spherical k-means of rows x [N, D] into k clusters.

    Args:
      x: [N, D] float rows (any norm; cosine geometry).
      k: number of clusters (static Python int, 1 <= k <= N).
      key: PRNG key; the same key gives the same result.
      mask: optional [N] bool, False for padded rows (they get assignment -1).
      iters: maximum Lloyd steps on the sample.
      tol: stop when the summed squared shift of the unit centres is <= tol.
      refine_iters: Lloyd steps on all rows after the sample converged (>= 1).
      sample_size: rows used for seeding and sample iterations (default
        :func:`default_sample_size`; all rows when N is smaller).
      n_local_trials: greedy k-means++ candidates per centre (default 2 + ln k).
      n_init: independent seedings run on the sample (vectorised); the one with the lowest
        sample inertia is refined on all rows.
      block_rows: rows per block in the passes over all rows (bounds temporaries to
        block_rows x D; None processes all rows at once, best when rows are sharded).

    Returns:
      :class:`KMeansResult`.

    Raises:
      ValueError: wrong rank, k out of range, NaN/Inf in a concrete x. Inside ``jit``
        non-finite rows are masked out instead (they cannot raise there).
    """
    if x.ndim != 2:
        raise ValueError(f"kmeans expects x of shape [N, D], got {tuple(x.shape)}")
    if mask is not None and tuple(mask.shape) != tuple(x.shape[:1]):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match x rows {tuple(x.shape[:1])}")
    k = _check_k(k, x.shape[0])
    if refine_iters < 1:
        raise ValueError(f"refine_iters must be >= 1, got {refine_iters}")
    assert_finite(x, "x")
    return kmeans_core(x, jnp.ones((k,), bool), key=key, mask=mask, iters=iters, tol=tol,
                       refine_iters=refine_iters, sample_size=sample_size, n_local_trials=n_local_trials,
                       n_init=n_init, block_rows=block_rows)
