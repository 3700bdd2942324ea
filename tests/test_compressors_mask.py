"""Padded batches through the registry: every method that takes ``mask`` excludes masked
tokens and never marks a slot fed only by padding as real."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from td_jax import compressors
from td_jax.compressors.base import Compressed, Compressor, CompressorModule, accepts
from td_jax.compressors.budget import plan
from td_jax.synthetic import structured_tokens

T, H, W, D = 8, 4, 4, 8
LENGTHS = (8, 5, 3, 1)               # real frames of the 4 videos (the rest zero-padded)
KEY = jax.random.key(0)

# (name, cfg, budget) for every method taking a mask; token dynamics' family joins when it does
CASES = [("none", {}, T * H * W), ("frames", {}, 2 * H * W), ("pool", {}, 12),
         ("pool", {"kind": "bilinear", "stride": 2}, T * 4), ("prune", {}, 12), ("prune", {"mode": "frame"}, 16),
         ("tome", {}, 12), ("tome", {"mode": "frame"}, 16), ("token_learner", {}, 16),
         ("token_learner", {"mode": "video"}, 12), ("vidtome", {}, 12), ("dycoke", {}, 12), ("fastvid", {}, 12),
         ("visionzip", {}, 12), ("visionzip", {"mode": "frame"}, 16), ("holitom", {}, 12)]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in c.items()) or 'default'}" for n, c, _ in CASES]
# methods that fill every slot with real tokens whenever a video has enough of them
FILLS = {"prune", "tome", "fastvid", "visionzip", "dycoke", "holitom", "pool"}


def batch(seed=0):
    x = np.stack([structured_tokens(seed + i, T, H, W, D)[0] for i in range(len(LENGTHS))])
    frame_mask = np.arange(T)[None, :] < np.asarray(LENGTHS)[:, None]
    return x, frame_mask


def setup(name, cfg, budget, x):
    p = plan(name, budget, (T, H, W), **cfg)
    comp = p.compressor()
    params = comp.init(jax.random.key(1), jnp.asarray(x), budget=p.budget, mask=jnp.ones(x.shape[:2], bool))
    return p, comp, params


def test_every_method_but_token_dynamics_takes_a_mask():
    takes = {n for n in compressors.names() if accepts(compressors.get(n).module_cls, "mask")}
    assert {n for n, _, _ in CASES} <= takes


@pytest.mark.parametrize("name,cfg,budget", CASES, ids=IDS)
def test_padding_is_excluded(name, cfg, budget):
    x, fm = batch()
    p, comp, params = setup(name, cfg, budget, x)
    run = lambda v, m: comp(jnp.asarray(v), key=KEY, budget=p.budget, params=params, mask=m)
    out = run(np.where(fm[:, :, None, None, None], x, 0.0), jnp.asarray(fm))
    # whatever the padding holds (zeros, noise, NaN) the output is the same and finite
    noisy = np.where(fm[:, :, None, None, None], x, np.random.default_rng(9).standard_normal(x.shape) * 50)
    nan = np.where(fm[:, :, None, None, None], x, np.nan)
    for other in (noisy, nan):
        o = run(other, jnp.asarray(fm))
        np.testing.assert_allclose(np.asarray(o.tokens), np.asarray(out.tokens), atol=1e-5)
        np.testing.assert_array_equal(np.asarray(o.mask), np.asarray(out.mask))
    assert np.isfinite(np.asarray(out.tokens)).all()
    # a per-frame [B, T] mask is the [B, T, H, W] mask broadcast
    full = run(x, jnp.asarray(np.broadcast_to(fm[:, :, None, None], (len(LENGTHS), T, H, W))))
    np.testing.assert_allclose(np.asarray(full.tokens), np.asarray(out.tokens), atol=1e-5)
    real_slots = np.asarray(out.mask).sum(1)
    n_real = np.asarray(LENGTHS) * H * W
    assert (real_slots <= n_real).all() and (real_slots >= 1).all()
    assert np.all(np.asarray(out.tokens)[~np.asarray(out.mask)] == 0)
    if "assign" in out.aux:
        a = np.asarray(out.aux["assign"]).reshape(len(LENGTHS), T, H * W)
        assert (a[~fm] == -1).all()                 # padded tokens stand in for nothing
        assert (a[fm] < p.budget).all()
        for i in range(len(LENGTHS)):              # every slot a real token maps to is a real slot
            used = np.unique(a[i][fm[i]])
            assert np.asarray(out.mask[i])[used[used >= 0]].all()
    if name in FILLS and cfg.get("mode", "video") == "video" and cfg.get("kind", "area") == "area":
        np.testing.assert_array_equal(real_slots, np.minimum(p.real_tokens, n_real))


@pytest.mark.parametrize("name,cfg,budget", CASES, ids=IDS)
def test_all_padding_gives_no_real_slot(name, cfg, budget):
    x, _ = batch(3)
    p, comp, params = setup(name, cfg, budget, x)
    fm = np.ones((len(LENGTHS), T), bool)
    fm[1] = False                                   # video 1 is padding only
    out = comp(jnp.asarray(x), key=KEY, budget=p.budget, params=params, mask=jnp.asarray(fm))
    assert not np.asarray(out.mask[1]).any()
    assert np.asarray(out.mask[0]).any()


PADDING_INVARIANT = [("prune", {}), ("frames", {"num_frames": 2}),
                     ("pool", {"kind": "area", "out_t": 1, "out_hw": (2, 2)}),
                     ("visionzip", {}), ("fastvid", {}), ("dycoke", {}), ("holitom", {})]


@pytest.mark.parametrize("name,cfg", PADDING_INVARIANT, ids=[n for n, _ in PADDING_INVARIANT])
def test_padded_video_equals_the_unpadded_one(name, cfg):
    """For methods whose steps are per real frame or over real tokens only, a video padded
    with frames gives exactly the real slots the unpadded video gives."""
    x, _ = batch(5)
    n = 3
    budget = {"frames": 2 * H * W, "pool": 4}.get(name, 10)
    comp = compressors.get(name, **cfg)
    fm = np.arange(T)[None, :] < n
    padded = comp(jnp.asarray(x[:1]), key=KEY, budget=budget, mask=jnp.asarray(fm))
    alone = comp(jnp.asarray(x[:1, :n]), key=KEY, budget=budget)
    keep_p, keep_a = np.asarray(padded.mask[0]), np.asarray(alone.mask[0])
    assert keep_p.sum() == keep_a.sum() > 0
    np.testing.assert_allclose(np.asarray(padded.tokens[0])[keep_p], np.asarray(alone.tokens[0])[keep_a], atol=1e-5)


def test_mask_errors():
    x = jnp.zeros((2, T, H, W, D))
    with pytest.raises(ValueError, match=r"mask must be \[B, T, H, W\]=\[2, 8, 4, 4\] or per-frame \[B, T\]"):
        compressors.get("prune")(x, key=KEY, budget=4, mask=jnp.ones((2, T, H)))

    class _NoMask(CompressorModule):
        def __call__(self, tokens, deterministic=True):
            return Compressed(tokens=tokens[:, 0, 0, :1], mask=jnp.ones(tokens.shape[:1] + (1,), bool))

    comp = Compressor(name="no_mask", module_cls=_NoMask, cfg={})
    assert comp(x, key=KEY, budget=1).tokens.shape == (2, 1, D)
    with pytest.raises(ValueError, match="'no_mask' does not take masks"):
        comp(x, key=KEY, budget=1, mask=jnp.ones((2, T), bool))


@pytest.mark.parametrize("name", ["base_map", "random_base"])
def test_token_dynamics_ablations_ignore_padding(name):
    """base_map's per-frame map tokens of padded frames are not real (a padding-only video had
    T real slots); random_base's noise scale is the RMS norm of the real tokens only."""
    x, fm = batch()
    x[~fm] = 0.0
    noisy = x.copy()
    noisy[~fm] = 100.0 * np.random.default_rng(3).standard_normal(noisy[~fm].shape)
    budget = T + 4 if name == "base_map" else 4
    comp = compressors.get(name)
    params = comp.init(jax.random.key(1), jnp.asarray(x), budget=budget, mask=jnp.asarray(fm))
    run = lambda v, m: comp(jnp.asarray(v), key=KEY, budget=budget, params=params, mask=jnp.asarray(m))
    a, b = run(x, fm), run(noisy, fm)
    np.testing.assert_array_equal(np.asarray(a.mask), np.asarray(b.mask))
    np.testing.assert_allclose(np.asarray(a.tokens)[np.asarray(a.mask)], np.asarray(b.tokens)[np.asarray(b.mask)],
                               atol=1e-5)
    if name == "base_map":                      # K base slots, then one map token per frame: real frames only
        np.testing.assert_array_equal(np.asarray(a.mask)[:, 4:], fm)
    empty = run(x, np.zeros_like(fm))
    assert not np.asarray(empty.mask).any()
