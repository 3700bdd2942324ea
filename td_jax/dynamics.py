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
import math

import flax
import jax
import jax.numpy as jnp

from td_jax.cluster import (_assign, _check_k, _finite_rows, _greedy_kmeanspp, _lloyd_sample, _normalize,
                            _sample_indices, assert_finite, kmeans_core)

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


def _check_tokens(tokens, mask=None) -> None:
    if tokens.ndim != 4:
        raise ValueError(f"token_dynamics expects tokens [T, H, W, D], got shape {tuple(tokens.shape)}"
                         " (use jax.vmap for a batch)")
    if mask is not None and tuple(mask.shape) != tuple(tokens.shape[:3]):
        raise ValueError(f"mask shape {tuple(mask.shape)} must be tokens' [T, H, W] = {tuple(tokens.shape[:3])}")
    assert_finite(tokens, "tokens")


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
        sq = jnp.sum(xf * xf, axis=-1, keepdims=True)
        inv = jnp.where(sq > 1e-12, jax.lax.rsqrt(jnp.maximum(sq, 1e-12)), 0.0)
        xh = xf * inv
        gl = (gl - xh * jnp.sum(xh * gl, axis=-1, keepdims=True)) * inv
    gx = jnp.where(keep[:, None], gl, 0.0).astype(x.dtype)
    return gx, None, None, jnp.zeros_like(g)


_cluster_means.defvjp(_cluster_means_fwd, _cluster_means_bwd)


def token_dynamics(tokens: jax.Array, k: int, *, key: jax.Array, mask: jax.Array | None = None,
                   base: str = "raw", iters: int = 50, tol: float = 1e-4, refine_iters: int = 1,
                   sample_size: int | None = None, n_init: int = 2,
                   block_rows: int | None = 8192) -> TokenDynamics:
    """Fixed-length Token Dynamics of one video.

    Args:
      tokens: [T, H, W, D] visual tokens of one video.
      k: number of base tokens (static int, 1 <= k <= T*H*W).
      key: PRNG key (same key, same output).
      mask: optional [T, H, W] bool, False for padded cells (map value -1 there).
      base: "raw" — the base is the mean of the raw tokens (keeps the LLM's input scale);
        "normalized" — the mean of the L2-normalised tokens (norm <= 1; what the released
        checkpoint was trained with).
      iters, tol, refine_iters, sample_size, n_init, block_rows: see :func:`td_jax.kmeans`.

    Returns:
      :class:`TokenDynamics` with base [k, D], dynamics_map [T, H, W].
    """
    _check_tokens(tokens, mask)
    t, h, w, d = tokens.shape
    k = _check_k(k, t * h * w)
    if base not in BASE_MODES:
        raise ValueError(f"base must be one of {BASE_MODES}, got {base!r}")
    x = tokens.reshape(t * h * w, d)
    res = kmeans_core(jax.lax.stop_gradient(x), jnp.ones((k,), bool), key=key,
                      mask=None if mask is None else mask.reshape(-1), iters=iters, tol=tol,
                      refine_iters=refine_iters, sample_size=sample_size, n_init=n_init,
                      block_rows=block_rows)
    return _finish(tokens, res, base)


def _finish(tokens, res, base_mode) -> TokenDynamics:
    """Build the TokenDynamics; the base is a differentiable function of the tokens."""
    t, h, w, d = tokens.shape
    x = tokens.reshape(-1, d)
    labels = res.assignments
    k = res.counts.shape[0]
    means = res.raw_means if base_mode == "raw" else res.unit_means
    base = _cluster_means(x, labels, res.counts, means, base_mode == "normalized")
    valid = res.counts > 0
    base = jnp.where(valid[:, None], base, 0.0).astype(tokens.dtype)
    n_tok = jnp.maximum(jnp.sum(res.counts), 1).astype(jnp.float32)
    return TokenDynamics(base=base, dynamics_map=labels.reshape(t, h, w), counts=res.counts,
                         valid=valid, inertia=res.inertia / n_tok)


