"""The default flat k-means path (n_init=None): many seedings on a Gram sample, and row
statistics from one read. Quality checks only (recovered clusters, inertia), no timing."""
import jax
import jax.numpy as jnp
import numpy as np
from sklearn.metrics import adjusted_rand_score

import td_jax
from td_jax import cluster
from td_jax.synthetic import structured_tokens

from test_core import blobs


def test_default_path_recovers_planted_clusters_beyond_the_sample():
    """N above default_sample_size(k): the centres come from the Gram-sample starts alone,
    then one pass over all rows."""
    x, labels = blobs(7, 250, 20, 64, spread=0.1)
    assert len(x) > cluster.default_sample_size(20)
    res = td_jax.kmeans(jnp.asarray(x), 20, key=jax.random.key(0))
    assert adjusted_rand_score(labels, np.asarray(res.assignments)) >= 0.98
    assert int(res.counts.sum()) == len(x) and bool(jnp.all(res.counts > 0))
    assert int(res.n_iter) == cluster.MULTI_START_STEPS


def test_default_path_inertia_not_above_two_seedings():
    """On structured tokens (moving regions, drifting prototypes) the many-start default is
    at least as tight as the two-seeding path, median over keys."""
    x, _ = structured_tokens(0, 16, 16, 16, 64, n_objects=12, n_background=4)
    flat = jnp.asarray(x).reshape(-1, 64)
    assert flat.shape[0] > cluster.default_sample_size(16)
    new, old = [], []
    for i in range(5):
        new.append(float(td_jax.kmeans(flat, 16, key=jax.random.key(i)).inertia))
        old.append(float(td_jax.kmeans(flat, 16, key=jax.random.key(i), n_init=2).inertia))
    assert np.median(new) <= np.median(old) * 1.001


def test_gram_seeding_and_steps_match_direct_geometry():
    """Gram-space Lloyd: centres are means of their sample rows, and the potential it reports
    is the sample inertia of those centres."""
    x, _ = blobs(3, 60, 5, 16, spread=0.2)
    xs = x / np.linalg.norm(x, axis=1, keepdims=True)
    gram = jnp.asarray(xs @ xs.T)
    w = jnp.ones((len(xs),), jnp.float32)
    seeds, pot = cluster._greedy_gram(jax.random.key(0), gram, w, 5, 3)
    assert len(set(np.asarray(seeds).tolist())) == 5
    closest = np.min(1 - xs @ xs[np.asarray(seeds)].T, axis=1)
    np.testing.assert_allclose(float(pot), np.maximum(closest, 0).sum(), rtol=1e-4)
    wc, pot = cluster._lloyd_gram(gram, w, seeds, jnp.ones((5,), bool), 4)
    c = np.asarray(wc).T @ xs
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    np.testing.assert_allclose(float(pot), np.sum(1 - np.max(xs @ c.T, axis=1)), rtol=1e-4, atol=1e-4)


def test_one_read_row_stats_agree_with_the_exact_ones():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((300, 24)) * rng.uniform(1e-3, 1e3, (300, 1))).astype(np.float32)
    x[7] = np.nan                                          # masked: may hold anything
    mask = np.ones(300, bool)
    mask[7] = False
    fast = cluster.row_stats(jnp.asarray(x), jnp.asarray(mask))
    exact = cluster.row_stats_exact(jnp.asarray(x), jnp.asarray(mask))
    np.testing.assert_array_equal(np.asarray(fast.valid), np.asarray(exact.valid))
    np.testing.assert_array_equal(np.asarray(fast.finite), np.asarray(exact.finite))
    ok = mask
    np.testing.assert_allclose(np.asarray(fast.inv_norm)[ok], np.asarray(exact.inv_norm)[ok], rtol=1e-6)
    s = float(fast.scale)
    assert np.log2(s) == int(np.log2(s)) and np.max(np.abs(x[ok])) * s < 1
    assert int(fast.check.n_bad) == 0 and int(fast.check.n_extreme) == 0
    # a power-of-two rescaling moves the scale by exactly that power (sums of squares still
    # within [2^-100, 2^100]: the one-read path)
    again = cluster.row_stats(jnp.asarray(x * 2.0 ** 20), jnp.asarray(mask))
    assert float(again.scale) == s * 2.0 ** -20
    # beyond that window the exact path runs; same validity, a scale that still bounds |scale x|
    big = cluster.row_stats(jnp.asarray(x * 2.0 ** 60), jnp.asarray(mask))
    np.testing.assert_array_equal(np.asarray(big.valid), np.asarray(exact.valid))
    assert np.max(np.abs(x[ok].astype(np.float64) * 2.0 ** 60)) * float(big.scale) <= 1


