"""td_jax.dense.flat_dot_general: a dense layer's [..., D] @ [D, F] as one 2-D GEMM, the same
values and gradients as lax.dot_general, other contractions untouched, the same parameters
in nn.Dense, the same result on 8 devices as on one, and every dense layer of td_jax is it."""
import pathlib
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from td_jax import dense


def _fn(dot):
    def f(w, x):
        return jnp.sum(jnp.tanh(dot(x, w, (((x.ndim - 1,), (0,)), ((), ())))) ** 2)
    return f


def test_flat_form_equals_dot_general_with_gradients():
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (4, 6, 5, 8))
    w = jax.random.normal(kw, (8, 3))
    ref_v, ref_g = jax.value_and_grad(_fn(lax.dot_general), argnums=(0, 1))(w, x)
    v, g = jax.jit(jax.value_and_grad(_fn(dense.flat_dot_general), argnums=(0, 1)))(w, x)
    np.testing.assert_allclose(v, ref_v, rtol=1e-5)
    for a, b in zip(g, ref_g):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # the flattened form is what runs: one 2-D dot in the program, no 4-D one
    hlo = jax.jit(lambda w, x: dense.flat_dot_general(x, w, (((3,), (0,)), ((), ())))).lower(w, x).as_text()
    assert "tensor<120x8xf32>" in hlo and "dot_general" in hlo
    with dense.flattening(False):
        hlo3 = jax.jit(lambda w, x: dense.flat_dot_general(x, w, (((3,), (0,)), ((), ())))).lower(w, x).as_text()
    assert "tensor<120x8xf32>" not in hlo3


def test_other_contractions_pass_through():
    a = jax.random.normal(jax.random.key(1), (2, 3, 4))
    b = jax.random.normal(jax.random.key(2), (2, 4, 5))
    dn = (((2,), (1,)), ((0,), (0,)))                       # batched matmul: not a dense layer's
    np.testing.assert_array_equal(dense.flat_dot_general(a, b, dn), lax.dot_general(a, b, dn))
    m = jax.random.normal(jax.random.key(3), (3, 4))
    np.testing.assert_array_equal(dense.flat_dot_general(m, m.T, (((1,), (0,)), ((), ()))), m @ m.T)


def test_dense_layer_same_parameters_and_outputs_on_8_devices():
    layer = dense.Dense(7)
    plain = nn.Dense(7)
    x = jax.random.normal(jax.random.key(4), (8, 5, 6))
    params = layer.init(jax.random.key(5), x)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, plain.init(jax.random.key(5), x))
    want = plain.apply(params, x)
    np.testing.assert_allclose(layer.apply(params, x), want, rtol=1e-6, atol=1e-6)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))       # auto axes, as td_jax.train.mesh
    xs = jax.device_put(x, jax.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
    out = jax.jit(layer.apply)(params, xs)
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(layer.apply(p, x) ** 2)))(params, xs)
    ref = jax.grad(lambda p, x: jnp.sum(plain.apply(p, x) ** 2))(params, x)
    for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_every_dense_layer_of_the_library_is_the_flat_one():
    """One dense layer: no module of td_jax builds flax's nn.Dense (or its 3-D matmul) itself."""
    root = pathlib.Path(dense.__file__).parent
    direct = [f"{p.relative_to(root)}:{i + 1}" for p in sorted(root.rglob("*.py")) if p.name != "dense.py"
              for i, line in enumerate(p.read_text().splitlines()) if re.search(r"\bnn\.Dense(General)?\(", line)]
    assert direct == []
    assert dense.Dense(3).dot_general is dense.flat_dot_general