def reconstruct(td: TokenDynamics) -> jax.Array:
    """The token hash function: look every map entry up in the base.

    dynamics_map [..., T, H, W], base [..., K, D] -> [..., T, H, W, D] (zeros where the
    map is -1).
    """
    m = td.dynamics_map
    lead = m.shape[:-3]
    flat = m.reshape(lead + (-1,))
    safe = jnp.maximum(flat, 0)
    out = jnp.take_along_axis(td.base, safe[..., None], axis=-2)
    out = jnp.where((flat >= 0)[..., None], out, 0)
    return out.reshape(m.shape + (td.base.shape[-1],))


def reconstruction_error(tokens: jax.Array, td: TokenDynamics, metric: str = "cosine") -> jax.Array:
    """Mean error between tokens [..., T, H, W, D] and :func:`reconstruct` (td).

    metric "cosine": mean 1 - cos; "mse": mean squared error per element; "relative":
    ||x - x_hat|| / ||x|| averaged over tokens. Masked cells (map -1) are ignored.
    """
    rec = reconstruct(td).astype(jnp.float32)
    x = tokens.astype(jnp.float32)
    keep = (td.dynamics_map >= 0).astype(jnp.float32)
    n = jnp.maximum(jnp.sum(keep), 1.0)
    if metric == "cosine":
        num = jnp.sum(x * rec, -1)
        den = jnp.linalg.norm(x, axis=-1) * jnp.linalg.norm(rec, axis=-1)
        err = 1.0 - jnp.where(den > 0, num / jnp.maximum(den, 1e-12), 0.0)
    elif metric == "mse":
        err = jnp.mean((x - rec) ** 2, -1)
    elif metric == "relative":
        err = jnp.linalg.norm(x - rec, axis=-1) / jnp.maximum(jnp.linalg.norm(x, axis=-1), 1e-12)
    else:
        raise ValueError(f"metric must be 'cosine', 'mse' or 'relative', got {metric!r}")
    return jnp.sum(err * keep) / n


# ----------------------------------------------------------------------------- adaptive K


def _silhouette(xs, ws, labels, k):
    """Exact cosine-distance silhouette of unit rows xs [S, D] (weights ws) under labels.

    The mean cosine distance of x_i to cluster j is 1 - x_i·m_j with m_j the mean of the
    cluster's unit rows, so a(i) and b(i) come from one [S, K] product (no [S, S] matrix).
    Rows in singleton clusters score 0, as in Rousseeuw's definition.
    """
    onehot = (labels[:, None] == jnp.arange(k)[None, :]) & (ws[:, None] > 0)
    n = jnp.sum(onehot, axis=0).astype(jnp.float32)                         # [K]
    sums = jnp.einsum("sk,sd->kd", onehot.astype(xs.dtype), xs)             # [K, D]
    dots = xs @ sums.T                                                      # [S, K] sum_j x_i·x_j
    mean_d = 1.0 - dots / jnp.maximum(n, 1.0)[None, :]                      # mean dist to cluster
    own_n = jnp.sum(jnp.where(onehot, n[None, :], 0.0), axis=1)             # [S]
    own_dot = jnp.sum(jnp.where(onehot, dots, 0.0), axis=1)
    self_dot = jnp.sum(xs * xs, axis=1)
    a = (own_n - 1.0 - (own_dot - self_dot)) / jnp.maximum(own_n - 1.0, 1.0)  # excludes i itself
    other = jnp.where(onehot | (n[None, :] == 0), jnp.inf, mean_d)
    b = jnp.min(other, axis=1)
    s = jnp.where((own_n > 1) & jnp.isfinite(b), (b - a) / jnp.maximum(jnp.maximum(a, b), 1e-12), 0.0)
    return jnp.sum(s * ws) / jnp.maximum(jnp.sum(ws), 1.0)