def _same(a, b):
    """Same assignments; floats equal up to the rounding of row norms summed in another order."""
    for name in ("assignments", "counts", "n_iter"):
        np.testing.assert_array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)), err_msg=name)
    for name in ("raw_means", "unit_means", "centroids", "inertia"):
        np.testing.assert_allclose(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)), rtol=1e-5, atol=1e-6,
                                   err_msg=name)


def test_flat_path_without_the_row_read_equals_row_stats_first():
    """The default flat path takes row statistics from the sample and the pass's own tiles
    (no separate read of all rows): the result of taking row_stats first, with
    and without a mask (NaN in masked rows), for every flat seeding path."""
    x, _ = structured_tokens(1, 8, 12, 12, 32, n_objects=8, n_background=3)
    flat = np.asarray(x).reshape(-1, 32).copy()
    mask = np.ones(len(flat), bool)
    mask[::7] = False
    flat_nan = flat.copy()
    flat_nan[~mask] = np.nan
    run = jax.jit(lambda v, m, kk, n_init: cluster.kmeans_core(v, jnp.ones((12,), bool), key=kk, mask=m,
                                                               n_init=n_init, block_rows=100)[0],
                  static_argnames="n_init")
    first = jax.jit(lambda v, m, kk, n_init: cluster.kmeans_core(v, jnp.ones((12,), bool), key=kk, mask=m,
                                                                 n_init=n_init, block_rows=100,
                                                                 rows=cluster.row_stats(v, m))[0],
                    static_argnames="n_init")
    for v, m in ((flat, None), (flat_nan, mask)):
        for n_init in (None, 2):
            key = jax.random.key(3)
            mm = None if m is None else jnp.asarray(m)
            _same(run(jnp.asarray(v), mm, key, n_init), first(jnp.asarray(v), mm, key, n_init))


def test_rows_failing_the_fast_rule_take_the_exact_path_also_in_a_batch():
    """An unmasked zero row (or a row past 2^50) fails the fast rule: the result is then the
    row_stats-first one (the zero row unassigned). Under vmap one such video sends the whole
    batch down the exact path; every video still equals its own call."""
    xs = [np.asarray(structured_tokens(s, 4, 8, 8, 16, n_objects=5, n_background=2)[0]).reshape(-1, 16) for s in range(3)]
    xs[1] = xs[1].copy()
    xs[1][5] = 0.0
    big = xs[2].copy()
    big[9] *= 2.0 ** 60
    cm = jnp.ones((6,), bool)
    one = jax.jit(lambda v, kk: cluster.kmeans_core(v, cm, key=kk)[0])
    first = jax.jit(lambda v, kk: cluster.kmeans_core(v, cm, key=kk, rows=cluster.row_stats(v, None))[0])
    keys = jax.random.split(jax.random.key(0), 3)
    for v, kk in ((xs[1], keys[1]), (big, keys[2])):
        _same(one(jnp.asarray(v), kk), first(jnp.asarray(v), kk))
    assert int(one(jnp.asarray(xs[1]), keys[1]).assignments[5]) == -1
    assert int(cluster._fast_pass(jnp.asarray(xs[1]), jnp.ones((len(xs[1]),), bool), jnp.eye(6, 16), cm, None)[5]) == 1
    batched = jax.jit(jax.vmap(lambda v, kk: cluster.kmeans_core(v, cm, key=kk)[0]))
    for batch in ([xs[0], xs[2]], xs, [xs[0], big, xs[2]]):
        ks = keys[:len(batch)]
        out = batched(jnp.asarray(np.stack(batch)), ks)
        for i, v in enumerate(batch):
            _same(jax.tree.map(lambda a: a[i], out), first(jnp.asarray(v), ks[i]))
