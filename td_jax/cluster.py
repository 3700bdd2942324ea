"""Spherical k-means in pure JAX (cosine distance on L2-normalised rows).

The recipe, chosen for speed *and* cluster quality (measured against scikit-learn and faiss
in experiments/benchmarks/compress_bench.py):

1. per-row sums of squares (finite check, safe inverse norms, a global power-of-two
   scale; per-row max-abs too, in a second read, only when some row's sum of squares is
   non-finite or outside ``[2^-100, 2^100]``), so nothing below depends on the tokens'
   scale. The flat path (k below ``TWO_LEVEL_MIN_K``) takes them without a read of its
   own: the sample's from its drawn rows, everyone else's in step 5's tiles (raw sums
   accumulated unscaled, scaled once at the end); when some unmasked row fails the
   ``[2^-100, 2^100]`` rule the whole path runs again after the read (under ``vmap``, for
   the whole batch: ``_optimistic_flat``). The two-level path reads them first;
2. a sample of ``sample_size`` rows (all of them when N is small; masked rows never drawn);
3. greedy k-means++ seeding on the first ``seed_sample_size`` rows of the sample
   (``n_local_trials`` candidates per centre, the best by potential, as scikit-learn does),
   ``n_init`` seedings vectorised with ``vmap``;
4. Lloyd steps on the sample until the centres move less than ``tol``;
5. ``refine_iters`` Lloyd steps on *all* rows, in row blocks (one GEMM assigns a block; its
   per-cluster sums, unit-weighted and raw, by scatter-add on CPU, by one-hot GEMMs
   elsewhere), so centres, raw means and inertia come from the last assignment of all rows
   and are consistent.

Default (``n_init=None``) for k <= ``MULTI_START_MAX_K``, steps 2–4 are instead: a sample of
``max(512, 16k)`` rows and its Gram matrix (one small GEMM), ``MULTI_STARTS`` greedy
k-means++ seedings (16 up to k = 32) each followed by ``MULTI_START_STEPS`` Lloyd steps,
all in Gram space (a centre is a weight column over the sample rows, so a step of every
start is one [S, S] x [S, starts·k] GEMM), and the start with the lowest sample inertia
wins; when N fits :func:`default_sample_size` (or ``sample_size`` is given) the winner
then runs Lloyd on that sample. On LLaVA-OV-sized tokens (T = 64, K = 32) the spread of
the result over keys comes from which local minimum the seeding lands in, not from the
number of refinement passes: many cheap starts on a small sample gave lower inertia than
two starts on a larger one, for less time (results/compress_bench.md).

Large k (200 clusters or more by default) seeds and iterates in two levels, so no step
runs k times in sequence and no pass compares every row with every centre: ``G ≈ √k``
coarse centres (steps 2–4 with G clusters) split the rows into groups; greedy k-means++
seeds up to ``2k/G`` fine centres in every group at once (on the group's own rows, laid out
in tiles of one group each, so a step is one pass over the seeding rows with no padding to
the largest group; candidates drawn per group by inverse CDF; distances from bfloat16 rows
summed in float32, the seeds themselves taken in float32), and the k seeds with the
largest potential gains over all groups are kept — the allocation a global greedy seeding
would make. Lloyd then runs on all rows (or a row sample) where a row sees only the fine
centres of its two nearest groups (row tiles of one group each, a small GEMM per tile;
cluster sums by scatter-add; a slot left empty moves to the farthest of about ``4k/G``
random rows of its group). Costs: about ``3√k`` sequential seeding steps
instead of k, and ``N·D·(G + 4k/G)`` per pass instead of ``N·D·k``.

Distances are cosine distances ``1 - cos(x, c)``. Rows are never copied normalised: the
assignment ``argmax_j x·c_j`` does not depend on ``|x|``, and the update weights each row by
``1/|x|`` inside the GEMM.

Scale: the result is the same for any positive rescaling of the tokens by a power of two
(and, up to float rounding of the input itself, by any factor) across the whole float32
range. Rows whose largest |element| lies in ``[2^-100, 2^112)`` are clustered as they are:
norms are taken after scaling a row by a power of two and the centres are scaled to the
data's largest exponent, so no square over- or underflows. Other rows — all-zero rows,
subnormal rows (XLA on CPU flushes subnormals to zero, so float arithmetic sees them as 0)
and rows near the float32 maximum — are *extreme*: the compiled core leaves them out like
masked rows (assignment -1) and counts them. The public functions, on concrete arrays, then
look at the input's bits (integer ops, immune to the flush), shift every token by one exact
power of two that brings the largest to [0.5, 1), run again and shift the raw means back
exactly (:func:`run_scale_free`); rows still extreme after that shift that are not zero
(more than 2^100 below the largest row) raise a ValueError. All-zero rows have no direction
and stay unassigned (-1). Inside a user's ``jit``/``vmap`` extreme rows stay unassigned.

Empty clusters are re-seeded from the sample points farthest from their centres while
iterating; a cluster still empty at the end is reported by ``counts == 0`` (its centroid is
a zero vector and ``valid`` is False), never silently used.

Everything is a pure function of arrays and a PRNG key: ``jax.jit``, ``jax.vmap`` (a batch
of videos) and inputs sharded over a mesh work unchanged. The public :func:`kmeans` is
itself compiled (one cached executable per static configuration); called on concrete
arrays it turns a compiled non-finite count into a ``ValueError``; on tracers (inside a
user's ``jit``/``vmap``/``grad``) non-finite rows are treated as masked instead.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Rows whose largest |element| has a binary exponent in this range square and sum in
# float32 without over- or underflow (896 * 2^(2*58) < 2^126, 2^(-2*60) > 2^-126).
_SAFE_EXP = (-60, 58)
# Rows whose largest |element| lies in [2^lo, 2^hi) are clustered in float32 as they are:
# elements within 2^-26 of the row's largest are normal numbers (the flush to zero of
# subnormals cannot change a direction), and 1/|x| >= 2^-112 / sqrt(D) stays normal for
# D < 2^28. Other rows are extreme (see the module docstring).
RANGE_EXP = (-100, 112)
# What exact_rows reports as the exponent of an all-zero input.
ZERO_EXP = -1000
# Clamp for power-of-two scales so 2^-e stays a normal float32.
_MAX_EXP = 126
# Rows per tile in the grouped (two-level) passes.
_TILE_ROWS = 256
# Rows per tile of the two-level greedy seeding (a group's last tile is padded).
_SEED_TILE_ROWS = 128
# k from which seeding and passes run in two levels when ``coarse_groups`` is None (on 23k LLaVA-OV-sized
# tokens: at k = 128 two levels are 2.4x faster but 2% looser, at k = 233 7x faster at equal inertia).
TWO_LEVEL_MIN_K = 200
# n_init=None (the default): up to this k the flat path fits MULTI_STARTS seedings on a Gram sample
# (fit_sample_multistart); above it, and in the two-level path, n_init=None means 2.
MULTI_START_MAX_K = 64
MULTI_STARTS = 16
# Lloyd steps of every start in Gram space (T = 64 LLaVA-OV-sized tokens, K = 32: 3 and 5 steps
# gave the same inertia after the pass over all rows).
MULTI_START_STEPS = 3


class KMeansResult(NamedTuple):
    """Result of :func:`kmeans`.

    centroids:   [K, D] unit-norm cluster centres (zero rows for empty / disabled slots).
    assignments: [N] int32 cluster id of each row; -1 for masked (or non-finite) rows.
    counts:      [K] int32 rows per cluster.
    inertia:     [] float32, sum over unmasked rows of ``1 - cos(x, centroid)``.
    n_iter:      [] int32 Lloyd steps run on the sample (of the initialisation kept; the
                 largest over groups in the two-level path).
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


class Finiteness(NamedTuple):
    """What the compiled check found among unmasked rows: non-finite rows (count and first
    flat row, -1 when none) and extreme finite rows (max |x| zero or outside
    ``[2^-100, 2^112)``; left unassigned in this run)."""

    n_bad: jax.Array
    first_bad: jax.Array
    n_extreme: jax.Array


# ----------------------------------------------------------------------------- checks (eager, cheap)


def as_float_array(x, name: str = "x") -> jax.Array:
    """``x`` as a JAX array of a floating dtype: integer and bool arrays are cast to float32.

    Raises ValueError for complex or non-numeric input (cosine k-means is defined on reals).
    """
    if not isinstance(x, jax.Array):
        x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.floating):
        return x
    if jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_:
        return x.astype(jnp.float32)
    raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}")


def check_k(k, n: int, what: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"{what} must be a Python int (it sets static shapes), got {type(k).__name__}")
    k = int(k)
    if k < 1:
        raise ValueError(f"{what} must be >= 1, got {k}")
    if k > n:
        raise ValueError(f"{what}={k} is larger than the number of tokens N={n}")
    return k


