"""Token Dynamics: a video's tokens as a token base plus a token dynamics map.

    tokens [T, H, W, D] ──spherical k-means──▶ base [K, D]          (the token base)
                                            + dynamics_map [T, H, W] (cluster id per cell)
    reconstruct(td) = base[dynamics_map] ──▶ [T, H, W, D]            (the token hash function)

Fixed length (:func:`token_dynamics`) and adaptive length
(:func:`adaptive_token_dynamics`, ``k_max`` static slots + a ``valid`` mask, so it jits and
batches). All functions are pure in arrays and a PRNG key; batch them with ``jax.vmap``.
"""
from __future__ import annotations

import functools

import flax
import jax
import jax.numpy as jnp

from td_jax.cluster import (assign, check_k, cluster_sums, fit_sample, normalize_rows, row_stats,
                            sample_indices, greedy_trials, unit_rows, as_float_array, check_float_option,
                            check_kmeans_options, check_mask, check_rows, default_sample_size,
                            default_seed_sample_size, kmeans_core, ldexp_exact, run_scale_free, RANGE_EXP,
                            ZERO_EXP, exact_rows, is_traced, shift_exact)

BASE_MODES = ("raw", "normalized")
ADAPTIVE_METHODS = ("elbow", "silhouette", "threshold")


@flax.struct.dataclass
class TokenDynamics:
    """A video's tokens, disentangled.

    base:         [K, D] token base (cluster means; zero rows where not valid).
    dynamics_map: [T, H, W] int32 cluster id of each grid cell in each frame
                  (-1 where the token was masked out).
    counts:       [K] int32 tokens per cluster.
    valid:        [K] bool, True for clusters in use (all True for fixed K unless a
                  cluster ended empty).
    inertia:      [] float32 mean cosine distance of a token to its cluster mean.
    """

    base: jax.Array
    dynamics_map: jax.Array
    counts: jax.Array
    valid: jax.Array
    inertia: jax.Array

    @property
    def k(self) -> jax.Array:
        """Number of clusters in use."""
        return jnp.sum(self.valid, axis=-1)


def _check_tokens(tokens, mask=None, what: str = "token_dynamics"):
    """Float tokens [T, H, W, D] (integer tokens cast to float32) and a bool mask [T, H, W] or None."""
    tokens = as_float_array(tokens, "tokens")
    if tokens.ndim != 4:
        raise ValueError(f"{what} expects tokens [T, H, W, D], got shape {tuple(tokens.shape)}"
                         " (use jax.vmap for a batch)")
    check_rows(tokens, what, "tokens")
    mask = check_mask(mask, tokens.shape[:3], of="tokens' [T, H, W]")
    return tokens, mask


