"""Token Dynamics core: k-means, token base + map, adaptive K, cross-dynamics attention."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

import td_jax
from td_jax.synthetic import structured_tokens


def blobs(seed, n_per, k, d, spread=0.05):
    """Well separated clusters on the sphere: rows [k*n_per, d], labels."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(k), n_per)
    x = centres[labels] + spread * rng.standard_normal((k * n_per, d))
    x *= rng.uniform(0.5, 3.0, size=(len(x), 1))          # norms vary; cosine geometry ignores them
    perm = rng.permutation(len(x))
    return x[perm].astype(np.float32), labels[perm]


# ----------------------------------------------------------------------------- kmeans


@pytest.mark.parametrize("k,d", [(5, 16), (12, 64)])
def test_kmeans_recovers_planted_clusters(k, d):
    x, labels = blobs(0, 200, k, d)
    res = td_jax.kmeans(jnp.asarray(x), k, key=jax.random.key(0))
    assert adjusted_rand_score(labels, np.asarray(res.assignments)) >= 0.98
    np.testing.assert_allclose(np.linalg.norm(res.centroids, axis=1), 1.0, atol=1e-5)
    assert int(res.counts.sum()) == len(x)
    # inertia is the sum of 1 - cos(x, centroid of its cluster)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    c = np.asarray(res.centroids)[np.asarray(res.assignments)]
    np.testing.assert_allclose(float(res.inertia), np.sum(1 - np.sum(xn * c, 1)), rtol=1e-3, atol=1e-3)


def test_kmeans_same_key_same_result_and_keys_differ():
    x, _ = blobs(1, 100, 6, 16, spread=0.6)
    a = td_jax.kmeans(jnp.asarray(x), 6, key=jax.random.key(3))
    b = td_jax.kmeans(jnp.asarray(x), 6, key=jax.random.key(3))
    for u, v in zip(a, b):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_kmeans_mask_excludes_padding():
    x, labels = blobs(2, 100, 4, 16)
    pad = np.full((50, 16), 1000.0, np.float32)            # huge rows that would pull a centre
    xx = np.concatenate([x, pad])
    mask = np.r_[np.ones(len(x), bool), np.zeros(50, bool)]
    res = td_jax.kmeans(jnp.asarray(xx), 4, key=jax.random.key(0), mask=jnp.asarray(mask))
    a = np.asarray(res.assignments)
    assert (a[len(x):] == -1).all()
    assert adjusted_rand_score(labels, a[:len(x)]) >= 0.98
    assert int(res.counts.sum()) == len(x)


def test_kmeans_sample_path_matches_quality():
    """N larger than the sample: seeding on a sample, refinement on all rows."""
    x, labels = blobs(4, 1500, 8, 32)
    res = td_jax.kmeans(jnp.asarray(x), 8, key=jax.random.key(0), sample_size=512)
    assert adjusted_rand_score(labels, np.asarray(res.assignments)) >= 0.98


def test_kmeans_blocked_pass_equals_unblocked():
    x, _ = blobs(5, 300, 6, 16, spread=0.3)
    a = td_jax.kmeans(jnp.asarray(x), 6, key=jax.random.key(0), block_rows=None)
    b = td_jax.kmeans(jnp.asarray(x), 6, key=jax.random.key(0), block_rows=256)   # 7 blocks + remainder
    np.testing.assert_array_equal(np.asarray(a.assignments), np.asarray(b.assignments))
    np.testing.assert_allclose(np.asarray(a.centroids), np.asarray(b.centroids), atol=1e-5)


def test_scatter_sums_equal_onehot_sums():
    """The CPU scatter-add and the accelerators' one-hot GEMM give the same per-cluster sums
    (only CPU runs here, so the GEMM form is checked against the scatter directly)."""
    from td_jax import cluster
    rng = np.random.default_rng(0)
    xb = jnp.asarray(rng.normal(size=(300, 24)).astype(np.float32))
    inv = 1.0 / jnp.linalg.norm(xb, axis=1)
    labels = jnp.asarray(rng.integers(-1, 7, size=300).astype(np.int32))     # -1: unassigned
    use = jnp.asarray(rng.random(300) < 0.8) & (labels >= 0)
    scale = jnp.float32(0.25)
    a = jax.jit(cluster.scatter_sums, static_argnums=5)(xb, inv, scale, labels, use, 7)
    b = jax.jit(cluster.onehot_sums, static_argnums=5)(xb, inv, scale, labels, use, 7)
    for u, v in zip(a, b):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-5)
    counts = np.bincount(np.asarray(labels)[np.asarray(use)], minlength=7)
    np.testing.assert_array_equal(np.asarray(a[2]), counts)
    rows = np.asarray(xb)[np.asarray(use) & (np.asarray(labels) == 3)]
    np.testing.assert_allclose(np.asarray(a[1][3]), 0.25 * rows.sum(0), rtol=1e-5, atol=1e-5)


def test_kmeans_vmap_equals_loop():
    xs = np.stack([blobs(s, 60, 5, 16, spread=0.3)[0] for s in range(3)])
    keys = jax.random.split(jax.random.key(0), 3)
    batched = jax.jit(jax.vmap(lambda x, k: td_jax.kmeans(x, 5, key=k)))(jnp.asarray(xs), keys)
    for i in range(3):
        one = td_jax.kmeans(jnp.asarray(xs[i]), 5, key=keys[i])
        np.testing.assert_array_equal(np.asarray(batched.assignments[i]), np.asarray(one.assignments))
        np.testing.assert_allclose(np.asarray(batched.centroids[i]), np.asarray(one.centroids), atol=1e-5)