def choose_k(ks: jax.Array, distortion: jax.Array, silhouette: jax.Array, method: str,
             threshold: float, elbow_tol: float = 0.05) -> jax.Array:
    """Pick K from per-candidate scores (all [C] over candidate ks, ascending).

    elbow: where the distortion curve flattens. The curve is made monotone (running
      minimum) and normalised to e(k) = (D(k) - D(k_max)) / (D(k_min) - D(k_max)); the elbow
      is the smallest K with e(k) <= elbow_tol — the first K that has gained all but
      ``elbow_tol`` of what the largest K gains. (The second-difference rule of the
      official code, even with its offset fixed, stops at the first bend of a curve made
      of clusters of very different sizes; see tests/test_dynamics.py.)
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


def adaptive_token_dynamics(tokens: jax.Array, k_max: int, *, key: jax.Array, method: str = "elbow",
                            k_min: int = 2, threshold: float = 0.15, elbow_tol: float = 0.05, mask: jax.Array | None = None,
                            base: str = "raw", sample_size: int | None = None, iters: int = 30,
                            tol: float = 1e-4, refine_iters: int = 1, n_init: int = 2,
                            block_rows: int | None = 8192) -> TokenDynamics:
    """Adaptive-length Token Dynamics: K chosen per video in [k_min, k_max].

    All candidate K are fitted in one vectorised pass on a token sample: greedy k-means++
    seeds k_max centres once (the seeds of a smaller K are a prefix of them), then Lloyd
    runs for every candidate at once (``vmap`` over centre masks). The chosen K is refined
    on all tokens. Output has ``k_max`` slots; ``valid`` marks the K in use.

    Args:
      tokens: [T, H, W, D]; k_max: static slot count; k_min: smallest candidate (>= 1).
      method: "elbow" | "silhouette" | "threshold" (see :func:`choose_k`).
      threshold: mean within-cluster cosine distance bound for "threshold".
      elbow_tol: fraction of the distortion range left at the elbow (see :func:`choose_k`).
      Others as :func:`token_dynamics`.

    Returns:
      :class:`TokenDynamics` with base [k_max, D] and valid [k_max].
    """
    _check_tokens(tokens, mask)
    if method not in ADAPTIVE_METHODS:
        raise ValueError(f"method must be one of {ADAPTIVE_METHODS}, got {method!r}")
    if base not in ("raw", "normalized"):
        raise ValueError(f"base must be one of {BASE_MODES}, got {base!r}")
    t, h, w, d = tokens.shape
    n = t * h * w
    k_max = _check_k(k_max, n, "k_max")
    k_min = _check_k(k_min, k_max, "k_min")
    x = jax.lax.stop_gradient(tokens.reshape(n, d))
    valid = _finite_rows(x)
    if mask is not None:
        valid = valid & mask.reshape(-1)

    k_sample, k_seed, k_sil = jax.random.split(key, 3)
    size = max(2048, 64 * k_max) if sample_size is None else int(sample_size)
    idx = _sample_indices(k_sample, valid, size)
    ws = valid[idx]
    xs = jnp.where(ws[:, None], _normalize(jnp.where(ws[:, None], x[idx], 0.0).astype(jnp.float32)), 0.0)
    ws = ws.astype(jnp.float32)
    ks = jnp.arange(k_min, k_max + 1)
    slots = jnp.arange(k_max)

    def fit_all(seed_key):
        seeds = _greedy_kmeanspp(seed_key, xs, ws, k_max, 2 + int(math.log(k_max)))

        def fit(kk):
            cmask = slots < kk
            c, _ = _lloyd_sample(xs, ws, jnp.where(cmask[:, None], seeds, 0.0), cmask, iters, tol)
            labels, best = _assign(xs, c, cmask)
            dist = jnp.sum(ws * (1.0 - best)) / jnp.maximum(jnp.sum(ws), 1.0)
            return c, labels, dist

        return jax.vmap(fit)(ks)

    cs, labels, dist = jax.vmap(fit_all)(jax.random.split(k_seed, n_init))   # [I, C, ...]
    best_init = jnp.argmin(dist, axis=0)                                     # [C]
    pick = lambda a: jnp.take_along_axis(a, best_init.reshape((1, -1) + (1,) * (a.ndim - 2)), 0)[0]
    cs, labels, dist = pick(cs), pick(labels), pick(dist)
    if method == "silhouette":
        sil = jax.vmap(lambda lab: _silhouette(xs, ws, lab, k_max))(labels)
    else:
        sil = jnp.zeros_like(dist)
    k_star = choose_k(ks, dist, sil, method, threshold, elbow_tol)
    cmask = slots < k_star
    c0 = cs[k_star - k_min]
    res = kmeans_core(x, cmask, key=key, mask=valid, refine_iters=refine_iters, init=c0,
                      block_rows=block_rows)
    return _finish(tokens, res, base)