def _check_base(base: str) -> None:
    if base not in BASE_MODES:
        raise ValueError(f"base must be one of {BASE_MODES}, got {base!r}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _cluster_means(x, labels, counts, means, normalized: bool):
    """The per-cluster means of x [N, D] given labels [N] (-1 = none), with their gradient.

    The forward returns ``means`` [K, D] that k-means already computed in its last pass (no
    extra pass over the tokens); the backward is the gradient of the mean of the raw rows
    (``normalized=False``) or of the L2-normalised rows (``normalized=True``) w.r.t. x.
    """
    del x, labels, counts, normalized
    return means


def _cluster_means_fwd(x, labels, counts, means, normalized):
    return means, (x, labels, counts)


def _cluster_means_bwd(normalized, res, g):
    x, labels, counts = res
    keep = labels >= 0
    safe = jnp.maximum(labels, 0)
    gl = g[safe] / jnp.maximum(counts, 1)[safe][:, None].astype(g.dtype)          # [N, D]
    if normalized:
        xf = x.astype(jnp.float32)
        inv = row_stats(xf, None).inv_norm[:, None]          # safe at any scale
        xh = xf * inv
        gl = (gl - xh * jnp.sum(xh * gl, axis=-1, keepdims=True)) * inv
    gx = jnp.where(keep[:, None], gl, 0.0).astype(x.dtype)
    return gx, None, None, jnp.zeros_like(g)


_cluster_means.defvjp(_cluster_means_fwd, _cluster_means_bwd)


_KM_STATIC = ("k", "iters", "refine_iters", "sample_size", "seed_sample_size", "n_init", "block_rows",
              "coarse_groups")


def _token_dynamics_traced(tokens, mask, key, tol, *, k, base, iters, refine_iters, sample_size,
                           seed_sample_size, n_init, block_rows, coarse_groups):
    t, h, w, d = tokens.shape
    x = tokens.reshape(t * h * w, d)
    res, check = kmeans_core(jax.lax.stop_gradient(x), jnp.ones((k,), bool), key=key,
                             mask=None if mask is None else mask.reshape(-1), iters=iters, tol=tol,
                             refine_iters=refine_iters, sample_size=sample_size, seed_sample_size=seed_sample_size,
                             n_init=n_init, block_rows=block_rows, coarse_groups=coarse_groups)
    return _finish(tokens, res, base), check


_token_dynamics_compiled = jax.jit(_token_dynamics_traced, static_argnames=_KM_STATIC + ("base",))


def token_dynamics(tokens: jax.Array, k: int, *, key: jax.Array, mask: jax.Array | None = None,
                   base: str = "raw", iters: int = 50, tol: float = 1e-4, refine_iters: int = 1,
                   sample_size: int | None = None, n_init: int | None = None, block_rows: int | None = 4096,
                   seed_sample_size: int | None = None, coarse_groups: int | None = None) -> TokenDynamics:
    """Fixed-length Token Dynamics of one video (compiled: one cached executable per static
    configuration; inside a user's ``jit``/``vmap`` it is traced like any JAX function).

    Args:
      tokens: [T, H, W, D] visual tokens of one video (integer tokens are cast to float32).
      k: number of base tokens (static int, 1 <= k <= T*H*W).
      key: PRNG key (same key, same output).
      mask: optional [T, H, W] bool, False for padded cells (map value -1 there; they may
        hold anything, NaN included). All-zero tokens have no direction: map value -1 too.
      base: "raw" — the base is the mean of the raw tokens (keeps the LLM's input scale);
        "normalized" — the mean of the L2-normalised tokens (norm <= 1; what the released
        checkpoint was trained with).
      iters, tol, refine_iters, sample_size, n_init, block_rows, seed_sample_size,
        coarse_groups: see :func:`td_jax.kmeans`.

    Returns:
      :class:`TokenDynamics` with base [k, D], dynamics_map [T, H, W].

    Raises:
      ValueError: a wrong shape, k out of range, a bad option (named), NaN/Inf in an
        unmasked token of concrete input, or tokens more than 2^100 times smaller than the
        largest (on tracers such tokens are masked out instead). Any other scale works:
        results are the same for any positive rescaling across the float32 range.
    """
    tokens, mask = _check_tokens(tokens, mask)
    t, h, w, _ = tokens.shape
    k = check_k(k, t * h * w)
    _check_base(base)
    opts = check_kmeans_options(iters=iters, tol=tol, refine_iters=refine_iters, sample_size=sample_size,
                                seed_sample_size=seed_sample_size, n_init=n_init, block_rows=block_rows,
                                coarse_groups=coarse_groups)
    opts.pop("n_local_trials")
    tol = opts.pop("tol")
    run = lambda v: _token_dynamics_compiled(v, mask, key, tol, k=k, base=base, **opts)
    return _scale_back(*run_scale_free(run, tokens, mask, "tokens"), base, tokens.dtype)


def _scale_back(td: TokenDynamics, shift: int, base: str, dtype) -> TokenDynamics:
    """A result computed on tokens shifted by 2^shift (:func:`td_jax.cluster.run_scale_free`),
    in the tokens' own scale and dtype: raw means shifted back exactly."""
    if not shift:
        return td
    b = ldexp_exact(td.base, -shift) if base == "raw" else td.base
    return td.replace(base=b.astype(dtype))


def _finish(tokens, res, base_mode) -> TokenDynamics:
    """Build the TokenDynamics; the base is a differentiable function of the tokens."""
    t, h, w, d = tokens.shape
    x = tokens.reshape(-1, d)
    labels = res.assignments
    means = res.raw_means if base_mode == "raw" else res.unit_means
    base = _cluster_means(x, labels, res.counts, means, base_mode == "normalized")
    valid = res.counts > 0
    base = jnp.where(valid[:, None], base, 0.0).astype(tokens.dtype)
    n_tok = jnp.maximum(jnp.sum(res.counts), 1).astype(jnp.float32)
    return TokenDynamics(base=base, dynamics_map=labels.reshape(t, h, w), counts=res.counts,
                         valid=valid, inertia=res.inertia / n_tok)


@jax.jit
def _reconstruct(base: jax.Array, dynamics_map: jax.Array) -> jax.Array:
    m = dynamics_map
    lead = m.shape[:-3]
    flat = m.reshape(lead + (-1,))
    safe = jnp.maximum(flat, 0)
    out = jnp.take_along_axis(base, safe[..., None], axis=-2)
    out = jnp.where((flat >= 0)[..., None], out, 0)
    return out.reshape(m.shape + (base.shape[-1],))


def _check_td(td: TokenDynamics) -> None:
    m, b = td.dynamics_map, td.base
    if m.ndim < 3 or b.ndim != m.ndim - 1 or b.shape[:-2] != m.shape[:-3]:
        raise ValueError(f"TokenDynamics with dynamics_map {tuple(m.shape)} and base {tuple(b.shape)}: expected "
                         "map [..., T, H, W] and base [..., K, D] with the same leading dims")


def reconstruct(td: TokenDynamics) -> jax.Array:
    """The token hash function: look every map entry up in the base (compiled).

    dynamics_map [..., T, H, W], base [..., K, D] -> [..., T, H, W, D] (zeros where the
    map is -1).
    """
    _check_td(td)
    return _reconstruct(td.base, td.dynamics_map)


METRICS = ("cosine", "mse", "relative")


@functools.partial(jax.jit, static_argnames="metric")
def _reconstruction_error(tokens, base, dynamics_map, metric):
    """The mean error and whether the kept tokens' largest |element| is outside [2^-100, 2^112)."""
    rec = _reconstruct(base, dynamics_map).astype(jnp.float32)
    x = tokens.astype(jnp.float32)
    keep = (dynamics_map >= 0).astype(jnp.float32)
    amax = jnp.max(jnp.where(keep[..., None] > 0, jnp.abs(x), 0.0))
    extreme = ~((amax >= 2.0 ** RANGE_EXP[0]) & (amax < 2.0 ** RANGE_EXP[1]))
    n = jnp.maximum(jnp.sum(keep), 1.0)
    if metric == "cosine":                    # on rows scaled by powers of two: no overflow at any scale
        err = 1.0 - jnp.sum(normalize_rows(x) * normalize_rows(rec), -1)
    elif metric == "mse":
        err = jnp.mean((x - rec) ** 2, -1)
    else:
        amax = jnp.max(jnp.abs(x), axis=-1, keepdims=True)
        _, e = jnp.frexp(jnp.where(jnp.isfinite(amax) & (amax > 0), amax, 1.0))
        s = jnp.ldexp(jnp.float32(1.0), jnp.clip(-e, -126, 126))
        num = jnp.linalg.norm((x - rec) * s, axis=-1)
        den = jnp.linalg.norm(x * s, axis=-1)
        err = num / jnp.maximum(den, 1e-30)
    return jnp.sum(jnp.where(keep > 0, err, 0.0)) / n, extreme


def reconstruction_error(tokens: jax.Array, td: TokenDynamics, metric: str = "cosine") -> jax.Array:
    """Mean error between tokens [..., T, H, W, D] and :func:`reconstruct` (td) (compiled).

    metric "cosine": mean 1 - cos; "mse": mean squared error per element; "relative":
    ||x - x_hat|| / ||x|| averaged over tokens. Masked cells (map -1) are ignored. Tokens of
    any scale (subnormal ones included) are measured exactly like the same tokens rescaled.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be 'cosine', 'mse' or 'relative', got {metric!r}")
    _check_td(td)
    tokens = as_float_array(tokens, "tokens")
    if tokens.shape[:-1] != td.dynamics_map.shape or tokens.shape[-1] != td.base.shape[-1]:
        raise ValueError(f"tokens {tuple(tokens.shape)} do not match the map {tuple(td.dynamics_map.shape)} "
                         f"and base {tuple(td.base.shape)}")
    err, extreme = _reconstruction_error(tokens, td.base, td.dynamics_map, metric)
    if is_traced(extreme) or not bool(extreme):
        return err
    # subnormal or near-maximal tokens: measure on tokens and base shifted by one exact power of two
    _, top = exact_rows(tokens, td.dynamics_map >= 0)
    if int(top) == ZERO_EXP:                                     # all kept tokens are zero
        return err
    shift = jnp.int32(-int(top))
    err, _ = _reconstruction_error(shift_exact(tokens, shift), shift_exact(td.base, shift), td.dynamics_map, metric)
    return ldexp_exact(err, -2 * shift) if metric == "mse" else err


# ----------------------------------------------------------------------------- adaptive K


def _silhouette_from_dots(dots, n, labels, self_dot, ws):
    """Cosine silhouette from dots [S, K] = x_i · (sum of the unit rows of cluster j),
    cluster sizes n [K], labels [S], self_dot [S] = x_i·x_i (1 for unit rows), weights ws [S].

    The mean cosine distance of x_i to cluster j is 1 - dots_ij / n_j, so a(i) and b(i)
    need no [S, S] matrix. Rows in singleton clusters score 0 (Rousseeuw's definition).
    """
    k = dots.shape[1]
    onehot = labels[:, None] == jnp.arange(k)[None, :]
    nf = n.astype(jnp.float32)
    mean_d = 1.0 - dots / jnp.maximum(nf, 1.0)[None, :]
    own_n = jnp.sum(jnp.where(onehot, nf[None, :], 0.0), axis=1)
    own_dot = jnp.sum(jnp.where(onehot, dots, 0.0), axis=1)
    a = (own_n - 1.0 - (own_dot - self_dot)) / jnp.maximum(own_n - 1.0, 1.0)     # excludes i itself
    other = jnp.where(onehot | (n[None, :] == 0), jnp.inf, mean_d)
    b = jnp.min(other, axis=1)
    s = jnp.where((own_n > 1) & jnp.isfinite(b), (b - a) / jnp.maximum(jnp.maximum(a, b), 1e-12), 0.0)
    return jnp.sum(s * ws) / jnp.maximum(jnp.sum(ws), 1.0)


def _silhouette(xs, ws, labels, k):
    """Exact cosine-distance silhouette of unit rows xs [S, D] (weights ws) under labels [S];
    equals scikit-learn's ``silhouette_score(metric="cosine")``."""
    sums, n = cluster_sums(xs, ws, labels, k)
    return _silhouette_from_dots(xs @ sums.T, n, labels, jnp.sum(xs * xs, axis=1), ws)


def choose_k(ks: jax.Array, distortion: jax.Array, silhouette: jax.Array, method: str,
             threshold: float, elbow_tol: float = 0.05) -> jax.Array:
    """Pick K from per-candidate scores (all [C] over candidate ks, ascending).

    elbow: where the distortion curve flattens. The curve is made monotone (running
      minimum) and normalised to e(k) = (D(k) - D(k_max)) / (D(k_min) - D(k_max)); the elbow
      is the smallest K with e(k) <= elbow_tol — the first K that has gained all but
      ``elbow_tol`` of what the largest K gains. (The second-difference rule of the
      official code, even with its offset fixed, stops at the first bend of a curve made
      of clusters of very different sizes; see tests/test_core.py::test_adaptive_recovers_planted_k
      and ::test_choose_k_elbow_offset.)
    silhouette: the K with the highest silhouette.
    threshold: the smallest K whose mean within-cluster cosine distance is <= threshold
      (the largest K if none is).
    """
    if method == "elbow":
        d = jax.lax.cummin(distortion)
        span = d[0] - d[-1]
        e = (d - d[-1]) / jnp.maximum(span, 1e-12)
        ok = (e <= elbow_tol) | (span <= 1e-9)
        return ks[jnp.argmax(ok)]
    if method == "silhouette":
        return ks[jnp.argmax(silhouette)]
    if method == "threshold":
        ok = distortion <= threshold
        return jnp.where(jnp.any(ok), ks[jnp.argmax(ok)], ks[-1])
    raise ValueError(f"method must be one of {ADAPTIVE_METHODS}, got {method!r}")


def merge_path(sums: jax.Array, counts: jax.Array, k_min: int):
    """Greedy spherical Ward merging of fitted clusters, from all of them down to k_min.

    sums [K, D] are the clusters' sums of unit rows, counts [K] their sizes. A cluster's
    distortion is ``n - |sum|`` (its summed cosine distance to its mean direction), so
    merging j and l costs ``|S_j| + |S_l| - |S_j + S_l|``; each step merges the cheapest
    pair (kept on the [K, K] Gram matrix of the sums, O(K^2) a step).

    Returns, for every candidate k in [k_min, K]: owner [C, K] int32 (fine cluster ->
    representative fine cluster of its merged cluster), clusters [C] int32 (non-empty
    merged clusters: min(k, non-empty fine clusters)) and distortion [C] f32 (mean cosine
    distance to the merged means).
    """
    kk = sums.shape[0]
    steps = kk - k_min
    gram = sums @ sums.T
    active = counts > 0
    n_active = jnp.sum(active)
    total = jnp.maximum(jnp.sum(counts), 1).astype(jnp.float32)
    idx = jnp.arange(kk)

    def dist(gram, active):
        return (total - jnp.sum(jnp.where(active, jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0)), 0.0))) / total

    def body(t, state):
        gram, active, owner, snaps, dists = state
        snaps = snaps.at[t].set(owner)
        dists = dists.at[t].set(dist(gram, active))
        nrm = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
        joint = jnp.sqrt(jnp.maximum(nrm[:, None] ** 2 + nrm[None, :] ** 2 + 2.0 * gram, 0.0))
        pair = active[:, None] & active[None, :] & (idx[:, None] < idx[None, :])
        cost = jnp.where(pair, nrm[:, None] + nrm[None, :] - joint, jnp.inf)
        flat = jnp.argmin(cost)
        j, l = flat // kk, flat % kk
        can = jnp.sum(active) >= 2
        row = gram[j] + gram[l]
        diag = gram[j, j] + gram[l, l] + 2.0 * gram[j, l]
        merged = gram.at[j, :].set(row).at[:, j].set(row).at[j, j].set(diag)
        gram = jnp.where(can, merged, gram)
        active = jnp.where(can, active.at[l].set(False), active)
        owner = jnp.where(can & (owner == l), j, owner)
        return gram, active, owner, snaps, dists

    snaps = jnp.zeros((steps + 1, kk), jnp.int32)
    dists = jnp.zeros((steps + 1,), jnp.float32)
    state = (gram, active, idx.astype(jnp.int32), snaps, dists)
    gram, active, owner, snaps, dists = jax.lax.fori_loop(0, steps, body, state)
    snaps = snaps.at[steps].set(owner)
    dists = dists.at[steps].set(dist(gram, active))
    ks = jnp.arange(k_min, kk + 1)
    t = jnp.clip(n_active - ks, 0, steps)
    return snaps[t], jnp.minimum(ks, n_active).astype(jnp.int32), dists[t]