@pytest.mark.parametrize("k,groups", [(6, None), (24, 5)])          # flat; two levels
def test_kmeans_sharded_rows_match_single_device(k, groups):
    assert len(jax.devices()) == 8
    x, _ = blobs(6, 128, 6, 16, spread=0.2)                 # 768 rows, divisible by 8
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    sharded = jax.device_put(jnp.asarray(x), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
    f = jax.jit(lambda x, key: td_jax.kmeans(x, k, key=key, block_rows=None, coarse_groups=groups))
    one = f(jax.device_put(jnp.asarray(x), jax.devices()[0]), jax.random.key(0))
    eight = f(sharded, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(one.assignments), np.asarray(eight.assignments))
    np.testing.assert_allclose(np.asarray(one.centroids), np.asarray(eight.centroids), atol=1e-5)


def test_empty_clusters_are_flagged_not_zero_silently():
    # 3 distinct points, k = 5: two clusters must end empty and be reported so.
    x = np.repeat(np.eye(3, 8, dtype=np.float32), 10, axis=0)
    res = td_jax.kmeans(jnp.asarray(x), 5, key=jax.random.key(0))
    counts = np.asarray(res.counts)
    assert (counts > 0).sum() == 3 and counts.sum() == 30
    td = td_jax.token_dynamics(jnp.asarray(x.reshape(1, 5, 6, 8)), 5, key=jax.random.key(0))
    assert int(td.valid.sum()) == 3
    assert np.all(np.asarray(td.base)[~np.asarray(td.valid)] == 0)


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors():
    x = np.ones((4, 3, 3, 8), np.float32)
    with pytest.raises(ValueError, match="larger than the number of tokens"):
        td_jax.token_dynamics(jnp.asarray(x), 37, key=jax.random.key(0))
    with pytest.raises(ValueError, match=">= 1"):
        td_jax.token_dynamics(jnp.asarray(x), 0, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"\[T, H, W, D\].*\(3, 8\)"):
        td_jax.token_dynamics(jnp.ones((3, 8)), 2, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        td_jax.kmeans(jnp.ones((2, 3, 4)), 2, key=jax.random.key(0))
    bad = x.copy()
    bad[1, 2, 0, 3] = np.nan
    with pytest.raises(ValueError, match="NaN/Inf"):
        td_jax.token_dynamics(jnp.asarray(bad), 2, key=jax.random.key(0))
    bad[0, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN/Inf"):
        td_jax.kmeans(jnp.asarray(bad.reshape(-1, 8)), 2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="base must be"):
        td_jax.token_dynamics(jnp.asarray(x), 2, key=jax.random.key(0), base="median")
    with pytest.raises(ValueError, match="method must be"):
        td_jax.adaptive_token_dynamics(jnp.asarray(x), 4, key=jax.random.key(0), method="gap")


def test_nonfinite_rows_inside_jit_are_masked_not_propagated():
    x, labels = blobs(7, 50, 3, 8)
    x[5] = np.nan
    x[9, 2] = np.inf
    res = jax.jit(lambda x: td_jax.kmeans(x, 3, key=jax.random.key(0)))(jnp.asarray(x))
    a = np.asarray(res.assignments)
    assert a[5] == -1 and a[9] == -1
    assert np.isfinite(np.asarray(res.centroids)).all() and np.isfinite(float(res.inertia))
    keep = a >= 0
    assert adjusted_rand_score(labels[keep], a[keep]) >= 0.98


def test_all_zero_tokens_give_finite_output():
    """Zero tokens have no direction: unassigned (-1), never counted in a cluster."""
    td = td_jax.token_dynamics(jnp.zeros((2, 4, 4, 8)), 3, key=jax.random.key(0))
    for leaf in (td.base, td.inertia):
        assert np.isfinite(np.asarray(leaf)).all()
    assert int(td.counts.sum()) == 0 and not bool(td.valid.any())
    assert (np.asarray(td.dynamics_map) == -1).all()
    out = jax.jit(lambda x: td_jax.adaptive_token_dynamics(x, 4, key=jax.random.key(0)))(jnp.zeros((2, 4, 4, 8)))
    assert np.isfinite(np.asarray(out.base)).all()


# ----------------------------------------------------------------------------- token dynamics


@pytest.fixture(scope="session")   # cheap: rebuilt per xdist worker, so its tests spread
def video():
    x, labels = structured_tokens(3, 8, 12, 12, 64, n_objects=3, n_background=3, noise=0.5)
    return x, labels


def test_map_follows_moving_regions(video):
    x, labels = video
    td = td_jax.token_dynamics(jnp.asarray(x), 6, key=jax.random.key(0))
    m = np.asarray(td.dynamics_map)
    assert m.shape == labels.shape and m.dtype == np.int32
    assert adjusted_rand_score(labels.ravel(), m.ravel()) >= 0.98
    # Per frame, the cells of each moving object carry one id, and that id moves with them.
    for obj in range(3, 6):
        ids = {int(np.bincount(m[t][labels[t] == obj]).argmax()) for t in range(8) if (labels[t] == obj).any()}
        assert len(ids) == 1
    rec = td_jax.reconstruct(td)
    assert rec.shape == x.shape
    np.testing.assert_allclose(np.asarray(rec)[0, 0, 0], np.asarray(td.base)[m[0, 0, 0]])
    err = float(td_jax.reconstruction_error(jnp.asarray(x), td))
    assert err == pytest.approx(float(td.inertia), abs=1e-3)   # raw-mean base: same direction as centroid
    assert err < 0.15


def test_base_modes(video):
    x, _ = video
    raw = td_jax.token_dynamics(jnp.asarray(x), 6, key=jax.random.key(0), base="raw")
    nrm = td_jax.token_dynamics(jnp.asarray(x), 6, key=jax.random.key(0), base="normalized")
    np.testing.assert_array_equal(np.asarray(raw.dynamics_map), np.asarray(nrm.dynamics_map))
    m = np.asarray(raw.dynamics_map).ravel()
    flat = x.reshape(-1, x.shape[-1])
    np.testing.assert_allclose(np.asarray(raw.base)[2], flat[m == 2].mean(0), rtol=1e-4, atol=1e-5)
    unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(nrm.base)[2], unit[m == 2].mean(0), rtol=1e-4, atol=1e-5)
    assert (np.linalg.norm(np.asarray(nrm.base), axis=1) <= 1 + 1e-5).all()


def test_token_dynamics_mask(video):
    x, labels = video
    mask = np.ones(x.shape[:3], bool)
    mask[-2:] = False                                        # two padded frames
    td = td_jax.token_dynamics(jnp.asarray(x), 6, key=jax.random.key(0), mask=jnp.asarray(mask))
    m = np.asarray(td.dynamics_map)
    assert (m[-2:] == -1).all() and (m[:-2] >= 0).all()
    assert int(td.counts.sum()) == mask.sum()
    assert float(td_jax.reconstruction_error(jnp.asarray(x), td)) < 0.15


@pytest.mark.parametrize("method", ["elbow", "silhouette", "threshold"])
@pytest.mark.parametrize("seed,nb,no", [(1, 3, 3), (2, 2, 6), (5, 3, 7)])
def test_adaptive_recovers_planted_k(method, seed, nb, no):
    x, _ = structured_tokens(seed, 8, 12, 12, 64, n_objects=no, n_background=nb, noise=0.5)
    td = jax.jit(lambda x: td_jax.adaptive_token_dynamics(
        x, 16, key=jax.random.key(0), method=method, threshold=0.12))(jnp.asarray(x))
    assert td.base.shape == (16, 64) and td.valid.shape == (16,)
    k = int(td.k)
    assert abs(k - (nb + no)) <= 1, (method, k, nb + no)
    assert bool(td.valid[:k].all()) and not bool(td.valid[k:].any())
    assert np.asarray(td.dynamics_map).max() < k


def test_silhouette_depends_on_labels():
    from td_jax.dynamics import _silhouette
    x, labels = blobs(8, 50, 4, 16, spread=0.1)
    xs = jnp.asarray(x / np.linalg.norm(x, axis=1, keepdims=True))
    w = jnp.ones(len(x))
    good = float(_silhouette(xs, w, jnp.asarray(labels), 4))
    shuffled = float(_silhouette(xs, w, jnp.asarray(np.random.default_rng(0).permutation(labels)), 4))
    assert good > 0.8 and shuffled < 0.1
    # matches scikit-learn's silhouette with cosine distance
    from sklearn.metrics import silhouette_score
    assert good == pytest.approx(silhouette_score(np.asarray(xs), labels, metric="cosine"), abs=1e-4)


def test_choose_k_elbow_offset():
    ks = jnp.arange(2, 12)
    dist = jnp.asarray([1.0, 0.7, 0.45, 0.25, 0.1, 0.098, 0.097, 0.096, 0.095, 0.094])   # knee at K=6
    assert int(td_jax.choose_k(ks, dist, jnp.zeros(10), "elbow", 0.0)) == 6
    assert int(td_jax.choose_k(ks, dist, jnp.zeros(10), "threshold", 0.3)) == 5
    assert int(td_jax.choose_k(ks, dist, jnp.zeros(10), "threshold", 0.01)) == 11


def test_token_dynamics_vmap_equals_loop_and_jit(video):
    x, _ = video
    xs = jnp.asarray(np.stack([x, x[::-1], x * 2]))
    keys = jax.random.split(jax.random.key(1), 3)
    f = jax.jit(jax.vmap(lambda v, k: td_jax.token_dynamics(v, 6, key=k)))
    out = f(xs, keys)
    for i in range(3):
        one = td_jax.token_dynamics(xs[i], 6, key=keys[i])
        np.testing.assert_array_equal(np.asarray(out.dynamics_map[i]), np.asarray(one.dynamics_map))
        np.testing.assert_allclose(np.asarray(out.base[i]), np.asarray(one.base), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- attention


def _attn_inputs(seed=0, b=2, k=5, t=4, h=6, w=6, d=32):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((b, k, d)).astype(np.float32)
    dmap = rng.integers(0, k, size=(b, t, h, w)).astype(np.int32)
    valid = np.ones((b, k), bool)
    valid[1, -1] = False
    dmap[1][dmap[1] == k - 1] = 0
    return base, dmap, valid


def _perturbed_params(module, base, dmap, valid):
    params = jax.jit(module.init)(jax.random.key(0), base, dmap, valid)     # one program, not op by op
    # Output projections start at zero (identity layer); randomise all so the test bites.
    rng = np.random.default_rng(1)
    return jax.tree.map(lambda l: l + 0.2 * rng.standard_normal(l.shape).astype(l.dtype), params)


@pytest.mark.parametrize("own_bias", [0.0, 3.0])
def test_attention_output_is_k_tokens_and_equivariant(own_bias):
    base, dmap, valid = _attn_inputs()
    mod = td_jax.CrossDynamicsAttention(num_heads=4, own_bias=own_bias)
    params = _perturbed_params(mod, base, dmap, valid)
    apply = jax.jit(mod.apply)                               # one program for the three calls
    out = np.asarray(apply(params, base, dmap, valid))
    assert out.shape == base.shape
    assert np.all(out[1, -1] == 0)                           # invalid slot stays empty
    perm = np.array([3, 0, 4, 1, 2])
    inv = np.argsort(perm)
    base_p = base[:, perm]                                   # new row j = old row perm[j]
    dmap_p = inv[dmap]                                       # old id i is now id inv[i]
    valid_p = valid[:, perm]
    out_p = np.asarray(apply(params, base_p, dmap_p, valid_p))
    np.testing.assert_allclose(out_p, out[:, perm], rtol=1e-4, atol=1e-4)
    # And it does use the map: moving the cells changes the output.
    out_shift = np.asarray(apply(params, base, np.roll(dmap, 2, axis=-1), valid))
    assert np.abs(out_shift - out).max() > 1e-3


def test_attention_starts_as_identity_and_has_logical_axes():
    base, dmap, valid = _attn_inputs()
    mod = td_jax.CrossDynamicsAttention(num_heads=4)
    params = jax.jit(mod.init)(jax.random.key(0), base, dmap, valid)
    out = jax.jit(mod.apply)(params, base, dmap, valid)
    np.testing.assert_allclose(np.asarray(out), np.where(valid[..., None], base, 0), atol=1e-6)
    import flax.linen as nn
    specs = nn.get_partition_spec(params)
    kernel_specs = [s for path, s in jax.tree_util.tree_flatten_with_path(specs)[0] if "kernel" in str(path)]
    assert kernel_specs and all(len(s) == 2 for s in kernel_specs)
    assert any("heads" in tuple(s) for s in kernel_specs) and any("mlp" in tuple(s) for s in kernel_specs)


def test_trajectory_features_track_a_moving_square():
    dmap = np.zeros((1, 3, 8, 8), np.int32)
    for t in range(3):
        dmap[0, t, 2:4, 1 + 2 * t:3 + 2 * t] = 1             # moves right by 2 cells a frame
    feats, present = td_jax.trajectory_features(jnp.asarray(dmap), 3)
    f = np.asarray(feats)[0]
    assert np.asarray(present)[0, 1].all() and not np.asarray(present)[0, 2].any()
    cx = f[1, :, 3]
    assert np.all(np.diff(cx) > 0)                           # centre x increases
    assert f[1, 1, 7] > 0 and f[1, 0, 7] == 0                # velocity x positive after frame 0


def test_trajectory_features_match_per_cell_sums():
    """The segment-sum features equal the definition written out cell by cell (masked cells
    and ids >= K ignored)."""
    rng = np.random.default_rng(3)
    dmap = rng.integers(-1, 6, size=(2, 3, 5, 4)).astype(np.int32)     # id 5 >= K = 5: ignored
    feats, present = (np.asarray(a) for a in td_jax.trajectory_features(jnp.asarray(dmap), 5))
    ys, xs = np.linspace(-1, 1, 5), np.linspace(-1, 1, 4)
    for b in range(2):
        for k in range(5):
            for t in range(3):
                hh, ww = np.nonzero(dmap[b, t] == k)
                assert present[b, k, t] == (hh.size > 0)
                if hh.size:
                    np.testing.assert_allclose(feats[b, k, t, 1:6], [
                        np.sqrt(hh.size / 20), ys[hh].mean(), xs[ww].mean(), ys[hh].std(), xs[ww].std()], atol=1e-5)
                else:
                    np.testing.assert_array_equal(feats[b, k, t, :6], 0.0)


def test_attention_neighbour_path_is_dense_attention_over_the_partners():
    """Above ``neighbours + 1`` clusters a query reads only its partners' trajectories: each
    output row equals dense attention with every other cluster marked invalid (a key depends
    only on its own cluster), and the path stays equivariant to relabelling."""
    base, dmap, valid = _attn_inputs(seed=1, k=7, t=5, h=8, w=8)
    sparse = td_jax.CrossDynamicsAttention(num_heads=4, own_bias=2.0, neighbours=3, query_block=3)
    dense = td_jax.CrossDynamicsAttention(num_heads=4, own_bias=2.0, neighbours=-1)
    params = _perturbed_params(dense, base, dmap, valid)
    sparse_fn = jax.jit(lambda b_, m_, v_: sparse.apply(params, b_, m_, v_))
    out = np.asarray(sparse_fn(base, dmap, valid))
    dense_fn = jax.jit(lambda v: dense.apply(params, base, dmap, v))     # one compile for every reference row
    feats, present = td_jax.trajectory_features(jnp.asarray(dmap), 7)
    idx = np.asarray(td_jax.attention.nearest_clusters(feats, present, jnp.asarray(valid), 4))
    assert (idx[..., 0] == np.arange(7)).all()                      # a query's own cluster comes first
    for b in range(2):
        for q in range(7):
            if not valid[b, q]:
                assert np.all(out[b, q] == 0)
                continue
            only = np.zeros_like(valid)
            only[b, idx[b, q]] = valid[b, idx[b, q]]
            ref = np.asarray(dense_fn(only))[b, q]
            np.testing.assert_allclose(out[b, q], ref, rtol=1e-4, atol=1e-4)
    assert np.abs(out - np.asarray(dense_fn(valid))).max() > 1e-3   # partners matter
    perm = np.array([3, 0, 6, 4, 1, 5, 2])
    inv = np.argsort(perm)
    out_p = np.asarray(sparse_fn(base[:, perm], inv[dmap], valid[:, perm]))
    np.testing.assert_allclose(out_p, out[:, perm], rtol=1e-4, atol=1e-4)
    # Dropout in the neighbour path: one key, one draw; training differs from evaluation.
    drop = td_jax.CrossDynamicsAttention(num_heads=4, neighbours=3, dropout=0.5)
    train = jax.jit(lambda r: drop.apply(params, base, dmap, valid, False, rngs={"dropout": r}))
    a = np.asarray(train(jax.random.key(5)))
    np.testing.assert_array_equal(a, np.asarray(train(jax.random.key(5))))
    assert np.abs(a - np.asarray(jax.jit(lambda: drop.apply(params, base, dmap, valid))())).max() > 1e-3
    with pytest.raises(ValueError, match="neighbours"):
        td_jax.CrossDynamicsAttention(neighbours=-2).init(jax.random.key(0), base, dmap, valid)


# ----------------------------------------------------------------------------- compressor module


@pytest.mark.parametrize("name", ["token_dynamics", "base_only", "random_map", "random_base"])
def test_compressor_module(name, video):
    x, _ = video
    xs = jnp.asarray(np.stack([x, x[::-1]]))
    comp = td_jax.compressors.get(name, **({} if name == "base_only" else {"num_heads": 4}))   # base_only: no attention
    params = comp.init(jax.random.key(0), xs, budget=6)
    out = jax.jit(lambda t, k, p: comp(t, key=k, budget=6, params=p))(xs, jax.random.key(1), params)
    assert out.tokens.shape == (2, 6, 64) and out.mask.shape == (2, 6)
    assert out.aux["dynamics_map"].shape == (2, 8, 12, 12)
    assert bool(out.mask.all())
    base_only = td_jax.compressors.get("base_only")(xs, key=jax.random.key(1), budget=6)
    if name in ("token_dynamics", "base_only"):
        # untrained attention is the identity: same tokens as base_only
        np.testing.assert_allclose(np.asarray(out.tokens), np.asarray(base_only.tokens), atol=1e-5)
    if name == "random_map":
        assert not np.array_equal(np.asarray(out.aux["dynamics_map"]), np.asarray(base_only.aux["dynamics_map"]))
    if name == "random_base":
        assert np.abs(np.asarray(out.tokens) - np.asarray(base_only.tokens)).max() > 0.1
    assert (len(jax.tree.leaves(params)) == 0) == (name == "base_only")


def test_base_map_feeds_base_then_one_map_token_per_frame(video):
    """The "base + map without attention" rung: K base tokens (= base_only's) then T map
    tokens that change when the map changes; the budget planner gives K = M - T."""
    x, _ = video
    xs = jnp.asarray(np.stack([x, x[::-1]]))
    comp = td_jax.compressors.get("base_map")
    t = x.shape[0]
    params = comp.init(jax.random.key(0), xs, budget=6 + t)
    out = comp(xs, key=jax.random.key(1), budget=6 + t, params=params)
    assert out.tokens.shape == (2, 6 + t, 64) and bool(out.mask.all())
    base_only = td_jax.compressors.get("base_only")(xs, key=jax.random.key(1), budget=6)
    np.testing.assert_allclose(np.asarray(out.tokens[:, :6]), np.asarray(base_only.tokens), atol=1e-6)
    maps = np.asarray(out.tokens[:, 6:])
    assert np.abs(maps[0] - maps[1]).max() > 1e-3              # reversed video, different map tokens
    from td_jax.compressors import budget as budget_lib
    p = budget_lib.plan("base_map", 6 + t, (t, 12, 12))
    assert p.budget == 6 + t and p.knobs["k"] == 6
    with pytest.raises(ValueError, match="no room for K clusters"):
        budget_lib.plan("base_map", t, (t, 12, 12))


def test_compressor_adaptive_and_unknown_keys(video):
    x, _ = video
    comp = td_jax.compressors.get("token_dynamics", adaptive="silhouette", num_heads=4)
    out = comp(jnp.asarray(x[None]), key=jax.random.key(0), budget=12,
               params=comp.init(jax.random.key(0), jnp.asarray(x[None]), budget=12))
    assert out.tokens.shape == (1, 12, 64) and 5 <= int(out.mask.sum()) <= 7
    with pytest.raises(TypeError, match="unknown config keys"):
        td_jax.compressors.get("token_dynamics", n_clusters=3)
    with pytest.raises(KeyError, match="known:"):
        td_jax.compressors.get("kmeans_magic")


def test_compressor_batch_sharded_over_8_devices_matches_one(video):
    x, _ = video
    xs = np.stack([x, x[::-1], x * 2, -x, x[:, ::-1], x[:, :, ::-1], x + 0.1, x * 0.5]).astype(np.float32)
    comp = td_jax.compressors.get("token_dynamics", num_heads=4)
    params = comp.init(jax.random.key(0), jnp.asarray(xs[:1]), budget=6)
    params = jax.tree.map(lambda p: p + 0.05, params)       # non-identity attention
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    f = jax.jit(lambda t, k, p: comp(t, key=k, budget=6, params=p))
    one = f(jax.device_put(jnp.asarray(xs), jax.devices()[0]), jax.random.key(1), params)
    eight = f(jax.device_put(jnp.asarray(xs), spec), jax.random.key(1), params)
    np.testing.assert_array_equal(np.asarray(one.aux["dynamics_map"]), np.asarray(eight.aux["dynamics_map"]))
    np.testing.assert_allclose(np.asarray(one.tokens), np.asarray(eight.tokens), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["raw", "normalized"])
def test_base_gradient_matches_direct_mean(mode, video):
    """The base reuses k-means' means in the forward; its gradient is the mean's gradient."""
    x, _ = video
    x = jnp.asarray(x[:4])
    td = td_jax.token_dynamics(x, 5, key=jax.random.key(0), base=mode)
    labels = td.dynamics_map.reshape(-1)
    w = jax.random.normal(jax.random.key(1), td.base.shape)

    def direct(x):
        flat = x.reshape(-1, x.shape[-1])
        if mode == "normalized":
            flat = flat / jnp.linalg.norm(flat, axis=-1, keepdims=True)
        onehot = jax.nn.one_hot(labels, 5)
        return jnp.sum(w * (onehot.T @ flat) / onehot.sum(0)[:, None])

    ours = lambda x: jnp.sum(w * td_jax.token_dynamics(x, 5, key=jax.random.key(0), base=mode).base)
    np.testing.assert_allclose(float(ours(x)), float(direct(x)), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(jax.grad(ours)(x)), np.asarray(jax.grad(direct)(x)), rtol=1e-4, atol=1e-6)


def test_attention_own_bias_routes_a_token_to_its_own_trajectory():
    """With a large own-trajectory bonus, moving another cluster's cells leaves a token's
    output unchanged (while it still changes that other cluster's)."""
    base, dmap, valid = _attn_inputs()
    mod = td_jax.CrossDynamicsAttention(num_heads=4, own_bias=60.0)
    params = _perturbed_params(mod, base, dmap, valid)
    params = jax.tree_util.tree_map_with_path(
        lambda path, p: jnp.full_like(p, 60.0) if "own_bias" in str(path) else p, params)
    apply = jax.jit(mod.apply)
    out = np.asarray(apply(params, base, dmap, valid))
    moved = np.asarray(dmap).copy()
    b0 = 0
    present = [k for k in range(base.shape[1]) if valid[b0, k] and (moved[b0] == k).any()]
    k_move, k_keep = present[0], present[1]
    cells = moved[b0] == k_move
    moved[b0][cells] = -1                      # cluster k_move vanishes from half the frames
    moved[b0][cells & (np.arange(moved.shape[1])[:, None, None] % 2 == 0)] = k_move
    out_m = np.asarray(apply(params, base, moved, valid))
    np.testing.assert_allclose(out_m[b0, k_keep], out[b0, k_keep], atol=1e-4)
    assert np.abs(out_m[b0, k_move] - out[b0, k_move]).max() > 1e-3


# ----------------------------------------------------------------------------- compiled entry points, hard inputs


def test_documented_calls_compile_once_per_configuration(video):
    """The public functions are compiled: a second call with new values (same shapes and
    static options) reuses the executable instead of dispatching op by op."""
    from td_jax import cluster, dynamics
    x, _ = video
    xj = jnp.asarray(x)
    before = dynamics._token_dynamics_compiled._cache_size()
    td_jax.token_dynamics(xj, 5, key=jax.random.key(0))
    td_jax.token_dynamics(xj * 3.0, 5, key=jax.random.key(1), tol=1e-3)    # values and tol are not static
    assert dynamics._token_dynamics_compiled._cache_size() == before + 1
    flat = xj.reshape(-1, x.shape[-1])
    before = cluster._kmeans_compiled._cache_size()
    td_jax.kmeans(flat, 5, key=jax.random.key(0))
    td_jax.kmeans(flat + 1.0, 5, key=jax.random.key(2))
    assert cluster._kmeans_compiled._cache_size() == before + 1


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_clustering_is_scale_free(dtype, video):
    """Positive rescaling anywhere in the float range gives the same clusters (issue 19)."""
    x, _ = video
    ref = td_jax.token_dynamics(jnp.asarray(x, dtype), 6, key=jax.random.key(0))
    assert bool(ref.valid.all())
    for scale in (1e19, 1e-7, 1e30, 1e-30):
        xs = jnp.asarray(x, dtype) * jnp.asarray(scale, dtype)
        td = td_jax.token_dynamics(xs, 6, key=jax.random.key(0))
        np.testing.assert_array_equal(np.asarray(td.dynamics_map), np.asarray(ref.dynamics_map), err_msg=str(scale))
        np.testing.assert_allclose(float(td.inertia), float(ref.inertia), rtol=2e-2, atol=1e-4)
        base = np.asarray(td.base, np.float32) / np.float32(scale)
        np.testing.assert_allclose(base, np.asarray(ref.base, np.float32), rtol=3e-2, atol=3e-2)
        err = float(td_jax.reconstruction_error(xs, td))
        assert np.isfinite(err) and abs(err - float(td.inertia)) < 2e-2
    flat = jnp.asarray(x.reshape(-1, x.shape[-1]))
    a = td_jax.kmeans(flat, 6, key=jax.random.key(0))
    b = td_jax.kmeans(flat * 2.0 ** 100, 6, key=jax.random.key(0))      # exact rescaling: identical result
    np.testing.assert_array_equal(np.asarray(a.assignments), np.asarray(b.assignments))
    np.testing.assert_array_equal(np.asarray(a.centroids), np.asarray(b.centroids))


def _unscaled(x, dtype, scale):
    """x rounded to dtype at ``scale``, and the same values shifted exactly to max |x| ~ 1."""
    xs = np.asarray(jnp.asarray(np.asarray(x, np.float64) * scale, jnp.float32).astype(dtype), np.float64)
    e = int(np.frexp(np.abs(xs).max())[1])
    return jnp.asarray(xs.astype(np.float32)).astype(dtype), jnp.asarray(np.ldexp(xs, -e).astype(np.float32)).astype(dtype), e


@pytest.mark.parametrize("dtype,scales", [(jnp.float32, (1e-38, 1e-40, 1e-44, 3e38)), (jnp.bfloat16, (1e-38, 3e38))])
def test_clustering_survives_subnormal_and_near_max_tokens(dtype, scales, video):
    """XLA on CPU flushes subnormals to zero: tokens at 1e-38 once all fell into one cluster
    (issue 19). Every scale now gives the clusters of the same values rescaled exactly, and
    the unscaled clusters while the input still holds them (float32 to 1e-40)."""
    x, _ = video
    x = x / np.abs(x).max()                                         # max |x| = 1: x * 3e38 stays finite
    ref = td_jax.token_dynamics(jnp.asarray(x, dtype), 6, key=jax.random.key(0))
    for scale in scales:
        xs, back, e = _unscaled(x, dtype, scale)
        td = td_jax.token_dynamics(xs, 6, key=jax.random.key(0))
        same = td_jax.token_dynamics(back, 6, key=jax.random.key(0))
        np.testing.assert_array_equal(np.asarray(td.dynamics_map), np.asarray(same.dynamics_map), err_msg=str(scale))
        np.testing.assert_array_equal(np.asarray(td.counts), np.asarray(same.counts))
        if scale >= 1e-40 and (dtype == jnp.float32 or scale >= 1e-38):
            np.testing.assert_array_equal(np.asarray(td.dynamics_map), np.asarray(ref.dynamics_map), err_msg=str(scale))
        # the base is the mean of the tokens in their own scale, subnormal means included (to one
        # step of the smallest subnormal, 2^-149, which is what float32 can hold there)
        base = np.ldexp(np.asarray(td.base, np.float64), -e)
        quantum = np.ldexp(1.0, -149 - e) if dtype == jnp.float32 else np.ldexp(1.0, -133 - e)
        np.testing.assert_allclose(base, np.asarray(same.base, np.float64), rtol=0, atol=1e-2 + quantum)
        assert td.base.dtype == dtype
        flat = xs.reshape(-1, x.shape[-1])
        km, km_back = (td_jax.kmeans(v, 6, key=jax.random.key(0)) for v in (flat, back.reshape(flat.shape)))
        np.testing.assert_array_equal(np.asarray(km.assignments), np.asarray(km_back.assignments))
        ad, ad_back = (td_jax.adaptive_token_dynamics(v, 8, key=jax.random.key(1)) for v in (xs, back))
        assert int(ad.k) == int(ad_back.k)
        np.testing.assert_array_equal(np.asarray(ad.dynamics_map), np.asarray(ad_back.dynamics_map))
        # the error of this base on these tokens, measured exactly as at the unscaled exponent
        up = td.replace(base=jnp.asarray(base.astype(np.float32)).astype(dtype))
        for metric in ("cosine", "relative"):
            np.testing.assert_allclose(float(td_jax.reconstruction_error(xs, td, metric)),
                                       float(td_jax.reconstruction_error(back, up, metric)), rtol=1e-4, atol=1e-6)


def test_rows_far_below_the_largest_raise_and_are_unassigned_under_jit():
    x, _ = blobs(4, 50, 3, 16)
    x = x / np.abs(x).max()
    mixed = x.copy()
    mixed[:5] *= np.float32(1e-39)                                  # subnormal rows next to rows near 1
    with pytest.raises(ValueError, match=r"5 unmasked rows are more than 2\^100 times smaller than the largest row"):
        td_jax.kmeans(jnp.asarray(mixed), 3, key=jax.random.key(0))
    # masked, they are fine; all-zero rows are simply unassigned
    res = td_jax.kmeans(jnp.asarray(mixed), 3, key=jax.random.key(0), mask=jnp.arange(len(x)) >= 5)
    assert (np.asarray(res.assignments)[:5] == -1).all() and int(res.counts.sum()) == len(x) - 5
    zero = x.copy()
    zero[:5] = 0.0
    res = td_jax.kmeans(jnp.asarray(zero), 3, key=jax.random.key(0))
    assert (np.asarray(res.assignments)[:5] == -1).all() and int(res.counts.sum()) == len(x) - 5
    # inside a user's jit the extreme rows cannot raise: they are left out, visibly (-1)
    out = jax.jit(lambda v: td_jax.kmeans(v, 3, key=jax.random.key(0)))(jnp.asarray(mixed))
    assert (np.asarray(out.assignments)[:5] == -1).all() and (np.asarray(out.assignments)[5:] >= 0).all()


def test_ldexp_exact_matches_numpy_across_the_float32_range():
    from td_jax.cluster import ldexp_exact
    v = np.random.default_rng(0).integers(0, 2 ** 32, 20000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    v = v[np.isfinite(v)]
    for s in (-200, -149, -30, 0, 30, 149, 200):
        with np.errstate(over="ignore"):
            want = np.ldexp(v.astype(np.float64), s).astype(np.float32)
        np.testing.assert_array_equal(np.asarray(ldexp_exact(jnp.asarray(v), s)).view(np.uint32), want.view(np.uint32))


def test_integer_tokens_are_cast_to_float():
    x = np.repeat(np.array([[10, 0, 0, 1], [0, 10, 1, 0], [0, 0, 10, 3]], np.int32), 8, axis=0)
    x = x + np.tile(np.arange(8)[:, None] % 2, (3, 4)).astype(np.int32)      # 0/1 jitter, non-integer means
    tokens = jnp.asarray(x.reshape(2, 3, 4, 4))
    td = td_jax.token_dynamics(tokens, 3, key=jax.random.key(0))
    assert td.base.dtype == jnp.float32
    m = np.asarray(td.dynamics_map).ravel()
    for j in range(3):
        np.testing.assert_allclose(np.asarray(td.base)[j], x[m == j].mean(0), rtol=1e-6)
    assert td_jax.kmeans(jnp.asarray(x), 3, key=jax.random.key(0)).raw_means.dtype == jnp.float32
    with pytest.raises(ValueError, match="real numbers"):
        td_jax.kmeans(jnp.asarray(x) * 1j, 3, key=jax.random.key(0))


def test_masked_rows_may_hold_nan_eager_and_jit(video):
    x, _ = video
    mask = np.ones(x.shape[:3], bool)
    mask[-2:] = False
    dirty = x.copy()
    dirty[-2:] = np.nan
    dirty[-1, 0, 0, 0] = np.inf
    clean = x.copy()
    clean[-2:] = 0.0
    want = td_jax.token_dynamics(jnp.asarray(clean), 6, key=jax.random.key(0), mask=jnp.asarray(mask))
    eager = td_jax.token_dynamics(jnp.asarray(dirty), 6, key=jax.random.key(0), mask=jnp.asarray(mask))
    jitted = jax.jit(lambda t, m: td_jax.token_dynamics(t, 6, key=jax.random.key(0), mask=m))(
        jnp.asarray(dirty), jnp.asarray(mask))
    for got in (eager, jitted):
        np.testing.assert_array_equal(np.asarray(got.dynamics_map), np.asarray(want.dynamics_map))
        np.testing.assert_allclose(np.asarray(got.base), np.asarray(want.base), rtol=1e-5, atol=1e-6)
        assert np.isfinite(np.asarray(got.base)).all()
    ad = td_jax.adaptive_token_dynamics(jnp.asarray(dirty), 8, key=jax.random.key(0), mask=jnp.asarray(mask))
    assert np.isfinite(np.asarray(ad.base)).all() and (np.asarray(ad.dynamics_map)[-2:] == -1).all()
    mask[-1] = True                                            # one NaN frame unmasked: a clear error
    with pytest.raises(ValueError, match=r"NaN/Inf in 144 unmasked rows"):
        td_jax.token_dynamics(jnp.asarray(dirty), 6, key=jax.random.key(0), mask=jnp.asarray(mask))


def test_bad_options_name_the_argument():
    x = jnp.ones((2, 3, 3, 8))
    key = jax.random.key(0)
    cases = [
        (lambda: td_jax.token_dynamics(x, 2, key=key, n_init=0), ValueError, "n_init must be >= 1"),
        (lambda: td_jax.kmeans(x.reshape(-1, 8), 2, key=key, n_init=0), ValueError, "n_init must be >= 1"),
        (lambda: td_jax.adaptive_token_dynamics(x, 3, key=key, k_min=5), ValueError, "k_min=5 must be <= k_max=3"),
        (lambda: td_jax.token_dynamics(jnp.ones((2, 3, 3, 0)), 2, key=key), ValueError, "D=0"),
        (lambda: td_jax.kmeans(jnp.ones((5, 0)), 2, key=key), ValueError, "D=0"),
        (lambda: td_jax.token_dynamics(x, 2, key=key, refine_iters=0), ValueError, "refine_iters must be >= 1"),
        (lambda: td_jax.token_dynamics(x, 2, key=key, iters=-1), ValueError, "iters must be >= 0"),
        (lambda: td_jax.token_dynamics(x, 2, key=key, sample_size=0), ValueError, "sample_size must be >= 1"),
        (lambda: td_jax.token_dynamics(x, 2, key=key, block_rows=0), ValueError, "block_rows must be >= 1"),
        (lambda: td_jax.token_dynamics(x, 2, key=key, tol=float("nan")), ValueError, "tol must be"),
        (lambda: td_jax.token_dynamics(x, 2, key=key, n_init=1.5), TypeError, "n_init must be an int"),
        (lambda: td_jax.adaptive_token_dynamics(x, 3, key=key, threshold=-1), ValueError, "threshold must be"),
        (lambda: td_jax.token_dynamics(x, 2, key=key, mask=jnp.ones((2, 3))), ValueError, r"mask shape \(2, 3\)"),
        (lambda: td_jax.kmeans(x.reshape(-1, 8), 2.0, key=key), TypeError, "k must be a Python int"),
        (lambda: td_jax.reconstruction_error(x, td_jax.token_dynamics(x, 2, key=key), "l1"), ValueError, "metric"),
    ]
    for fn, err, msg in cases:
        with pytest.raises(err, match=msg):
            fn()


def test_assert_finite_reports_rows_without_host_copy():
    x = jnp.zeros((4, 5, 3)).at[2, 1, 0].set(jnp.nan)
    with pytest.raises(ValueError, match=r"NaN/Inf in 1 unmasked rows \(first flat row 11\)"):
        td_jax.assert_finite(x, "feats")
    td_jax.assert_finite(jnp.ones((3, 2)))
    jax.jit(lambda v: td_jax.assert_finite(v) or v)(x)          # tracers: no check, no error


# ----------------------------------------------------------------------------- two levels (large k)


def test_two_level_kmeans_recovers_planted_clusters_and_masks():
    x, labels = blobs(9, 40, 48, 16, spread=0.03)              # 1920 rows, 48 clusters
    pad = np.full((64, 16), np.nan, np.float32)
    xx = np.concatenate([x, pad])
    mask = np.r_[np.ones(len(x), bool), np.zeros(64, bool)]
    f = lambda key: td_jax.kmeans(jnp.asarray(xx), 48, key=key, mask=jnp.asarray(mask), coarse_groups=6)
    res = f(jax.random.key(0))
    a = np.asarray(res.assignments)
    assert (a[len(x):] == -1).all() and int(res.counts.sum()) == len(x)
    assert adjusted_rand_score(labels, a[:len(x)]) >= 0.95
    assert np.isfinite(np.asarray(res.centroids)).all()
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    c = np.asarray(res.centroids)[a[:len(x)]]
    np.testing.assert_allclose(float(res.inertia), np.sum(1 - np.sum(xn * c, 1)), rtol=1e-3, atol=1e-2)
    again = f(jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(again.assignments), a)
    flat = td_jax.kmeans(jnp.asarray(xx), 48, key=jax.random.key(0), mask=jnp.asarray(mask), coarse_groups=1)
    assert float(res.inertia) <= 1.1 * float(flat.inertia)


def test_grouped_seeding_draws_each_groups_seeds_from_its_own_rows():
    """Greedy k-means++ in all groups at once (tiles of one group each, no padding to the
    largest group): seeds come from the group's first ``limit`` rows, are distinct while the
    group has rows left, and the reported potentials are the group's true potentials."""
    from td_jax.cluster import _SEED_TILE_ROWS as R, _greedy_grouped, _sort_groups, _tile_table
    rng = np.random.default_rng(0)
    sizes, limit, k = [5, 2 * R + 44, 0, R + 2], R + 22, 8                    # an empty group; tile boundaries
    groups = np.concatenate([np.full(s, i) for i, s in enumerate(sizes)] + [np.full(7, len(sizes))])  # + invalid
    rng.shuffle(groups)
    x = rng.standard_normal((len(groups), 6)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    own = _sort_groups(jax.random.key(1), jnp.asarray(groups), len(sizes))
    t_group, t_start, t_used, g_first = _tile_table(own, R, limit)
    rows = np.asarray(own.perm)[np.clip(np.asarray(t_start)[:, None] + np.arange(R), 0, len(x) - 1)]
    xt = np.where((np.arange(R) < np.asarray(t_used)[:, None])[..., None], x[rows], 0.0)
    g_rows = jnp.minimum(own.size, limit)
    seeds, pots = jax.jit(lambda key: _greedy_grouped(key, jnp.asarray(xt), t_group, t_used, g_first, g_rows, k, 3,
                                                      -(-limit // R)))(jax.random.key(2))
    seeds, pots = xt.reshape(-1, xt.shape[-1])[np.asarray(seeds)], np.asarray(pots)
    perm, start = np.asarray(own.perm), np.asarray(own.start)
    for gi, size in enumerate(sizes):
        if size == 0:
            continue
        mine = x[perm[start[gi]:start[gi] + min(size, limit)]]
        n_distinct = min(k, len(mine))
        hit = np.abs(seeds[gi][:, None, :] - mine[None]).max(-1) < 1e-6        # [k, rows]
        assert hit.any(1).all(), gi                                            # every seed is one of its rows
        assert len({int(np.argmax(h)) for h in hit[:n_distinct]}) == n_distinct
        dist = np.maximum(1 - mine @ seeds[gi].T, 0)                           # [rows, k]
        np.testing.assert_allclose(pots[gi], np.minimum.accumulate(dist, axis=1).sum(0), rtol=1e-4, atol=1e-4)
        assert np.all(np.diff(pots[gi]) <= 1e-5)


def test_two_level_vmap_equals_loop():
    xs = np.stack([blobs(s, 30, 20, 8, spread=0.1)[0] for s in range(2)])
    keys = jax.random.split(jax.random.key(0), 2)
    batched = jax.jit(jax.vmap(lambda x, k: td_jax.kmeans(x, 20, key=k, coarse_groups=4)))(jnp.asarray(xs), keys)
    for i in range(2):
        one = td_jax.kmeans(jnp.asarray(xs[i]), 20, key=keys[i], coarse_groups=4)
        np.testing.assert_array_equal(np.asarray(batched.assignments[i]), np.asarray(one.assignments))


# ----------------------------------------------------------------------------- adaptive: merging


def test_merge_path_joins_the_closest_clusters_first():
    from td_jax.dynamics import merge_path
    d = np.eye(4, 8, dtype=np.float32)
    d[1] = d[0] + 0.05 * np.eye(1, 8, 5, dtype=np.float32)[0]   # cluster 1 ~ cluster 0
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    counts = np.array([10, 10, 10, 0])                           # slot 3 is empty
    owners, clusters, dist = merge_path(jnp.asarray(d * counts[:, None]), jnp.asarray(counts), 1)
    owners, clusters, dist = np.asarray(owners), np.asarray(clusters), np.asarray(dist)
    assert clusters.tolist() == [1, 2, 3, 3]                     # k = 1..4; only 3 non-empty
    np.testing.assert_array_equal(owners[2][:3], [0, 1, 2])      # k = 3: nothing merged
    assert owners[1][1] == owners[1][0] and owners[1][2] != owners[1][0]   # k = 2: 0 and 1 joined
    assert dist[2] == pytest.approx(0.0, abs=1e-6) and dist[1] < 0.01 < dist[0]
    assert np.all(np.diff(dist) <= 1e-7)                         # more clusters, no more distortion
