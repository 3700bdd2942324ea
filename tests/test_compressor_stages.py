"""Every compressor's two stages: the stored parameter-free stage plus the learned stage on it
equal the whole call, with the same parameter tree, and a video's stored stage does not
depend on the batch it was computed in."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from td_jax import compressors

B, T, H, W, D = 3, 4, 4, 4, 16
N = T * H * W
BUDGETS = {"none": N, "frames": 2 * H * W, "base_map": T + 3, "pool": 16}


def _budget(name):
    return BUDGETS.get(name, 8)


def _cfg(name):
    if name in ("token_dynamics", "random_map", "random_base"):
        return {"iters": 5, "n_init": 1, "num_heads": 2}
    if name in ("base_only", "base_map"):          # no attention: its fields are refused
        return {"iters": 5, "n_init": 1}
    if name == "token_learner":
        return {"mode": "video"}
    return {}


@pytest.fixture(scope="module")
def tokens():
    return jnp.asarray(np.random.default_rng(0).standard_normal((B, T, H, W, D)), jnp.float32)


@pytest.mark.parametrize("name", compressors.names())
def test_stored_stage_plus_learned_stage_equals_the_call(name, tokens):
    module = compressors.get(name, **_cfg(name)).module(_budget(name))
    rngs = {"params": jax.random.key(1), compressors.RNG_STREAM: jax.random.key(2)}
    variables = module.init(rngs, tokens)
    key = {compressors.RNG_STREAM: jax.random.key(3)}
    whole = module.apply(variables, tokens, rngs=key)
    stage = module.apply({}, tokens, rngs=key, method=type(module).precompute)
    assert all(v.shape[0] == B for v in jax.tree.leaves(stage))
    again = module.apply(variables, stage, method=type(module).apply_precomputed)
    np.testing.assert_allclose(np.asarray(again.tokens), np.asarray(whole.tokens), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(again.mask), np.asarray(whole.mask))
    init2 = module.init(rngs, stage, method=type(module).apply_precomputed)
    assert (jax.tree_util.tree_structure(init2) == jax.tree_util.tree_structure(variables)
            and [x.shape for x in jax.tree.leaves(init2)] == [x.shape for x in jax.tree.leaves(variables)])


@pytest.mark.parametrize("name", ["token_dynamics", "tome", "random_map"])
def test_functional_precompute_is_per_video(name, tokens):
    comp = compressors.get(name, **_cfg(name))
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(7), i))(jnp.arange(B))
    batch = comp.precompute(tokens, keys=keys, budget=_budget(name))
    for i in range(B):
        alone = comp.precompute(tokens[i:i + 1], keys=keys[i:i + 1], budget=_budget(name))
        for k in batch:
            np.testing.assert_allclose(np.asarray(batch[k][i]), np.asarray(alone[k][0]), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="one key per video"):
        comp.precompute(tokens, keys=keys[:1], budget=_budget(name))


def test_stage_specs_say_which_arms_can_share_a_store():
    spec = lambda name, budget, **kw: compressors.get(name, iters=5, **kw).module(budget).stage_spec(T)  # noqa: E731
    assert spec("token_dynamics", 6) == spec("base_only", 6) == spec("token_dynamics", 6, attention="paper")
    assert spec("base_map", T + 6) == spec("token_dynamics", 6)          # K = budget - T
    assert spec("random_map", 6) != spec("token_dynamics", 6) != spec("token_dynamics", 5)
    assert compressors.get("tome").module(8).stage_spec(T) != compressors.get("tome").module(9).stage_spec(T)
