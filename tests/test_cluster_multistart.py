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