def check_int_option(name: str, value, minimum: int, allow_none: bool = False):
    """An integer keyword option (static: it sets shapes or loop counts) >= minimum."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {minimum}{' or None' if allow_none else ''}, "
                        f"got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {int(value)}")
    return int(value)


def check_float_option(name: str, value, minimum: float = 0.0):
    """A real keyword option >= minimum; tracers (options computed under jit) pass as they are."""
    if isinstance(value, jax.core.Tracer):
        return value
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(v) or v < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {value!r}")
    return v


def check_rows(x: jax.Array, what: str, name: str = "x") -> None:
    """At least one row and one feature: N >= 1 and D >= 1 (shape names in the message)."""
    if x.shape[-1] < 1:
        raise ValueError(f"{name} has D=0 features (shape {tuple(x.shape)}); {what} needs D >= 1")
    if math.prod(x.shape[:-1]) < 1:
        raise ValueError(f"{name} has no rows (shape {tuple(x.shape)}); {what} needs at least one")


def check_mask(mask, shape: tuple, name: str = "mask", of: str = "x rows"):
    """``mask`` as a bool array of ``shape`` (or None)."""
    if mask is None:
        return None
    if not isinstance(mask, jax.Array):
        mask = jnp.asarray(mask)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} shape {tuple(mask.shape)} does not match {of} {tuple(shape)}")
    return mask.astype(bool) if mask.dtype != jnp.bool_ else mask


def is_traced(*arrays) -> bool:
    return any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(arrays))


def raise_if_nonfinite(check: Finiteness, name: str, shape: tuple) -> None:
    """Turn the compiled non-finite count into a ValueError (no-op on tracers: inside a
    user's jit/vmap the rows were treated as masked instead). Reads two scalars only."""
    if is_traced(check):
        return
    n_bad = int(check.n_bad)
    if n_bad:
        raise ValueError(f"{name} of shape {tuple(shape)} holds NaN/Inf in {n_bad} unmasked rows "
                         f"(first flat row {int(check.first_bad)}); clean or mask them first")


@jax.jit
def _nonfinite(x: jax.Array) -> Finiteness:
    bad = ~jnp.isfinite(jnp.max(jnp.abs(x.reshape(-1, x.shape[-1] if x.ndim else 1)), axis=-1))
    return Finiteness(jnp.sum(bad, dtype=jnp.int32), jnp.where(jnp.any(bad), jnp.argmax(bad), -1).astype(jnp.int32),
                      jnp.asarray(0, jnp.int32))


def assert_finite(x, name: str = "tokens") -> None:
    """Raise ValueError if a concrete array holds NaN or Inf (no-op on tracers).

    The check is one compiled reduction on the array's device (no host copy). Inside
    ``jit`` it cannot raise; there :func:`kmeans` treats non-finite rows as masked.
    """
    if is_traced(x):
        return
    x = as_float_array(x, name)
    raise_if_nonfinite(_nonfinite(x), name, x.shape)


# ----------------------------------------------------------------------------- rows


class RowStats(NamedTuple):
    """What one read of all rows x [N, D] yields (all [N] except the scalars)."""

    valid: jax.Array      # bool: finite, not masked, not extreme
    finite: jax.Array     # bool
    inv_norm: jax.Array   # f32 1/|x| (0 for zero or non-finite rows)
    scale: jax.Array      # [] f32 power of two: |scale * x| <= 1 elementwise over valid rows
    check: Finiteness     # unmasked non-finite and extreme rows


def _pow2(e: jax.Array) -> jax.Array:
    """2^e as float32 for an integer array e, clamped to normal float32 exponents."""
    return jnp.ldexp(jnp.float32(1.0), jnp.clip(e, -_MAX_EXP, _MAX_EXP).astype(jnp.int32))


def _fast_ok(sq: jax.Array) -> jax.Array:
    """Rows whose sum of squares sq lies in [2^-100, 2^100]: finite, not extreme and safe to
    normalise as they are (the fast rule of :func:`row_stats`)."""
    return (sq >= 2.0 ** -100) & (sq <= 2.0 ** 100)


def _fast_inv(sq: jax.Array, ok: jax.Array) -> jax.Array:
    return jnp.where(ok, jax.lax.rsqrt(jnp.where(ok, sq, 1.0)), 0.0)


def _fast_top(sq: jax.Array, use: jax.Array) -> jax.Array:
    """The scale exponent of the rows ``use`` (-_MAX_EXP when none): sq = f * 2^e2, so
    max-abs <= sqrt(sq) < 2^ceil(e2/2)."""
    _, e2 = jnp.frexp(jnp.where(use, sq, 0.0))
    return jnp.max(jnp.where(use, (e2 + 1) // 2, -_MAX_EXP))


def _no_check() -> Finiteness:
    zero = jnp.asarray(0, jnp.int32)
    return Finiteness(zero, jnp.asarray(-1, jnp.int32), zero)


def row_stats(x: jax.Array, mask: jax.Array | None) -> RowStats:
    """Finite flags, extreme rows, safe inverse norms and a global scale of x [N, D].

    Common case, one read: the row sums of squares. When every unmasked row's sum of
    squares lies in ``[2^-100, 2^100]`` those rows are finite, not extreme and safe to
    normalise (their max-abs lies in ``[2^-50 / sqrt(D), 2^50]``), and the global scale
    comes from the largest sum of squares (``|scale * x| < 1`` still holds; it is the same
    power of two for any power-of-two rescaling of x, so results keep their scale
    invariance). Otherwise :func:`row_stats_exact` (max-abs and sum of squares; a second,
    scaled read for rows whose max-abs exponent lies outside ``_SAFE_EXP``).
    """
    sq = jnp.sum(jnp.square(x.astype(jnp.float32)), axis=-1)
    m = jnp.ones(sq.shape, bool) if mask is None else mask
    ok = _fast_ok(sq)

    def fast():
        # masked rows are never used, but a non-finite one must still be flagged (the passes zero it)
        return RowStats(m, jnp.isfinite(sq), _fast_inv(sq, ok), _pow2(-jnp.where(jnp.any(m), _fast_top(sq, m & ok), 0)),
                        _no_check())

    return jax.lax.cond(jnp.all(ok | ~m), fast, lambda: row_stats_exact(x, mask))


def row_stats_exact(x: jax.Array, mask: jax.Array | None) -> RowStats:
    """:func:`row_stats` for inputs with non-finite, extreme or unsafe rows.

    The max-abs and the sum of squares are sibling reductions. Rows whose max-abs exponent
    lies outside ``_SAFE_EXP`` (only when some exist) get their norm from a second, scaled
    reduction: ``|x| = 2^e |x 2^-e|``. Extreme rows (max-abs outside ``[2^-100, 2^112)``,
    zero and flushed subnormal rows included) are not valid.
    """
    amax = jnp.max(jnp.abs(x), axis=-1).astype(jnp.float32)
    sq = jnp.sum(jnp.square(x.astype(jnp.float32)), axis=-1)
    finite = jnp.isfinite(amax)
    m = jnp.ones_like(finite) if mask is None else mask
    in_range = (amax >= 2.0 ** RANGE_EXP[0]) & (amax < 2.0 ** RANGE_EXP[1])
    valid = finite & m & in_range
    bad = m & ~finite
    check = Finiteness(jnp.sum(bad, dtype=jnp.int32),
                       jnp.where(jnp.any(bad), jnp.argmax(bad), -1).astype(jnp.int32),
                       jnp.sum(m & finite & ~in_range, dtype=jnp.int32))
    _, e = jnp.frexp(jnp.where(finite, amax, 0.0))               # amax = f * 2^e, f in [0.5, 1)
    unsafe = finite & (amax > 0) & ((e < _SAFE_EXP[0]) | (e > _SAFE_EXP[1]))

    def rescued():
        s = _pow2(-e)
        sq2 = jnp.sum(jnp.square(x.astype(jnp.float32) * s[:, None]), axis=-1)
        return jnp.where(unsafe, s * jax.lax.rsqrt(jnp.maximum(sq2, 0.25)), jax.lax.rsqrt(jnp.maximum(sq, 1e-37)))

    inv = jax.lax.cond(jnp.any(unsafe), rescued, lambda: jax.lax.rsqrt(jnp.maximum(sq, 1e-37)))
    inv = jnp.where(finite & (amax > 0), inv, 0.0)
    top = jnp.max(jnp.where(valid, e, -_MAX_EXP))
    scale = _pow2(-jnp.where(jnp.any(valid), top, 0))
    return RowStats(valid, finite, inv, scale, check)


# ----------------------------------------------------------------------------- exact power-of-two shifts
# XLA on CPU flushes subnormal floats to zero (inputs and results), so these work on the bits.


def _frexp_exponent_bits(mag: jax.Array) -> jax.Array:
    """e with |v| = f * 2^e, f in [0.5, 1), from int32 magnitude bits of float32 values
    (subnormals included; ZERO_EXP for zero)."""
    big = mag >> 23
    sub = (31 - jax.lax.clz(jnp.maximum(mag, 1))) - 148
    return jnp.where(mag == 0, ZERO_EXP, jnp.where(big > 0, big - 126, sub)).astype(jnp.int32)


def ldexp_exact(v: jax.Array, s) -> jax.Array:
    """``v * 2^s`` for float32 v and integer s (broadcast), computed on the bits: exact when the
    result is normal, rounded to nearest-even when it is subnormal, ±inf past the maximum;
    subnormal inputs are shifted too (float multiplication would flush them to zero)."""
    bits = jax.lax.bitcast_convert_type(v.astype(jnp.float32), jnp.int32)
    sign = bits & jnp.int32(-2 ** 31)
    mag = bits & 0x7FFFFFFF
    big = mag >> 23
    m = jnp.where(big > 0, (mag & 0x7FFFFF) | 0x800000, mag)                 # significand
    lz = jnp.where(m > 0, jax.lax.clz(jnp.maximum(m, 1)) - 8, 0)              # normalise subnormals
    m = m << lz
    e2 = jnp.maximum(big, 1) - lz + jnp.asarray(s, jnp.int32)                 # biased exponent after the shift
    normal = (e2 << 23) | (m & 0x7FFFFF)
    r = jnp.clip(1 - e2, 1, 26)                                               # right shift into the subnormals
    q = m >> r
    rem = m & ((1 << r) - 1)
    half = 1 << (r - 1)
    q = q + ((rem > half) | ((rem == half) & ((q & 1) == 1))).astype(jnp.int32)
    out = jnp.where(e2 >= 255, 0x7F800000, jnp.where(e2 >= 1, normal, q))
    out = jnp.where((mag == 0) | (big == 255), mag, out)                       # zero, inf, nan unchanged
    return jax.lax.bitcast_convert_type(out | sign, jnp.float32)


@jax.jit
def exact_rows(x: jax.Array, mask: jax.Array | None):
    """From x's bits: unmasked all-zero rows (count) and the largest frexp exponent of |x|
    over unmasked rows (ZERO_EXP when they are all zero). x [..., D], mask [...] or None."""
    mag = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32) & 0x7FFFFFFF
    row = jnp.max(mag.reshape(-1, x.shape[-1]), axis=-1)
    m = jnp.ones_like(row, bool) if mask is None else mask.reshape(-1)
    top = jnp.max(jnp.where(m, row, 0))
    return jnp.sum(m & (row == 0), dtype=jnp.int32), _frexp_exponent_bits(top)


@jax.jit
def shift_exact(x: jax.Array, s: jax.Array) -> jax.Array:
    """``x * 2^s`` exactly (compiled :func:`ldexp_exact`), as float32."""
    return ldexp_exact(x, s)


def run_scale_free(run, x: jax.Array, mask: jax.Array | None, name: str):
    """Run ``run(x) -> (out, Finiteness)`` so the result does not depend on the tokens' scale.

    Raises on non-finite unmasked rows. When the compiled run found extreme rows (and x is
    concrete) and they are not all zero: x is shifted by the exact power of two ``2^s`` that
    brings its largest |element| to [0.5, 1) and run again; returns ``(out, s)`` (0 when no
    shift was needed; divide raw outputs by ``2^s`` with :func:`ldexp_exact`). Rows still
    extreme after the shift that are not zero raise a ValueError.
    """
    out, check = run(x)
    raise_if_nonfinite(check, name, x.shape)
    if is_traced(check) or int(check.n_extreme) == 0:
        return out, 0
    n_zero, top = (int(v) for v in exact_rows(x, mask))
    if int(check.n_extreme) == n_zero:
        return out, 0                                      # only all-zero rows: nothing to rescue
    s = -top
    out, check = run(shift_exact(x, jnp.int32(s)))
    if int(check.n_extreme) != n_zero:
        lost = int(check.n_extreme) - n_zero
        raise ValueError(f"{name} of shape {tuple(x.shape)}: {lost} unmasked rows are more than 2^100 times smaller "
                         f"than the largest row (largest |element| 2^{top - 1}..2^{top}); float32 cannot hold both "
                         "scales in one computation: rescale those rows or mask them")
    return out, s


def normalize_rows(v: jax.Array) -> jax.Array:
    """Rows of v [..., D] to unit norm, safely for any scale; zero (and non-finite) rows become 0."""
    v = v.astype(jnp.float32)
    amax = jnp.max(jnp.abs(v), axis=-1, keepdims=True)
    ok = jnp.isfinite(amax) & (amax > 0)
    _, e = jnp.frexp(jnp.where(ok, amax, 1.0))
    y = jnp.where(ok, v * _pow2(-e), 0.0)
    sq = jnp.sum(y * y, axis=-1, keepdims=True)
    return jnp.where(ok, y * jax.lax.rsqrt(jnp.maximum(sq, 0.25)), 0.0)


def unit_rows(x: jax.Array, rows: RowStats, idx: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Gathered rows x[idx] as unit float32 rows [S, D] (zero where not valid) and 0/1 weights [S]."""
    ws = rows.valid[idx]
    xs = x[idx].astype(jnp.float32) * rows.inv_norm[idx][:, None]
    return jnp.where(ws[:, None], xs, 0.0), ws.astype(jnp.float32)


def sample_unit_rows(key: jax.Array, x: jax.Array, mask: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    """:func:`unit_rows` of a sample drawn among the unmasked rows, with the row statistics
    taken from the drawn rows alone (the fast rule of :func:`row_stats`; no read of the other
    rows): x [N, D], mask [N] -> unit rows [S, D], 0/1 weights [S]. Equal to
    ``unit_rows(x, row_stats(x, mask), sample_indices(key, mask, size))`` when every unmasked
    row passes the fast rule (the caller checks that in its pass over all rows)."""
    idx = sample_indices(key, mask, size)
    xr = x[idx].astype(jnp.float32)
    sq = jnp.sum(jnp.square(xr), axis=-1)
    ok = mask[idx] & _fast_ok(sq)
    return jnp.where(ok[:, None], xr * _fast_inv(sq, ok)[:, None], 0.0), ok.astype(jnp.float32)


def sample_indices(key: jax.Array, valid: jax.Array, size: int) -> jax.Array:
    """``size`` row indices drawn with replacement, uniformly among valid rows (all rows,
    in order, when size >= N)."""
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
    """Rows for the Lloyd steps on a sample: 64 per centre below ``TWO_LEVEL_MIN_K``, 128 per
    centre from there (all 23,328 rows of a 32-frame video at K = 233), at least 2048."""
    return max(2048, (64 if k < TWO_LEVEL_MIN_K else 128) * k)


def default_seed_sample_size(k: int) -> int:
    """Rows (a prefix of the sample) for greedy k-means++ seeding: 16 per centre below
    ``TWO_LEVEL_MIN_K``, 64 per centre from there, at least 1024.

    At K = 233 on a 32-frame LLaVA-OV-sized video, 16 rows per centre and a 64-per-centre
    sample left the inertia 0.08% above faiss's (spherical, 20 iterations on all rows);
    64 and 128 per centre put it at or below faiss's (compress_bench, section bigk) for
    ~1.5x the time of that call, still a fraction of ToMe's.
    """
    return max(1024, (16 if k < TWO_LEVEL_MIN_K else 64) * k)


def default_coarse_groups(k: int) -> int:
    """Coarse groups of the two-level path: 1 (flat) below 200 clusters, else round(√k)."""
    return 1 if k < TWO_LEVEL_MIN_K else int(round(math.sqrt(k)))


# ----------------------------------------------------------------------------- seeding and Lloyd on a sample


def assign(x: jax.Array, c: jax.Array, cmask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Nearest centre by cosine. x [N, D] (unit or any norm), c [K, D], cmask [K].

    Returns labels [N] int32 and the winning dot product x·c [N] (not divided by |x|).
    """
    scores = jnp.einsum("nd,kd->nk", x, c.astype(x.dtype), preferred_element_type=jnp.float32)
    scores = jnp.where(cmask[None, :], scores, -jnp.inf)
    labels = jnp.argmax(scores, axis=-1).astype(jnp.int32)
    return labels, jnp.max(scores, axis=-1)


def cluster_sums(x: jax.Array, weight: jax.Array, labels: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Per-cluster weighted sums as one GEMM: returns sums [K, D] (f32) and counts [K].

    weight [N] multiplies each row (0 drops a row).
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


def _greedy_kmeanspp(key: jax.Array, xs: jax.Array, w: jax.Array, k: int, n_trials: int,
                     trace: bool = False):
    """Greedy k-means++ seeding. xs [S, D] unit rows, w [S] 0/1 weights -> centres [k, D]
    (and, with ``trace``, the potential [k] left after each centre).

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
    pots = jnp.zeros((k,), jnp.float32).at[0].set(jnp.sum(closest * w))

    def body(i, carry):
        centres, closest, pots = carry
        cand = draw(jax.random.fold_in(key_loop, i), closest, (n_trials,))
        d_cand = jnp.maximum(1.0 - xs @ xs[cand].T, 0.0)                  # [S, L]
        new_closest = jnp.minimum(closest[:, None], d_cand)
        pot = jnp.sum(new_closest * w[:, None], axis=0)                      # [L]
        best = jnp.argmin(pot)
        return centres.at[i].set(xs[cand[best]]), new_closest[:, best], pots.at[i].set(pot[best])

    centres, _, pots = jax.lax.fori_loop(1, k, body, (centres, closest, pots))
    return (centres, pots) if trace else centres


def _lloyd_sample(xs: jax.Array, w: jax.Array, c: jax.Array, cmask: jax.Array, iters: int,
                  tol) -> tuple[jax.Array, jax.Array]:
    """Lloyd steps on unit sample rows xs [S, D] with weights w [S]; c [K, D] unit.

    Stops when the summed squared shift of the centres is <= tol or after ``iters`` steps.
    """
    k = c.shape[0]

    def cond(state):
        _, shift, i = state
        return (i < iters) & (shift > tol)

    def body(state):
        c, _, i = state
        labels, best = assign(xs, c, cmask)
        sums, counts = cluster_sums(xs, w, labels, k)
        c_new = jnp.where((counts > 0)[:, None], normalize_rows(sums), c)
        dist = jnp.where(w > 0, 1.0 - best, -jnp.inf)
        c_new = _reseed_empty(c_new, counts, cmask, xs, dist)
        c_new = jnp.where(cmask[:, None], c_new, 0.0)
        shift = jnp.sum((c_new - c) ** 2)
        return c_new, shift, i + 1

    c, _, n = jax.lax.while_loop(cond, body, (c, jnp.asarray(jnp.inf, jnp.float32), jnp.asarray(0, jnp.int32)))
    return c, n


def fit_sample(key: jax.Array, xs: jax.Array, ws: jax.Array, cmask: jax.Array, *, seed_rows: int,
                iters: int, tol, n_trials: int, n_init: int) -> tuple[jax.Array, jax.Array]:
    """``n_init`` x (greedy k-means++ on xs[:seed_rows], then Lloyd on all of xs); the one
    with the lowest sample potential wins. xs [S, D] unit, ws [S], cmask [K] -> c [K, D], n_iter."""
    k = cmask.shape[0]
    seed_rows = min(seed_rows, xs.shape[0])

    def one_init(key):
        c = _greedy_kmeanspp(key, xs[:seed_rows], ws[:seed_rows], k, n_trials)
        c = jnp.where(cmask[:, None], c, 0.0)
        c, n_iter = _lloyd_sample(xs, ws, c, cmask, iters, tol)
        _, best = assign(xs, c, cmask)
        return c, n_iter, jnp.sum(ws * (1.0 - best))

    if n_init == 1:                        # the key vmap would give the one start (same result)
        c, n_iter, _ = one_init(jax.random.split(key, 1)[0])
        return c, n_iter
    cs, n_iters, pots = jax.vmap(one_init)(jax.random.split(key, n_init))
    pick = jnp.argmin(pots)
    return cs[pick], n_iters[pick]


def _greedy_gram(key: jax.Array, gram: jax.Array, w: jax.Array, k: int, n_trials: int) -> tuple[jax.Array, jax.Array]:
    """Greedy k-means++ (as :func:`_greedy_kmeanspp`) on S sample rows given by their Gram
    matrix gram [S, S] (cosines of unit rows) and 0/1 weights w [S]: a candidate's distances
    are a column of the Gram matrix, and candidates are drawn by inverse CDF (a few
    uniforms per step). Returns the seed rows [k] and the potential left after the last."""
    s = gram.shape[0]
    w_cdf = jnp.cumsum(w)

    def pick(cdf, u):
        return jnp.clip(jnp.sum(cdf[None, :] <= (u * cdf[-1])[:, None], axis=-1), 0, s - 1).astype(jnp.int32)

    def draw(key, closest):
        cdf = jnp.cumsum(closest * w)
        u = jax.random.uniform(key, (n_trials,))
        return jnp.where(cdf[-1] > 0, pick(cdf, u), pick(w_cdf, u))      # nothing left: uniform on rows

    key0, key_loop = jax.random.split(key)
    first = pick(w_cdf, jax.random.uniform(key0, (1,)))[0]
    closest = jnp.maximum(1.0 - gram[:, first], 0.0)

    def body(i, carry):
        seeds, closest = carry
        cand = draw(jax.random.fold_in(key_loop, i), closest)
        new_closest = jnp.minimum(closest[:, None], jnp.maximum(1.0 - gram[:, cand], 0.0))   # [S, L]
        best = jnp.argmin(jnp.sum(new_closest * w[:, None], axis=0))
        return seeds.at[i].set(cand[best]), new_closest[:, best]

    seeds, closest = jax.lax.fori_loop(1, k, body, (jnp.zeros((k,), jnp.int32).at[0].set(first), closest))
    return seeds, jnp.sum(closest * w)


def _lloyd_gram(gram: jax.Array, w: jax.Array, seeds: jax.Array, cmask: jax.Array,
                steps: int) -> tuple[jax.Array, jax.Array]:
    """``steps`` Lloyd steps on S sample rows in Gram space: a centre is a weight column over
    the rows (one-hot on its seed row, then the rows of its cluster), so one [S, S] x [S, K]
    GEMM gives every row's dot with every centre and, on the centre's own rows, its squared
    norm. An empty enabled cluster moves to the row farthest from its centre (as
    :func:`_reseed_empty`). Returns the weights [S, K] and the sample potential they leave."""
    s, k = gram.shape[0], seeds.shape[0]
    rows = jnp.arange(s)[:, None]
    wc = jnp.where(cmask[None, :], (rows == seeds[None, :]).astype(gram.dtype), 0.0)

    def scores_of(wc):
        p = gram @ wc
        norm2 = jnp.sum(wc * p, axis=0)
        return jnp.where(cmask[None, :] & (norm2 > 0)[None, :], p * jax.lax.rsqrt(jnp.maximum(norm2, 1e-30))[None, :],
                         -jnp.inf)

    def step(_, wc):
        sc = scores_of(wc)
        labels, best = jnp.argmax(sc, axis=-1), jnp.max(sc, axis=-1)
        onehot = (labels[:, None] == jnp.arange(k)[None, :]) & (w > 0)[:, None]
        counts = jnp.sum(onehot, axis=0)
        new = jnp.where((counts > 0)[None, :], onehot.astype(gram.dtype), wc)
        empty = (counts == 0) & cmask
        rank = jnp.cumsum(empty.astype(jnp.int32)) - 1
        n_far = min(k, s)
        far_d, far_idx = jax.lax.top_k(jnp.where(w > 0, 1.0 - best, -jnp.inf), n_far)
        slot = jnp.clip(rank, 0, n_far - 1)
        usable = empty & (rank < n_far) & (far_d[slot] > 0)
        new = jnp.where(usable[None, :], (rows == far_idx[slot][None, :]).astype(gram.dtype), new)
        return jnp.where(cmask[None, :], new, 0.0)

    wc = jax.lax.fori_loop(0, steps, step, wc)
    return wc, jnp.sum(w * (1.0 - jnp.max(scores_of(wc), axis=-1)))


def fit_sample_multistart(key: jax.Array, xs: jax.Array, ws: jax.Array, cmask: jax.Array, *, starts: int,
                          steps: int, n_trials: int) -> jax.Array:
    """``starts`` greedy k-means++ seedings, each followed by ``steps`` Lloyd steps, all on
    the unit sample rows xs [S, D] through their Gram matrix (one [S, S] GEMM; every start's
    seeding and steps then cost O(S) and O(S^2 K) instead of O(S D) and O(S D K)); the start
    with the lowest sample potential wins. Returns its unit centres c [K, D]."""
    k = cmask.shape[0]
    gram = jnp.einsum("sd,td->st", xs, xs, preferred_element_type=jnp.float32)
    seeds, _ = jax.vmap(lambda kk: _greedy_gram(kk, gram, ws, k, n_trials))(jax.random.split(key, starts))
    wcs, pots = jax.vmap(lambda sd: _lloyd_gram(gram, ws, sd, cmask, steps))(seeds)
    wc = wcs[jnp.argmin(pots)]
    return jnp.where(cmask[:, None], normalize_rows(jnp.einsum("sk,sd->kd", wc, xs)), 0.0)


def default_starts(k: int) -> int:
    """Seedings of the default (``n_init=None``) flat path: 16 up to k = 32, then 512 // k
    (8 at k = 64), so the Gram-space Lloyd steps stay one [S, S] x [S, 512] GEMM."""
    return max(1, min(MULTI_STARTS, 512 // k))


def default_gram_rows(k: int) -> int:
    """Sample rows of the default (``n_init=None``) flat path: 16 per centre, at least 512."""
    return max(512, 16 * k)


def greedy_trials(k: int, n_local_trials: int | None) -> int:
    return 2 + int(math.log(k)) if n_local_trials is None else int(n_local_trials)


# ----------------------------------------------------------------------------- passes over all rows


def _scan_blocks(fn, n: int, block_rows: int | None, arrays: tuple, init):
    """Apply ``fn(carry, fresh, *block_slices) -> (carry, per_row_out)`` over row blocks of
    the [N, ...] arrays; returns the final carry and the per-row outputs [N, ...].

    Every block has the same size (one compiled body): the last one starts at N - size and
    overlaps its predecessor; ``fresh [size]`` is False on the rows an earlier block already
    covered (fn must leave them out of the carry; their per-row outputs are dropped).
    """
    if block_rows is None or n <= block_rows:
        return fn(init, jnp.ones((n,), bool), *arrays)
    size = block_rows
    nb = -(-n // size)
    ar = jnp.arange(size)

    def body(carry, i):
        start = jnp.minimum(i * size, n - size)
        sl = tuple(jax.lax.dynamic_slice_in_dim(a, start, size) for a in arrays)
        return fn(carry, start + ar >= i * size, *sl)

    carry, outs = jax.lax.scan(body, init, jnp.arange(nb))
    skip = nb * size - n                                   # rows of the last block seen before
    outs = jax.tree.map(lambda o: jnp.concatenate([o[:-1].reshape((-1,) + o.shape[2:]), o[-1, skip:]]), outs)
    return carry, outs


def scatter_sums(xb: jax.Array, inv: jax.Array, scale: jax.Array, labels: jax.Array, use: jax.Array,
                 k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-cluster sums of one row block by scatter-add (one add per row element): xb [B, D]
    f32, inv [B] (1/|x|), scale [] f32, labels [B] int32 (may lie outside [0, k) where
    ``use`` is False), use [B] bool (rows to count) -> unit sums [k, D] (of xb * inv), scaled
    raw sums [k, D] (of xb * scale), counts [k] int32."""
    seg = jnp.where(use, labels, k)                                       # k: a dropped bucket
    add = lambda v: jax.ops.segment_sum(v, seg, k + 1)[:k]
    return add(xb * inv[:, None]), add(xb * scale), add(jnp.ones_like(seg))


def onehot_sums(xb: jax.Array, inv: jax.Array, scale: jax.Array, labels: jax.Array, use: jax.Array,
                k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`scatter_sums` as one-hot GEMMs (:func:`cluster_sums`)."""
    unit, _ = cluster_sums(xb, jnp.where(use, inv, 0.0), labels, k)
    raw, counts = cluster_sums(xb, jnp.where(use, scale, 0.0), labels, k)       # scale > 0: counts = used rows
    return unit, raw, counts


FULL_PASS_TILE_ROWS = 512
"""On CPU, row blocks of the flat assignment pass are at most this long: a 512 x 896 f32 block
stays in cache between its assignment GEMM and its scatter-add sums (T = 64, K = 32, 2 cores:
0.041 s per pass, against 0.083 s for 4,096-row blocks summed by one-hot GEMM)."""


def _by_platform(run, block_rows: int | None, *arrays):
    """``run(sums_fn, size, *arrays)`` with the pass form measured for each platform: on CPU
    row blocks of at most min(block_rows, FULL_PASS_TILE_ROWS) summed by :func:`scatter_sums`
    (N x D adds); elsewhere ``block_rows`` rows summed by :func:`onehot_sums` (GEMMs, the
    matrix units' shape, no scatter atomics)."""
    tile = None if block_rows is None else min(block_rows, FULL_PASS_TILE_ROWS)
    return jax.lax.platform_dependent(*arrays, cpu=functools.partial(run, scatter_sums, tile),
                                      default=functools.partial(run, onehot_sums, block_rows))


def _full_pass(x: jax.Array, rows: RowStats, c: jax.Array, cmask: jax.Array, block_rows: int | None):
    """Assign all rows to unit centres c [K, D] and sum them per cluster, in row blocks (no
    [N, D] temporary).

    The block size and the sums follow the platform (:func:`_by_platform`).

    Returns labels [N] int32, unit sums [K, D] f32 (of x/|x|), raw sums [K, D] f32 (of
    ``scale * x``: divide by ``rows.scale`` for the raw sums; they cannot overflow), counts [K].
    """
    k = c.shape[0]
    d = x.shape[1]
    cs = c * rows.scale                                   # scores x·c·scale are <= sqrt(D)

    def run(sums_fn, size, x, valid, finite, inv):
        def block(carry, fresh, xb, vb, fb, ib):
            xb = jnp.where(fb[:, None], xb.astype(jnp.float32), 0.0)       # non-finite rows -> 0
            labels, _ = assign(xb, cs, cmask)
            us, rs, cnt = carry
            bus, brs, bcnt = sums_fn(xb, ib, rows.scale, labels, vb & fresh, k)
            return (us + bus, rs + brs, cnt + bcnt), labels

        init = (jnp.zeros((k, d), jnp.float32), jnp.zeros((k, d), jnp.float32), jnp.zeros((k,), jnp.int32))
        (us, rs, cnt), labels = _scan_blocks(block, x.shape[0], size, (x, valid, finite, inv), init)
        return labels, us, rs, cnt

    return _by_platform(run, block_rows, x, rows.valid, rows.finite, rows.inv_norm)


def _fast_pass(x: jax.Array, mask: jax.Array, c: jax.Array, cmask: jax.Array, block_rows: int | None):
    """:func:`_full_pass` that takes the row statistics itself, tile by tile (no separate read
    of all rows): each tile's sums of squares give its rows' validity and inverse norms by the
    fast rule of :func:`row_stats`; raw sums are accumulated unscaled (rows that pass the rule
    have |element| <= 2^50, so they cannot overflow) and scaled once at the end by the power
    of two :func:`row_stats` would have chosen.

    Returns (labels [N] (-1 off the valid rows), unit sums, scaled raw sums, counts, the
    scale, and the number of unmasked rows that failed the rule). When that number is 0 the
    result equals :func:`_full_pass` after :func:`row_stats` (up to the rounding of row sums
    of squares taken per tile, and products its scale would have made subnormal); otherwise
    it must be discarded.
    """
    k = c.shape[0]
    d = x.shape[1]
    one = jnp.float32(1.0)

    def run(sums_fn, size, x, mask):
        def block(carry, fresh, xb, mb):
            xb = xb.astype(jnp.float32)
            sq = jnp.sum(jnp.square(xb), axis=-1)
            ok = _fast_ok(sq)
            vb = mb & ok
            if sums_fn is onehot_sums:          # a non-finite row times weight 0 is NaN in a GEMM; the
                xb = jnp.where(ok[:, None], xb, 0.0)    # scatter drops unused rows into a discarded bucket
            labels, _ = assign(xb, c, cmask)
            us, rs, cnt, top, bad = carry
            bus, brs, bcnt = sums_fn(xb, _fast_inv(sq, ok), one, labels, vb & fresh, k)
            top = jnp.maximum(top, _fast_top(sq, vb))
            bad = bad + jnp.sum(mb & ~ok & fresh, dtype=jnp.int32)
            return (us + bus, rs + brs, cnt + bcnt, top, bad), jnp.where(vb, labels, -1)

        init = (jnp.zeros((k, d), jnp.float32), jnp.zeros((k, d), jnp.float32), jnp.zeros((k,), jnp.int32),
                jnp.asarray(-_MAX_EXP, jnp.int32), jnp.asarray(0, jnp.int32))
        (us, rs, cnt, top, bad), labels = _scan_blocks(block, x.shape[0], size, (x, mask), init)
        return labels, us, rs, cnt, top, bad

    labels, us, rs, cnt, top, bad = _by_platform(run, block_rows, x, mask)
    scale = _pow2(-jnp.where(jnp.any(mask), top, 0))
    return labels, us, rs * scale, cnt, scale, bad


def _coarse_pass(x: jax.Array, rows: RowStats, c: jax.Array, block_rows: int | None):
    """The two nearest coarse centres of every row: x [N, D], c [G, D] unit (G >= 2) ->
    first [N], second [N] int32 (G for invalid rows)."""
    g = c.shape[0]
    cs = c * rows.scale

    def block(carry, fresh, xb, vb):
        del fresh                                          # no carry
        # a non-finite row spoils only its own scores, and invalid rows get group G: no cleaned copy of x
        scores = jnp.einsum("nd,kd->nk", xb.astype(jnp.float32), cs, preferred_element_type=jnp.float32)
        top1 = jnp.argmax(scores, axis=-1).astype(jnp.int32)   # two argmaxes (top_k lowers to a full sort on CPU)
        top2 = jnp.argmax(jnp.where(jnp.arange(g)[None, :] == top1[:, None], -jnp.inf, scores), axis=-1)
        return carry, (jnp.where(vb, top1, g), jnp.where(vb, top2.astype(jnp.int32), g))

    _, out = _scan_blocks(block, x.shape[0], block_rows, (x, rows.valid), 0)
    return out


class _Groups(NamedTuple):
    """Entries sorted by group: perm [E] (entry indices, valid ones first, random order
    inside a group), start [G], size [G] (entries per group)."""

    perm: jax.Array
    start: jax.Array
    size: jax.Array


def _sort_groups(key: jax.Array, groups: jax.Array, n_groups: int) -> _Groups:
    """groups [E] in [0, G] (G = invalid) -> entries sorted by group, shuffled inside each."""
    e = groups.shape[0]
    tie = jax.random.permutation(key, e)
    perm = jnp.lexsort((tie, groups))
    size = jnp.zeros((n_groups + 1,), jnp.int32).at[groups].add(1)[:n_groups]
    start = jnp.cumsum(size) - size
    return _Groups(perm.astype(jnp.int32), start.astype(jnp.int32), size)


def _group_rows(grp: _Groups, m: int) -> tuple[jax.Array, jax.Array]:
    """The first min(size, m) entries of each group: indices [G, m] and 0/1 weights [G, m]."""
    j = jnp.arange(m)
    ok = j[None, :] < grp.size[:, None]
    pos = jnp.clip(grp.start[:, None] + j[None, :], 0, grp.perm.shape[0] - 1)
    return grp.perm[pos], ok


def _tile_table(grp: _Groups, tile: int, limit: int | None = None):
    """Static-length list of entry tiles, each inside one group (the first ``min(size,
    limit)`` entries of each group; all with limit None): group [T], first sorted position
    [T], entries used [T] (0 for padding tiles at the end), and the first tile of every
    group [G]. T = ceil(min(E, G * limit) / tile) + G."""
    g = grp.size.shape[0]
    size = grp.size if limit is None else jnp.minimum(grp.size, limit)
    n_tiles = -(-min(grp.perm.shape[0], g * (limit or grp.perm.shape[0])) // tile) + g
    per = (size + tile - 1) // tile
    end = jnp.cumsum(per)
    t = jnp.arange(n_tiles)
    gi = jnp.clip(jnp.searchsorted(end, t, side="right"), 0, g - 1)
    j = t - (end[gi] - per[gi])
    used = jnp.where(t < end[-1], jnp.clip(size[gi] - j * tile, 0, tile), 0)
    return (gi.astype(jnp.int32), (grp.start[gi] + j * tile).astype(jnp.int32), used.astype(jnp.int32),
            (end - per).astype(jnp.int32))


def _greedy_grouped(key: jax.Array, xt: jax.Array, t_group: jax.Array, t_used: jax.Array, g_first: jax.Array,
                    g_rows: jax.Array, k: int, n_trials: int, max_tiles: int) -> tuple[jax.Array, jax.Array]:
    """Greedy k-means++ (as :func:`_greedy_kmeanspp`) in G groups at once, on rows laid out
    in tiles of one group each, with no padding to the largest group.

    xt [T, R, D] unit rows (zero where unused; any float dtype: distances are summed in
    float32), t_group [T] and t_used [T] from :func:`_tile_table`, g_first [G] the first tile
    and g_rows [G] the rows of each group (row i of a group is row i % R of tile
    g_first + i // R; at most ``max_tiles`` tiles). Returns the centres as rows of
    ``xt.reshape(-1, D)`` [G, k] and the group's potential after each centre [G, k]. Each
    step is one pass over the tiles (a GEMM of each tile with its group's ``n_trials``
    candidates); candidates are drawn per group by inverse CDF (tile totals, then the rows
    of the tile).
    """
    nt, r, d = xt.shape
    g = g_first.shape[0]
    flat = xt.reshape(nt * r, d)
    ar = jnp.arange(r)
    wt = (ar[None, :] < t_used[:, None]).astype(jnp.float32)                      # [T, R]
    n_tiles = -(-g_rows // r)
    jt = jnp.arange(max_tiles)
    grid = jnp.where(jt[None, :] < n_tiles[:, None], g_first[:, None] + jt[None, :], nt)   # [G, J]; nt = none
    gsum = lambda v: jax.ops.segment_sum(v, t_group, g)

    def draw(u, closest):
        """u [G, L] uniforms -> flat row indices [G, L], drawn with probability ~ closest."""
        tcum = jnp.cumsum(closest * wt, axis=1)                                    # [T, R]
        gt = jnp.concatenate([tcum[:, -1], jnp.zeros((1,), jnp.float32)])[grid]    # [G, J] tile totals
        gcum = jnp.cumsum(gt, axis=1)
        target = u * gcum[:, -1:]
        j = jnp.clip(jnp.sum(gcum[:, None, :] <= target[..., None], axis=-1), 0, jnp.maximum(n_tiles - 1, 0)[:, None])
        tile = jnp.clip(jnp.take_along_axis(grid, j, axis=1), 0, nt - 1)         # [G, L]
        rem = target - (jnp.take_along_axis(gcum, j, axis=1) - jnp.take_along_axis(gt, j, axis=1))
        pos = jnp.sum(tcum[tile] <= rem[..., None], axis=-1)
        pos = jnp.clip(pos, 0, jnp.maximum(t_used[tile] - 1, 0))
        uniform = jnp.minimum(jnp.floor(u * g_rows[:, None]).astype(jnp.int32), jnp.maximum(g_rows - 1, 0)[:, None])
        at = jnp.where(gcum[:, -1:] > 0, j * r + pos, uniform)                     # nothing left: uniform
        tile = jnp.clip(jnp.take_along_axis(grid, at // r, axis=1), 0, nt - 1)
        return tile * r + at % r

    def dist(c):                                                                   # c [G, L, D] -> [T, R, L]
        return jnp.maximum(1.0 - jnp.einsum("trd,tld->trl", xt, c[t_group], preferred_element_type=jnp.float32), 0.0)

    key0, key_loop = jax.random.split(key)
    i0 = draw(jax.random.uniform(key0, (g, 1)), jnp.ones((nt, r), jnp.float32))               # [G, 1]
    closest = dist(flat[i0])[..., 0]
    centres = jnp.zeros((g, k), jnp.int32).at[:, 0].set(i0[:, 0])
    pots = jnp.zeros((g, k), jnp.float32).at[:, 0].set(gsum(jnp.sum(closest * wt, axis=1)))
    rows_g = jnp.arange(g)

    def body(i, carry):
        centres, closest, pots = carry
        cand = draw(jax.random.uniform(jax.random.fold_in(key_loop, i), (g, n_trials)), closest)
        new = jnp.minimum(closest[..., None], dist(flat[cand]))                    # [T, R, L]
        pot = gsum(jnp.sum(new * wt[..., None], axis=1))                           # [G, L]
        best = jnp.argmin(pot, axis=1)
        closest = jnp.take_along_axis(new, best[t_group][:, None, None], axis=2)[..., 0]
        return centres.at[:, i].set(cand[rows_g, best]), closest, pots.at[:, i].set(pot[rows_g, best])

    centres, _, pots = jax.lax.fori_loop(1, k, body, (centres, closest, pots))
    return centres, pots


class _Probe(NamedTuple):
    """Rows of a two-level pass, each probed in its two nearest groups.

    rows [M] indices into x (None = all rows in order), first [M] its nearest group
    (G when invalid), entries: the 2M (row, group) pairs sorted by group (entry e < M is
    row e in its nearest group, e >= M row e - M in its second)."""

    rows: jax.Array | None
    first: jax.Array
    entries: _Groups


def _make_probe(key, rows, first, second, n_groups) -> _Probe:
    return _Probe(rows, first, _sort_groups(key, jnp.concatenate([first, second]), n_groups))


def _probe_pass(x: jax.Array, stats: RowStats, probe: _Probe, f: jax.Array, fmask: jax.Array,
                block_rows: int | None):
    """One Lloyd pass where a row sees the fine centres of its two nearest groups only.

    f [G, C, D] unit fine centres, fmask [G, C]. Each (row, group) entry is scored in tiles
    of one group (one small GEMM each), the better of a row's two entries wins, and the
    rows are summed per winning slot by scatter-add (no [K]-wide GEMM). Returns slot ids
    [M] (g * C + s; -1 for invalid rows), unit sums [G*C, D], scaled raw sums [G*C, D] and
    counts [G*C].
    """
    g, cap, d = f.shape
    m = probe.first.shape[0]
    ent = probe.entries
    row_of = (lambda e: e) if probe.rows is None else (lambda e: probe.rows[e])
    t_group, t_start, t_used, _ = _tile_table(ent, _TILE_ROWS)
    fs = f * stats.scale
    ar = jnp.arange(_TILE_ROWS)

    def tile(_, tab):
        gi, s0, used = tab
        ok = ar < used
        e = ent.perm[jnp.clip(s0 + ar, 0, 2 * m - 1)]
        r = row_of(e % m)
        xb = jnp.where(ok[:, None], x[r].astype(jnp.float32), 0.0)
        slot, best = assign(xb, fs[gi], fmask[gi])
        cos = best / stats.scale * stats.inv_norm[r]
        return None, (jnp.where(ok, e, 2 * m), gi * cap + slot, jnp.where(ok, cos, -jnp.inf))

    _, (dest, slot, cos) = jax.lax.scan(tile, None, (t_group, t_start, t_used))
    dest = dest.reshape(-1)
    e_slot = jnp.full((2 * m,), -1, jnp.int32).at[dest].set(slot.reshape(-1), mode="drop").reshape(2, m)
    e_cos = jnp.full((2 * m,), -jnp.inf, jnp.float32).at[dest].set(cos.reshape(-1), mode="drop").reshape(2, m)
    labels = jnp.where(e_cos[1] > e_cos[0], e_slot[1], e_slot[0])
    labels = jnp.where(probe.first < g, labels, -1)

    n_slots = g * cap
    inv = stats.inv_norm if probe.rows is None else stats.inv_norm[probe.rows]
    finite = stats.finite if probe.rows is None else stats.finite[probe.rows]

    def block(carry, fresh, rb, lb, ib, fb):
        xb = x[rb] if probe.rows is not None else rb
        xb = jnp.where(fb[:, None], xb.astype(jnp.float32), 0.0)
        us, rs, cnt = carry
        bus, brs, bcnt = scatter_sums(xb, ib, stats.scale, lb, fresh & (lb >= 0), n_slots)
        return (us + bus, rs + brs, cnt + bcnt), None

    init = (jnp.zeros((n_slots, d), jnp.float32), jnp.zeros((n_slots, d), jnp.float32),
            jnp.zeros((n_slots,), jnp.int32))
    src = x if probe.rows is None else probe.rows
    (us, rs, cnt), _ = _scan_blocks(block, m, block_rows, (src, labels, inv, finite), init)
    return labels, us, rs, cnt


def _two_level(x: jax.Array, stats: RowStats, k: int, n_groups: int, *, key: jax.Array, iters: int, tol,
               refine_iters: int, sample_size: int, seed_sample_size: int, n_trials: int | None,
               n_init: int, block_rows: int | None) -> KMeansResult:
    """Two-level spherical k-means (see the module docstring) -> KMeansResult with k slots."""
    n, d = x.shape
    g = n_groups
    k_coarse, k_sort, k_fine, k_rows = jax.random.split(key, 4)

    # Coarse centres on a sample, then every row's two nearest groups.
    k_samp, k_seed = jax.random.split(k_coarse)
    xs, ws = unit_rows(x, stats, sample_indices(k_samp, stats.valid, min(n, max(2048, 64 * g))))
    coarse, _ = fit_sample(k_seed, xs, ws, jnp.ones((g,), bool), seed_rows=max(1024, 16 * g), iters=iters,
                           tol=tol, n_trials=greedy_trials(g, n_trials), n_init=n_init)
    first, second = _coarse_pass(x, stats, coarse, block_rows)

    # Up to C fine seeds per group by greedy k-means++ on the group's own rows (sampled),
    # then the k seeds whose potential gains are largest over all groups: the allocation a
    # global greedy seeding would make, found in parallel (gains made non-increasing within a
    # group, so every group keeps a prefix of its seeds; each non-empty group keeps >= 1).
    own = _sort_groups(k_sort, first, g)
    cap = min(k, 2 * -(-k // g) + 1)
    m_seed = max(2 * cap, -(-seed_sample_size // g))
    t_group, t_start, t_used, g_first = _tile_table(own, _SEED_TILE_ROWS, m_seed)
    rows_t = own.perm[jnp.clip(t_start[:, None] + jnp.arange(_SEED_TILE_ROWS)[None, :], 0, n - 1)]
    ok_t = jnp.arange(_SEED_TILE_ROWS)[None, :] < t_used[:, None]
    # seeding distances in bfloat16 (float32 sums): a step reads half the bytes, and a seed
    # is only a starting row for Lloyd (taken in float32 below)
    xt = jnp.where(ok_t[..., None], x[rows_t].astype(jnp.float32) * stats.inv_norm[rows_t][..., None], 0.0)
    seed_at, pots = _greedy_grouped(k_fine, xt.astype(jnp.bfloat16), t_group, t_used, g_first,
                                    jnp.minimum(own.size, m_seed), cap, greedy_trials(cap, n_trials),
                                    -(-min(n, m_seed) // _SEED_TILE_ROWS))
    at = rows_t.reshape(-1)[seed_at]                                              # [G, C] rows of x
    seeds = x[at].astype(jnp.float32) * stats.inv_norm[at][..., None]
    # rows an empty slot can move to: the first 2C rows of its group (a random sample of it)
    idx, ok = _group_rows(own, min(n, 2 * cap))                                  # [G, m]
    xg = jnp.where(ok[..., None], x[idx].astype(jnp.float32) * stats.inv_norm[idx][..., None], 0.0)
    per_row = own.size / jnp.maximum(jnp.minimum(own.size, m_seed), 1)        # sample -> group scale
    gains = jnp.concatenate([jnp.full((g, 1), jnp.inf), (pots[:, :-1] - pots[:, 1:]) * per_row[:, None]], axis=1)
    gains = jax.lax.cummin(gains, axis=1)
    gains = jnp.where((own.size[:, None] > 0) & (jnp.arange(cap)[None, :] < own.size[:, None]), gains, -jnp.inf)
    order = jnp.argsort(-gains.reshape(-1), stable=True)
    fmask = (jnp.zeros((g * cap,), bool).at[order[:k]].set(True) & (gains.reshape(-1) > -jnp.inf)).reshape(g, cap)
    kg = jnp.sum(fmask, axis=1).astype(jnp.int32)
    f = jnp.where(fmask[..., None], seeds, 0.0)

    def update(f, sums):
        us, cnt = sums
        us, cnt = us.reshape(g, cap, d), cnt.reshape(g, cap)
        new = jnp.where((cnt > 0)[..., None], normalize_rows(us), f)

        def reseed(new):              # an empty slot moves to the row of its group farthest from its centre
            _, best = jax.vmap(assign)(xg, new, fmask)
            dist = jnp.where(ok, 1.0 - best, -jnp.inf)
            return jax.vmap(_reseed_empty)(new, cnt, fmask, xg, dist)

        new = jax.lax.cond(jnp.any((cnt == 0) & fmask), reseed, lambda v: v, new)
        return jnp.where(fmask[..., None], new, 0.0)

    # Lloyd on a row sample (all rows when N <= sample_size), then passes over all rows.
    everything = _make_probe(k_rows, None, first, second, g)
    if sample_size >= n:
        fit = everything
    else:
        rows = sample_indices(k_rows, stats.valid, sample_size)
        fit = _make_probe(k_rows, rows, jnp.where(stats.valid[rows], first[rows], g),
                          jnp.where(stats.valid[rows], second[rows], g), g)

    # Stops when the centres move less than tol, or when the sample inertia fell by no more
    # than the fraction tol in a step: re-seeded empty slots can keep a few centres moving
    # long after the inertia has settled.
    def cond(state):
        _, shift, i, _, gain = state
        return (i < iters) & (shift > tol) & (gain > tol)

    def body(state):
        f, _, i, prev, _ = state
        _, us, _, cnt = _probe_pass(x, stats, fit, f, fmask, block_rows)
        pot = jnp.sum(cnt).astype(jnp.float32) - jnp.sum(jnp.linalg.norm(us, axis=-1))   # inertia of f
        new = update(f, (us, cnt))
        shift = jnp.max(jnp.sum((new - f) ** 2, axis=(1, 2)))
        gain = jnp.where(jnp.isfinite(prev), (prev - pot) / jnp.maximum(prev, 1e-30), jnp.inf)
        return new, shift, i + 1, pot, gain

    inf = jnp.asarray(jnp.inf, jnp.float32)
    f, _, n_iter, _, _ = jax.lax.while_loop(cond, body, (f, inf, jnp.asarray(0, jnp.int32), inf, inf))

    def step(_, carry):
        f, _ = carry
        out = _probe_pass(x, stats, everything, f, fmask, block_rows)
        return update(f, (out[1], out[3])), out

    empty = jax.eval_shape(lambda: _probe_pass(x, stats, everything, f, fmask, block_rows))
    out0 = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), empty)
    _, (slot, us, rs, cnt) = jax.lax.fori_loop(0, refine_iters, step, (f, out0))

    # Slot g * C + s -> cluster id offset[g] + s.
    offset = jnp.cumsum(kg) - kg
    gid = jnp.where(fmask, offset[:, None] + jnp.arange(cap)[None, :], k).reshape(-1)   # k = dropped
    put = lambda v: jnp.zeros((k,) + v.shape[1:], v.dtype).at[gid].set(v, mode="drop")
    labels = jnp.where(slot >= 0, gid[jnp.maximum(slot, 0)], -1).astype(jnp.int32)
    return _result(put(us), put(rs), put(cnt), labels, stats.scale, n_iter)


def _result(us, rs, counts, labels, scale: jax.Array, n_iter) -> KMeansResult:
    """The result from a last pass's sums (raw sums of ``scale * x``) and labels."""
    denom = jnp.maximum(counts, 1)[:, None].astype(jnp.float32)
    raw_means = (rs / denom) / scale
    unit_means = us / denom
    centroids = normalize_rows(us)
    inertia = jnp.sum(counts).astype(jnp.float32) - jnp.sum(jnp.linalg.norm(us, axis=-1))
    return KMeansResult(centroids, labels, counts, jnp.maximum(inertia, 0.0), n_iter, raw_means, unit_means)


# ----------------------------------------------------------------------------- the traced core


def _flat_fit(draw, key: jax.Array, n: int, cmask: jax.Array, *, iters: int, tol, sample_size, seed_sample_size,
              n_local_trials, n_init):
    """Steps 2-4 of the flat path: centres c [K, D] from samples ``draw(key, size) -> (unit
    rows [S, D], 0/1 weights [S])`` of the N rows; returns c and the sample Lloyd steps."""
    k = cmask.shape[0]
    k_sample, k_seed = jax.random.split(key)
    if n_init is None and k <= MULTI_START_MAX_K:
        # many seedings + Lloyd steps in Gram space on a small sample; the winner then runs
        # Lloyd on all rows when they fit the default sample, or on an explicit sample_size
        xs, ws = draw(k_sample, min(n, default_gram_rows(k) if seed_sample_size is None else seed_sample_size))
        steps = min(iters, MULTI_START_STEPS)
        c = fit_sample_multistart(k_seed, xs, ws, cmask, starts=default_starts(k), steps=steps,
                                  n_trials=greedy_trials(k, n_local_trials))
        n_iter = jnp.asarray(steps, jnp.int32)
        if sample_size is not None or n <= default_sample_size(k):
            size = min(n, default_sample_size(k) if sample_size is None else sample_size)
            xs, ws = draw(jax.random.fold_in(k_sample, 1), size)
            c, more = _lloyd_sample(xs, ws, c, cmask, iters, tol)
            n_iter = n_iter + more
        return c, n_iter
    n_init = 2 if n_init is None else n_init
    size = min(n, default_sample_size(k) if sample_size is None else sample_size)
    seed = default_seed_sample_size(k) if seed_sample_size is None else seed_sample_size
    xs, ws = draw(k_sample, size)
    return fit_sample(k_seed, xs, ws, cmask, seed_rows=seed, iters=iters, tol=tol,
                      n_trials=greedy_trials(k, n_local_trials), n_init=n_init)


def _refine(pass_fn, c: jax.Array, steps: int):
    """``steps`` Lloyd steps over all rows from centres c [K, D]: ``pass_fn(c)`` returns
    (labels, unit sums, raw sums, counts, ...); a cluster left empty keeps its centre.
    Returns the last pass's outputs."""
    def step(_, carry):
        c, _ = carry
        out = pass_fn(c)
        return jnp.where((out[3] > 0)[:, None], normalize_rows(out[1]), c), out

    out0 = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(lambda: pass_fn(c)))
    return jax.lax.fori_loop(0, steps, step, (c, out0))[1]


def _flat_kmeans(x: jax.Array, key: jax.Array, tol, cmask: jax.Array, init: jax.Array | None,
                 stats: RowStats, opts: dict) -> tuple[KMeansResult, Finiteness]:
    """The flat path on rows whose statistics were taken first (:func:`row_stats`)."""
    if init is None:
        draw = lambda kk, size: unit_rows(x, stats, sample_indices(kk, stats.valid, size))
        c, n_iter = _flat_fit(draw, key, x.shape[0], cmask, **_fit_opts(opts), tol=tol)
    else:
        c = jnp.where(cmask[:, None], normalize_rows(init), 0.0)
        n_iter = jnp.asarray(0, jnp.int32)
    labels, us, rs, counts = _refine(lambda c: _full_pass(x, stats, c, cmask, opts["block_rows"]), c,
                                     opts["refine_iters"])
    labels = jnp.where(stats.valid, labels, -1)
    return _result(us, rs, counts, labels, stats.scale, n_iter), stats.check


def _fit_opts(opts: dict) -> dict:
    return {name: opts[name] for name in ("iters", "sample_size", "seed_sample_size", "n_local_trials", "n_init")}


def _flat_fast(x: jax.Array, mask: jax.Array, key: jax.Array, tol, cmask: jax.Array, opts: dict):
    """The flat path without a separate read of all rows: the sample's statistics from the
    drawn rows (:func:`sample_unit_rows`), the pass's from its own tiles (:func:`_fast_pass`).
    Returns the result and the number of unmasked rows that failed the fast rule (when > 0,
    the result must be discarded: :func:`_flat_kmeans` after :func:`row_stats` is the answer)."""
    draw = lambda kk, size: sample_unit_rows(kk, x, mask, size)
    c, n_iter = _flat_fit(draw, key, x.shape[0], cmask, **_fit_opts(opts), tol=tol)
    labels, us, rs, counts, scale, bad = _refine(lambda c: _fast_pass(x, mask, c, cmask, opts["block_rows"]), c,
                                                 opts["refine_iters"])
    return _result(us, rs, counts, labels, scale, n_iter), bad


def _optimistic_flat(opts: dict):
    """``f(x, mask, key, tol, cmask) -> (KMeansResult, Finiteness)``: the flat path, first
    without the separate read of all rows (:func:`_flat_fast`); when some unmasked row fails
    the fast rule of :func:`row_stats` (non-finite, zero, extreme), the whole path again after
    :func:`row_stats`. Under ``vmap`` the fallback is taken for the whole batch when any
    video needs it (a batched ``cond`` would run both paths for every batch)."""
    def fast(x, mask, key, tol, cmask):
        return _flat_fast(x, mask, key, tol, cmask, opts)

    def exact(x, mask, key, tol, cmask):
        return _flat_kmeans(x, key, tol, cmask, None, row_stats(x, mask), opts)

    @jax.custom_batching.custom_vmap
    def f(x, mask, key, tol, cmask):
        res, bad = fast(x, mask, key, tol, cmask)
        return jax.lax.cond(bad == 0, lambda: (res, _no_check()), lambda: exact(x, mask, key, tol, cmask))

    @f.def_vmap
    def f_batched(axis_size, in_batched, x, mask, key, tol, cmask):
        axes = tuple(0 if b else None for b in in_batched)
        res, bad = jax.vmap(fast, in_axes=axes)(x, mask, key, tol, cmask)
        checks = jax.vmap(lambda _: _no_check())(jnp.arange(axis_size))
        out = jax.lax.cond(jnp.all(bad == 0), lambda: (res, checks),
                           lambda: jax.vmap(exact, in_axes=axes)(x, mask, key, tol, cmask))
        return out, jax.tree.map(lambda _: True, out)

    return f


def kmeans_core(x: jax.Array, cmask: jax.Array, *, key: jax.Array, mask: jax.Array | None = None,
                iters: int = 50, tol=1e-4, refine_iters: int = 1, sample_size: int | None = None,
                seed_sample_size: int | None = None, n_local_trials: int | None = None, n_init: int | None = None,
                block_rows: int | None = 4096, coarse_groups: int | None = None,
                init: jax.Array | None = None, rows: RowStats | None = None) -> tuple[KMeansResult, Finiteness]:
    """:func:`kmeans` without eager checks, traceable: returns the result and the
    non-finite count (for the caller to raise on).

    ``cmask [K]`` disables slots (they take no rows; the adaptive path). ``init [K, D]``
    skips seeding and the sample steps (refines given centres on all rows). ``rows`` reuses
    a :func:`row_stats` already taken of x. Without ``rows`` and ``init``, the flat path
    takes no separate read of all rows when every unmasked row passes the fast rule of
    :func:`row_stats` (:func:`_optimistic_flat`).
    """
    n, _ = x.shape
    k = cmask.shape[0]
    groups = default_coarse_groups(k) if coarse_groups is None else min(int(coarse_groups), k)
    opts = dict(iters=iters, refine_iters=refine_iters, sample_size=sample_size, seed_sample_size=seed_sample_size,
                n_local_trials=n_local_trials, n_init=n_init, block_rows=block_rows)
    if init is None and groups > 1:
        stats = row_stats(x, mask) if rows is None else rows
        n_init = 2 if n_init is None else n_init
        size = default_sample_size(k) if sample_size is None else sample_size
        seed = default_seed_sample_size(k) if seed_sample_size is None else seed_sample_size
        res = _two_level(x, stats, k, groups, key=key, iters=iters, tol=tol, refine_iters=refine_iters,
                         sample_size=size, seed_sample_size=seed, n_trials=n_local_trials, n_init=n_init,
                         block_rows=block_rows)
        return res, stats.check
    if init is None and rows is None:
        m = jnp.ones((n,), bool) if mask is None else mask
        return _optimistic_flat(opts)(x, m, key, jnp.asarray(tol, jnp.float32), cmask)
    stats = row_stats(x, mask) if rows is None else rows
    return _flat_kmeans(x, key, tol, cmask, init, stats, opts)


_STATIC = ("k", "iters", "refine_iters", "sample_size", "seed_sample_size", "n_local_trials", "n_init",
           "block_rows", "coarse_groups")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _kmeans_compiled(x, mask, key, tol, *, k, iters, refine_iters, sample_size, seed_sample_size,
                     n_local_trials, n_init, block_rows, coarse_groups):
    return kmeans_core(x, jnp.ones((k,), bool), key=key, mask=mask, iters=iters, tol=tol,
                       refine_iters=refine_iters, sample_size=sample_size, seed_sample_size=seed_sample_size,
                       n_local_trials=n_local_trials, n_init=n_init, block_rows=block_rows,
                       coarse_groups=coarse_groups)


def check_kmeans_options(*, iters, tol, refine_iters, sample_size, seed_sample_size, n_init, block_rows,
                         n_local_trials=None, coarse_groups=None, n_init_none: bool = True) -> dict:
    """Validate the shared k-means keyword options (one ValueError/TypeError naming the option;
    ``n_init_none``: whether n_init=None, the multi-start default, is allowed)."""
    return dict(iters=check_int_option("iters", iters, 0), tol=check_float_option("tol", tol),
                refine_iters=check_int_option("refine_iters", refine_iters, 1),
                sample_size=check_int_option("sample_size", sample_size, 1, allow_none=True),
                seed_sample_size=check_int_option("seed_sample_size", seed_sample_size, 1, allow_none=True),
                n_init=check_int_option("n_init", n_init, 1, allow_none=n_init_none),
                block_rows=check_int_option("block_rows", block_rows, 1, allow_none=True),
                n_local_trials=check_int_option("n_local_trials", n_local_trials, 1, allow_none=True),
                coarse_groups=check_int_option("coarse_groups", coarse_groups, 1, allow_none=True))


# ----------------------------------------------------------------------------- public


def kmeans(x: jax.Array, k: int, *, key: jax.Array, mask: jax.Array | None = None,
           iters: int = 50, tol: float = 1e-4, refine_iters: int = 1,
           sample_size: int | None = None, n_local_trials: int | None = None, n_init: int | None = None,
           block_rows: int | None = 4096, seed_sample_size: int | None = None,
           coarse_groups: int | None = None) -> KMeansResult:
    """Spherical k-means of rows x [N, D] into k clusters (compiled; see the module docstring).

    Args:
      x: [N, D] rows (any norm; cosine geometry). Integer/bool rows are cast to float32.
      k: number of clusters (static Python int, 1 <= k <= N).
      key: PRNG key; the same key gives the same result.
      mask: optional [N] bool, False for padded rows (they get assignment -1 and may hold
        anything, NaN included). All-zero rows have no direction and get -1 too.
      iters: maximum Lloyd steps on the sample (>= 0).
      tol: stop when the summed squared shift of the unit centres is <= tol (two-level path:
        also when a step lowers the sample inertia by a fraction <= tol).
      refine_iters: Lloyd steps on all rows after the sample converged (>= 1).
      sample_size: rows used for the sample Lloyd steps (default :func:`default_sample_size`;
        all rows when N is smaller; in the two-level path, the rows shared by the groups).
      n_local_trials: greedy k-means++ candidates per centre (default 2 + ln k).
      n_init: independent seedings run on the sample (vectorised); the one with the lowest
        sample inertia is refined on all rows (two-level path: of the coarse centres).
        None (default): for k <= ``MULTI_START_MAX_K`` the many-start Gram-sample fit of
        the module docstring (``seed_sample_size`` sets its rows, default
        :func:`default_gram_rows`), else 2.
      block_rows: rows per block in the passes over all rows (bounds temporaries to
        block_rows x D; on CPU the flat assignment pass uses at most ``FULL_PASS_TILE_ROWS``;
        None processes all rows at once in every pass, best when rows are sharded).
      seed_sample_size: sample rows the greedy seeding looks at (default
        :func:`default_seed_sample_size`; in the two-level path, shared by the groups).
      coarse_groups: groups of the two-level path (default :func:`default_coarse_groups`:
        1 = flat below k = 200, about √k from there); 1 forces the flat path.

    Returns:
      :class:`KMeansResult`.

    Raises:
      ValueError: wrong rank, D = 0, k out of range, a bad option (named), NaN/Inf in an
        unmasked row of a concrete x, or rows of a concrete x more than 2^100 times smaller
        than its largest row. On tracers (inside ``jit``/``vmap``) non-finite and extreme
        rows (module docstring) are masked out instead (assignment -1).
      TypeError: k or an integer option that is not an int.
    """
    x = as_float_array(x, "x")
    if x.ndim != 2:
        raise ValueError(f"kmeans expects x of shape [N, D], got {tuple(x.shape)}")
    check_rows(x, "kmeans")
    mask = check_mask(mask, x.shape[:1])
    k = check_k(k, x.shape[0])
    opts = check_kmeans_options(iters=iters, tol=tol, refine_iters=refine_iters, sample_size=sample_size,
                                seed_sample_size=seed_sample_size, n_init=n_init, block_rows=block_rows,
                                n_local_trials=n_local_trials, coarse_groups=coarse_groups)
    tol = opts.pop("tol")
    res, shift = run_scale_free(lambda v: _kmeans_compiled(v, mask, key, tol, k=k, **opts), x, mask, "x")
    return res._replace(raw_means=ldexp_exact(res.raw_means, -shift)) if shift else res
