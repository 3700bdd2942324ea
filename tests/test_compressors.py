"""Baseline compressors: budgets, masks, each method's defining property, jit / vmap / mesh."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from td_jax import compressors
from td_jax.compressors import frames as frames_mod
from td_jax.compressors import none as _none  # noqa: F401  (registers)
from td_jax.compressors import pool as pool_mod
from td_jax.compressors import prune as _prune  # noqa: F401  (registers)
from td_jax.compressors import token_learner as _token_learner  # noqa: F401  (registers)
from td_jax.compressors import tome as tome_mod
from td_jax.compressors.budget import plan

B, T, H, W, D = 2, 4, 6, 6, 16
N = T * H * W
KEY = jax.random.key(0)

# (name, cfg, budget): each method once at a budget it cannot fill exactly (padding shows).
CASES = [
    ("none", {}, N + 3),
    ("frames", {}, 2 * H * W + 5),
    ("pool", {}, T * 9 + 2),
    ("pool", {"out_hw": (2, 3)}, T * 6 + 1),
    ("tome", {}, 13),
    ("tome", {"mode": "frame"}, 13),
    ("prune", {}, 13),
    ("prune", {"mode": "frame"}, 13),
    ("token_learner", {}, 13),
    ("token_learner", {"mode": "video"}, 13),
    ("pool", {"kind": "area", "out_t": 2, "out_hw": (2, 3)}, 13),
    ("vidtome", {}, 13),
    ("dycoke", {}, 13),
    ("fastvid", {}, 13),
    ("visionzip", {}, 13),
    ("visionzip", {"mode": "frame"}, 13),
    ("holitom", {}, 13),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in c.items()) or 'default'}" for n, c, _ in CASES]
# jit / vmap / mesh: a method's second configuration that only regroups its tokens before the
# same core (tome / prune / visionzip per frame, pool's output grid) is marked slow; its
# default configuration checks the core under each transformation, and test_count_and_mask
# runs every configuration.
_REGROUPED = [("tome", {"mode": "frame"}), ("prune", {"mode": "frame"}), ("visionzip", {"mode": "frame"}),
              ("pool", {"out_hw": (2, 3)})]
TRANSFORM_CASES = [pytest.param(*c, id=i, marks=[pytest.mark.slow] if c[:2] in _REGROUPED else [])
                   for c, i in zip(CASES, IDS)]


@pytest.fixture(scope="session")   # cheap: rebuilt per xdist worker, so its tests spread
def tokens():
    return jnp.asarray(np.random.default_rng(0).standard_normal((B, T, H, W, D)), jnp.float32)


@pytest.fixture(scope="session")   # cheap: rebuilt per xdist worker, so its tests spread
def tokens8():
    return jnp.asarray(np.random.default_rng(1).standard_normal((8, T, H, W, D)), jnp.float32)


def run(name, cfg, budget, x, **kw):
    comp = compressors.get(name, **cfg)
    params = comp.init(jax.random.key(1), x, budget=budget)
    return comp(x, key=KEY, budget=budget, params=params, **kw)


def test_registry_lists_baselines():
    for name in ("none", "frames", "pool", "tome", "prune", "token_learner", "vidtome", "dycoke", "fastvid",
                 "visionzip", "holitom"):
        assert name in compressors.names()
    with pytest.raises(KeyError, match="known:.*pool"):
        compressors.get("no_such_method")
    with pytest.raises(TypeError, match="unknown config keys"):
        compressors.get("tome", stride=2)


@pytest.mark.parametrize("name,cfg,budget", CASES, ids=IDS)
def test_count_and_mask(name, cfg, budget, tokens):
    p = plan(name, budget, (T, H, W), **cfg)
    out = run(name, p.cfg, p.budget, tokens)
    assert out.tokens.shape == (B, budget, D)
    assert out.mask.shape == (B, budget) and out.mask.dtype == jnp.bool_
    # the planner's count is what the method fills, real tokens first, zero padding after
    np.testing.assert_array_equal(np.asarray(out.mask), np.arange(budget)[None].repeat(B, 0) < p.real_tokens)
    assert np.all(np.asarray(out.tokens)[~np.asarray(out.mask)] == 0)
    assert 1 <= p.real_tokens <= budget


@pytest.mark.parametrize("name,cfg,budget", TRANSFORM_CASES)
def test_jit_and_vmap(name, cfg, budget, tokens):
    comp = compressors.get(name, **cfg)
    params = comp.init(jax.random.key(1), tokens, budget=budget)
    eager = comp(tokens, key=KEY, budget=budget, params=params)
    jitted = jax.jit(lambda x: comp(x, key=KEY, budget=budget, params=params))(tokens)
    np.testing.assert_allclose(np.asarray(jitted.tokens), np.asarray(eager.tokens), atol=1e-5)
    # vmap over an extra leading axis: two groups of one video each == each video alone
    stacked = tokens[:, None]  # [2, 1, T, H, W, D]
    vm = jax.vmap(lambda x: comp(x, key=KEY, budget=budget, params=params))(stacked)
    for i in range(B):
        alone = comp(tokens[i:i + 1], key=KEY, budget=budget, params=params)
        np.testing.assert_allclose(np.asarray(vm.tokens[i]), np.asarray(alone.tokens), atol=1e-5)
        np.testing.assert_array_equal(np.asarray(vm.mask[i]), np.asarray(alone.mask))


@pytest.mark.parametrize("name,cfg,budget", TRANSFORM_CASES)
def test_mesh_8_devices_equals_1(name, cfg, budget, tokens8):
    assert jax.device_count() == 8
    comp = compressors.get(name, **cfg)
    params = comp.init(jax.random.key(1), tokens8, budget=budget)
    fn = jax.jit(lambda x: comp(x, key=KEY, budget=budget, params=params))
    single = jax.device_get(fn(jax.device_put(tokens8, jax.devices()[0])))
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded_in = jax.device_put(tokens8, NamedSharding(mesh, P("data")))
    sharded = fn(sharded_in)
    assert len(sharded.tokens.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(sharded.tokens), np.asarray(single.tokens), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(sharded.mask), np.asarray(single.mask))


def test_bad_shapes_and_budgets(tokens):
    with pytest.raises(ValueError, match=r"\[B, T, H, W, D\]"):
        compressors.get("tome")(tokens[0], key=KEY, budget=8)
    with pytest.raises(ValueError, match="none.*budget=10"):
        compressors.get("none")(tokens, key=KEY, budget=10)
    with pytest.raises(ValueError, match="smaller than one frame"):
        compressors.get("frames")(tokens, key=KEY, budget=H * W - 1)
    with pytest.raises(ValueError, match="more than budget"):
        compressors.get("pool")(tokens, key=KEY, budget=T * 9 - 1)
    with pytest.raises(ValueError, match="not both"):
        compressors.get("pool", stride=2, out_hw=(3, 3))(tokens, key=KEY, budget=100)
    for name in ("tome", "prune", "token_learner", "visionzip"):
        with pytest.raises(ValueError, match="mode"):
            run(name, {"mode": "clip"}, 8, tokens)
        with pytest.raises(ValueError, match="per frame|< T"):
            run(name, {"mode": "frame"}, T - 1, tokens)
    with pytest.raises(ValueError, match="out_t=2 needs kind='area'"):
        compressors.get("pool", out_t=2)(tokens, key=KEY, budget=100)
    # slot counts are whole numbers: a fraction is refused, never rounded
    with pytest.raises(ValueError, match="whole number"):
        compressors.get("prune")(tokens, key=KEY, budget=7.5)
    with pytest.raises(TypeError, match="integer number of slots"):
        compressors.get("prune")(tokens, key=KEY, budget="8")
    assert compressors.get("prune")(tokens, key=KEY, budget=8.0).tokens.shape == (B, 8, D)
    # a learned compressor called without params says how to get them
    with pytest.raises(ValueError, match=r"has parameters: create them with params = compressor.init"):
        compressors.get("token_learner")(tokens, key=KEY, budget=8)
    # method inputs a module does not take are refused by name
    with pytest.raises(ValueError, match="'tome' does not take the input 'saliency'"):
        compressors.get("tome")(tokens, key=KEY, budget=8, saliency=tokens[..., 0])


# --- none / frames ---------------------------------------------------------------------

def test_none_keeps_everything_in_order(tokens):
    out = compressors.get("none")(tokens, key=KEY, budget=N)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(tokens).reshape(B, N, D))
    np.testing.assert_array_equal(np.asarray(out.aux["assign"][0]), np.arange(N))


def test_frames_uniform_and_nearest_assign(tokens):
    out = compressors.get("frames", num_frames=2)(tokens, key=KEY, budget=2 * H * W)
    kept = frames_mod.uniform_frame_indices(T, 2)
    np.testing.assert_array_equal(kept, [0, T - 1])
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(tokens)[:, [0, T - 1]].reshape(B, -1, D))
    rec = np.take_along_axis(np.asarray(out.tokens), np.asarray(out.aux["assign"])[..., None], 1)
    rec = rec.reshape(B, T, H, W, D)
    # frames 0, 1 take frame 0; frames 2, 3 take frame 3 (T = 4)
    np.testing.assert_array_equal(rec[:, 1], np.asarray(tokens)[:, 0])
    np.testing.assert_array_equal(rec[:, 2], np.asarray(tokens)[:, 3])


# --- pool ------------------------------------------------------------------------------

@pytest.mark.parametrize("hw,out_hw", [((27, 27), (14, 14)), ((5, 7), (3, 4)), ((6, 6), (2, 5))])
def test_pool_matches_jax_image_resize(hw, out_hw):
    x = jnp.asarray(np.random.default_rng(2).standard_normal((1, 2) + hw + (8,)), jnp.float32)
    ref = jax.image.resize(x, (1, 2) + out_hw + (8,), method="bilinear", antialias=False)
    np.testing.assert_allclose(np.asarray(pool_mod.bilinear_resize(x, out_hw)), np.asarray(ref), atol=1e-5)


def test_pool_llava_onevision_grid_and_known_values():
    # 27x27 SigLIP grid -> ceil(27/2) = 14 per side, LLaVA-OneVision's 196 tokens per frame
    x = jnp.zeros((1, 1, 27, 27, 1))
    out = compressors.get("pool")(x, key=KEY, budget=196)
    np.testing.assert_array_equal(np.asarray(out.aux["grid"]), [1, 14, 14])
    # a linear ramp is reproduced exactly at the sample points (h=4 -> 2: src = 0.5, 2.5)
    ramp = jnp.arange(4.0)[None, None, :, None, None] * jnp.ones((1, 1, 4, 4, 1))
    got = compressors.get("pool")(ramp, key=KEY, budget=4).tokens.reshape(2, 2)
    np.testing.assert_allclose(np.asarray(got), [[0.5, 0.5], [2.5, 2.5]])


def test_pool_matches_torch_interpolate():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(3).standard_normal((2, 3, 27, 27, 8)).astype(np.float32)
    out = compressors.get("pool")(jnp.asarray(x), key=KEY, budget=3 * 196)
    tx = torch.from_numpy(x).reshape(6, 27, 27, 8).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(tx, size=[14, 14], mode="bilinear")
    ref = ref.permute(0, 2, 3, 1).reshape(2, 3 * 196, 8).numpy()
    np.testing.assert_allclose(np.asarray(out.tokens), ref, atol=1e-5)


# --- ToMe ------------------------------------------------------------------------------

def numpy_tome_round(x, size, r):
    """Straightforward reference of one ToMe round (loops; small inputs only)."""
    a, b = x[0::2], x[1::2]
    an = a / np.linalg.norm(a, axis=-1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=-1, keepdims=True)
    sim = an @ bn.T
    best, best_val = sim.argmax(-1), sim.max(-1)
    order = sorted(range(len(a)), key=lambda i: (-best_val[i], i))
    src, unm = order[:r], order[r:]
    sa, sb = size[0::2], size[1::2]
    acc_b, size_b = b * sb[:, None], sb.copy()
    for i in src:
        acc_b[best[i]] += a[i] * sa[i]
        size_b[best[i]] += sa[i]
    out = np.concatenate([a[unm], acc_b / size_b[:, None]])
    return out, np.concatenate([sa[unm], size_b]), src, best


def test_tome_round_matches_reference():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 23, 8)).astype(np.float32)
    size = rng.integers(1, 4, (1, 23)).astype(np.float32)
    r = 7
    got_x, got_s, _, pos = tome_mod.merge_round(jnp.asarray(x), jnp.asarray(size), r)
    ref_x, ref_s, src, best = numpy_tome_round(x[0], size[0], r)
    np.testing.assert_allclose(np.asarray(got_x[0]), ref_x, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got_s[0]), ref_s)
    # merges only across the split: every merged-away token is in A (even) and lands on
    # the slot of its best B (odd) partner; every B token keeps a slot of its own
    pos = np.asarray(pos[0])
    n_unm = 12 - r
    for i in src:
        assert pos[2 * i] == n_unm + best[i]
    np.testing.assert_array_equal(pos[1::2], n_unm + np.arange(11))
    assert len(set(pos[0::2][[i for i in range(12) if i not in src]])) == n_unm


@pytest.mark.parametrize("na,block", [(300, 128), (256, 64), (7, 128)])
def test_tome_blocked_best_match_equals_argmax(na, block):
    # the blocked (lax.map) search must pick exactly argmax's partner, ties to the lowest index
    rng = np.random.default_rng(na)
    a = rng.standard_normal((2, na, 8)).astype(np.float32)
    b = rng.standard_normal((2, 40, 8)).astype(np.float32)
    b[:, 20] = b[:, 3]                      # duplicate B rows: exact ties
    a[:, :5] = b[:, 3:4]                    # A rows whose best partner is tied between 3 and 20
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)  # noqa: E731
    a, b = unit(a), unit(b)
    best, top = tome_mod.best_match(jnp.asarray(a), jnp.asarray(b), block=block)
    scores = np.einsum("bid,bjd->bij", a, b)
    np.testing.assert_array_equal(np.asarray(best), np.asarray(jnp.argmax(jnp.asarray(scores), -1)))
    np.testing.assert_array_equal(np.asarray(best)[:, :5], 3)
    np.testing.assert_allclose(np.asarray(top), scores.max(-1), atol=1e-6)


@pytest.mark.parametrize("mode", ["video", "frame"])
def test_tome_conserves_size_weighted_sum(mode, tokens):
    budget = 13
    out = compressors.get("tome", mode=mode)(tokens, key=KEY, budget=budget)
    sizes, assign = np.asarray(out.aux["sizes"]), np.asarray(out.aux["assign"])
    flat = np.asarray(tokens).reshape(B, N, D)
    np.testing.assert_allclose((np.asarray(out.tokens) * sizes[..., None]).sum(1), flat.sum(1), atol=1e-4)
    np.testing.assert_allclose(sizes.sum(1), N)
    for i in range(B):
        counts = np.bincount(assign[i], minlength=budget)
        np.testing.assert_array_equal(counts, sizes[i])
        # each slot is the mean of exactly the inputs assigned to it
        sums = np.zeros((budget, D))
        np.add.at(sums, assign[i], flat[i])
        real = counts > 0
        np.testing.assert_allclose(sums[real] / counts[real, None], np.asarray(out.tokens[i])[real], atol=1e-5)
    if mode == "frame":
        per = budget // T
        frame_of_slot = assign.reshape(B, T, H * W) // per
        np.testing.assert_array_equal(frame_of_slot, np.arange(T)[None, :, None].repeat(B, 0).repeat(H * W, 2))


def test_tome_merges_duplicates_first_and_uses_given_metric():
    # pairs (2i, 2i+1) identical: one round with r = 4 must merge exactly such pairs
    rng = np.random.default_rng(5)
    base = rng.standard_normal((4, 8)).astype(np.float32)
    x = jnp.asarray(np.repeat(base, 2, axis=0)[None])           # [1, 8, 8]
    noise = jnp.asarray(rng.standard_normal((1, 8, 8)), jnp.float32)
    out, sizes, assign = tome_mod.merge_to(x + 0.0, 4)
    np.testing.assert_array_equal(np.asarray(assign[0]).reshape(4, 2)[:, 0], np.asarray(assign[0]).reshape(4, 2)[:, 1])
    np.testing.assert_allclose(np.asarray(sizes[0]), 2.0)
    # similarity measured on the metric, not on the (noise) tokens being merged
    _, _, assign_m = tome_mod.merge_to(noise, 4, metric=x)
    np.testing.assert_array_equal(np.asarray(assign_m[0]).reshape(4, 2)[:, 0], np.asarray(assign_m[0]).reshape(4, 2)[:, 1])


def test_tome_schedule_and_proportional_bias():
    assert tome_mod.merge_schedule(23328, 16) == [11664, 5832, 2916, 1458, 729, 364, 182, 91, 46, 23, 7]
    assert tome_mod.merge_schedule(10, 4, r=2) == [2, 2, 2]
    with pytest.raises(ValueError, match="max_rounds"):
        tome_mod.merge_schedule(1000, 1, r=1, max_rounds=10)
    bias = tome_mod.proportional_attention_bias(jnp.array([[1.0, 4.0, 0.0]]))
    np.testing.assert_allclose(np.asarray(bias[0, :2]), [0.0, np.log(4.0)])
    assert bias[0, 2] < -1e30


# --- prune -----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["video", "frame"])
def test_prune_keeps_top_norm_in_order(mode, tokens):
    budget = 12
    out = compressors.get("prune", mode=mode)(tokens, key=KEY, budget=budget)
    flat = np.asarray(tokens).reshape(B, N, D)
    norms = np.linalg.norm(flat, axis=-1)
    idx = np.asarray(out.aux["source_index"])
    for i in range(B):
        if mode == "video":
            want = np.sort(np.argsort(-norms[i])[:budget])
        else:
            per = budget // T
            want = np.concatenate([np.sort(np.argsort(-norms[i, t * H * W:(t + 1) * H * W])[:per]) + t * H * W
                                   for t in range(T)])
        np.testing.assert_array_equal(idx[i], want)
        np.testing.assert_array_equal(np.asarray(out.tokens[i]), flat[i, want])


def test_prune_attention_to_query(tokens):
    rng = np.random.default_rng(6)
    q = rng.standard_normal((B, 3, D)).astype(np.float32)
    out = compressors.get("prune").module(10).apply({}, tokens, query=jnp.asarray(q))
    flat = np.asarray(tokens).reshape(B, N, D).astype(np.float64)
    logits = np.einsum("bqd,bnd->bqn", q, flat) / np.sqrt(D)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    score = (p / p.sum(-1, keepdims=True)).mean(1)
    for i in range(B):
        np.testing.assert_array_equal(np.asarray(out.aux["source_index"][i]), np.sort(np.argsort(-score[i])[:10]))
    with pytest.raises(ValueError, match="query"):
        compressors.get("prune").module(10).apply({}, tokens, query=jnp.ones((B, D + 1)))


# --- TokenLearner ----------------------------------------------------------------------

def test_token_learner_params_and_convexity(tokens):
    comp = compressors.get("token_learner", bottleneck_dim=8)
    params = comp.init(jax.random.key(2), tokens, budget=8)
    learner = params["learner"]
    assert learner["hidden"]["kernel"].names == ("embed", "mlp")
    assert learner["hidden"]["kernel"].value.shape == (D, 8)
    assert learner["token_masking"]["kernel"].value.shape == (8, 8 // T)
    # learned tokens are convex combinations of a frame's tokens: a constant frame maps to itself
    const = jnp.broadcast_to(jnp.arange(T, dtype=jnp.float32)[None, :, None, None, None], (B, T, H, W, D))
    out = comp(const, key=KEY, budget=8, params=params)
    np.testing.assert_allclose(np.asarray(out.tokens).reshape(B, T, 2, D),
                               np.broadcast_to(np.arange(T)[None, :, None, None], (B, T, 2, D)), atol=1e-5)


def test_token_learner_permutation_invariant_and_trainable(tokens):
    comp = compressors.get("token_learner", mode="video", bottleneck_dim=8, dropout_rate=0.5)
    params = comp.init(jax.random.key(3), tokens, budget=6)
    perm = np.random.default_rng(7).permutation(N)
    shuffled = tokens.reshape(B, N, D)[:, perm].reshape(B, T, H, W, D)
    a = comp(tokens, key=KEY, budget=6, params=params).tokens
    b = comp(shuffled, key=KEY, budget=6, params=params).tokens
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    # dropout draws from the "compress" stream only when not deterministic
    d1 = comp(tokens, key=jax.random.key(10), budget=6, params=params, deterministic=False).tokens
    d2 = comp(tokens, key=jax.random.key(11), budget=6, params=params, deterministic=False).tokens
    assert not np.allclose(np.asarray(d1), np.asarray(d2))

    def loss(p):
        return jnp.sum(comp(tokens, key=KEY, budget=6, params=p).tokens ** 2)

    grads = jax.grad(loss)(params)
    g = grads["learner"]["hidden"]["kernel"]
    assert float(jnp.abs(getattr(g, "value", g)).max()) > 0


def test_tome_bench_times_dense_and_blocked_search_side_by_side():
    from experiments.benchmarks import tome_bench

    rows = tome_bench.measure(batch=2, tokens=600, dim=8, budget=8, blocks=[None, 64], repeats=1)
    assert [r["block"] for r in rows] == [None, 64]
    assert all(r["same_merge"] for r in rows) and rows[0]["speedup_vs_dense"] == 1.0
    assert "| blocked, 64 A rows |" in tome_bench.table(rows, 2, 600, 8, 8)
    with pytest.raises(ValueError, match="--budget"):
        tome_bench.measure(batch=1, tokens=8, dim=4, budget=8, blocks=[], repeats=1)
    with pytest.raises(ValueError, match="block size"):
        tome_bench.parse_block("0")


# ------------------------------------------------------------------------------ extreme token scales


def _video01():
    from td_jax.synthetic import structured_tokens
    x = structured_tokens(0, T, H, W, D)[0]
    return (x / np.abs(x).max())[None]                                  # max |x| = 1


@pytest.mark.parametrize("name,budget", [("prune", 13), ("tome", 13), ("base_only", 6)])
def test_subnormal_and_near_max_tokens_give_the_scaled_output(name, budget):
    """XLA on CPU flushes subnormals to zero and norms overflow near the float32 maximum: the
    functional call runs a scale-equivariant method on tokens shifted by an exact power of
    two and shifts its output back (issue 19)."""
    x = _video01()
    comp = compressors.get(name)
    ref = comp(jnp.asarray(x), key=KEY, budget=budget)
    for scale in (1e-38, 3e38):
        xs = jnp.asarray((x.astype(np.float64) * scale).astype(np.float32))
        out = comp(xs, key=KEY, budget=budget)
        np.testing.assert_array_equal(np.asarray(out.mask), np.asarray(ref.mask))
        np.testing.assert_allclose(np.asarray(out.tokens, np.float64) / scale, np.asarray(ref.tokens), rtol=1e-3,
                                   atol=2e-3, err_msg=f"{name} x{scale:g}")
    zero = comp(jnp.zeros_like(jnp.asarray(x)), key=KEY, budget=budget)    # all-zero tokens: no error, zero output
    assert not np.asarray(zero.tokens).any()


def test_methods_that_are_not_scale_equivariant_refuse_extreme_scales():
    x = jnp.asarray(_video01() * np.float32(1e-39))
    with pytest.raises(ValueError, match=r"compressor 'fastvid': the tokens' largest \|element\| is about 2\^-129, "
                                         r"outside \[2\^-100, 2\^112\).*rescale the tokens first"):
        compressors.get("fastvid")(x, key=KEY, budget=13)
    with pytest.raises(ValueError, match="compressor 'prune'.*not scale-equivariant"):   # a query's softmax is not
        compressors.get("prune")(x, key=KEY, budget=13, query=jnp.ones((1, D)))
    out = jax.jit(lambda v: compressors.get("fastvid").module(13).apply({}, v, rngs={"compress": KEY}))(x)
    assert out.tokens.shape == (1, 13, D)                                   # traced: no check, no error