ADAPTIVE_STATIC = _KM_STATIC[1:] + ("k_max", "k_min", "method", "base")


def _adaptive_traced(tokens, mask, key, tol, threshold, elbow_tol, *, k_max, k_min, method, base, iters,
                     refine_iters, sample_size, seed_sample_size, n_init, block_rows, coarse_groups):
    del coarse_groups                     # the k_max fit is flat; see adaptive_token_dynamics
    t, h, w, d = tokens.shape
    n = t * h * w
    x = jax.lax.stop_gradient(tokens.reshape(n, d))
    stats = row_stats(x, None if mask is None else mask.reshape(-1))

    # Fit k_max clusters on a sample, then merge them greedily down to k_min.
    k_sample, k_seed = jax.random.split(key)
    size = min(n, default_sample_size(k_max) if sample_size is None else sample_size)
    seed = default_seed_sample_size(k_max) if seed_sample_size is None else seed_sample_size
    xs, ws = unit_rows(x, stats, sample_indices(k_sample, stats.valid, size))
    all_slots = jnp.ones((k_max,), bool)
    c, _ = fit_sample(k_seed, xs, ws, all_slots, seed_rows=seed, iters=iters, tol=tol,
                      n_trials=greedy_trials(k_max, None), n_init=n_init)
    labels, _ = assign(xs, c, all_slots)
    sums, counts = cluster_sums(xs, ws, labels, k_max)
    owners, clusters, distortion = merge_path(sums, counts, k_min)
    ks = jnp.arange(k_min, k_max + 1)
    if method == "silhouette":
        dots = xs @ sums.T                                                    # [S, k_max]
        self_dot = jnp.sum(xs * xs, axis=1)

        # one candidate K at a time; its merged dots as one small GEMM (T = 64, k_max = 64: the
        # rule cost ~0.02 s over elbow, against ~0.08 s by segment_sum and ~0.06 s with 16
        # candidates vectorised, whose [16, S, k_max] temporaries leave the cache)
        def score(owner):
            to = (owner[:, None] == jnp.arange(k_max)[None, :]).astype(jnp.float32)   # [k_max, k_max]
            merged = dots @ to                                                 # [S, k_max]
            n_merged = (counts.astype(jnp.float32) @ to).astype(counts.dtype)
            return _silhouette_from_dots(merged, n_merged, owner[labels], self_dot, ws)

        sil = jax.lax.map(score, owners)
    else:
        sil = jnp.zeros_like(distortion)
    k_star = choose_k(ks, distortion, sil, method, threshold, elbow_tol)
    owner = owners[k_star - k_min]

    # The merged clusters' mean directions, in slots 0..K*-1, refined on all tokens.
    merged_sums = jax.ops.segment_sum(sums, owner, k_max)
    is_rep = jax.ops.segment_sum(counts, owner, k_max) > 0
    slot = jnp.where(is_rep, jnp.cumsum(is_rep) - 1, k_max)
    init = jnp.zeros_like(merged_sums).at[slot].set(normalize_rows(merged_sums), mode="drop")
    cmask = jnp.arange(k_max) < clusters[k_star - k_min]
    res, check = kmeans_core(x, cmask, key=key, refine_iters=refine_iters, init=init, block_rows=block_rows,
                             rows=stats)
    return _finish(tokens, res, base), check


_adaptive_compiled = jax.jit(_adaptive_traced, static_argnames=ADAPTIVE_STATIC)


def adaptive_token_dynamics(tokens: jax.Array, k_max: int, *, key: jax.Array, method: str = "elbow",
                            k_min: int = 2, threshold: float = 0.15, elbow_tol: float = 0.05,
                            mask: jax.Array | None = None, base: str = "raw", sample_size: int | None = None,
                            iters: int = 30, tol: float = 1e-4, refine_iters: int = 1, n_init: int = 2,
                            block_rows: int | None = 4096, seed_sample_size: int | None = None) -> TokenDynamics:
    """Adaptive-length Token Dynamics: K chosen per video in [k_min, k_max] (compiled).

    k_max clusters are fitted once on a token sample (greedy k-means++ and Lloyd, as
    :func:`td_jax.kmeans`), then merged greedily down to k_min (spherical Ward: each step
    joins the pair whose merge adds the least within-cluster cosine distance; see
    :func:`merge_path`). That gives every candidate K a partition of the sample, its
    distortion and (for "silhouette") its exact silhouette, at the cost of one fit; the
    chosen K's merged means are refined on all tokens. Output has ``k_max`` slots; ``valid``
    marks the K in use (slots 0..K-1).

    Args:
      tokens: [T, H, W, D]; k_max: static slot count; k_min: smallest candidate (1 <= k_min <= k_max).
      method: "elbow" | "silhouette" | "threshold" (see :func:`choose_k`).
      threshold: mean within-cluster cosine distance bound for "threshold".
      elbow_tol: fraction of the distortion range left at the elbow (see :func:`choose_k`).
      iters, n_init, sample_size, seed_sample_size, tol: the k_max fit on the sample.
      refine_iters, block_rows: the passes over all tokens. Others as :func:`token_dynamics`.

    Returns:
      :class:`TokenDynamics` with base [k_max, D] and valid [k_max].
    """
    tokens, mask = _check_tokens(tokens, mask, "adaptive_token_dynamics")
    if method not in ADAPTIVE_METHODS:
        raise ValueError(f"method must be one of {ADAPTIVE_METHODS}, got {method!r}")
    _check_base(base)
    t, h, w, _ = tokens.shape
    k_max = check_k(k_max, t * h * w, "k_max")
    k_min = check_k(k_min, t * h * w, "k_min")
    if k_min > k_max:
        raise ValueError(f"k_min={k_min} must be <= k_max={k_max}")
    threshold = check_float_option("threshold", threshold)
    elbow_tol = check_float_option("elbow_tol", elbow_tol)
    opts = check_kmeans_options(iters=iters, tol=tol, refine_iters=refine_iters, sample_size=sample_size,
                                seed_sample_size=seed_sample_size, n_init=n_init, block_rows=block_rows,
                                n_init_none=False)
    opts.pop("n_local_trials")
    tol = opts.pop("tol")
    run = lambda v: _adaptive_compiled(v, mask, key, tol, threshold, elbow_tol, k_max=k_max, k_min=k_min,
                                       method=method, base=base, **opts)
    return _scale_back(*run_scale_free(run, tokens, mask, "tokens"), base, tokens.dtype)
