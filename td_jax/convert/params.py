"""Parameter trees without a second copy of the weights: abstract shapes, the compressor's
fresh parameters, and checks that name every differing path.

    abstract, init_compressor = abstract_video_llm(module, num_frames=8)   # no arrays allocated
    fresh = init_compressor(key)            # only the compressor's parameters (None: it has none)
    params = fit_params(params, abstract, init_compressor, key=key, source=path)

``abstract_video_llm`` traces ``VideoLLM.init`` under ``jax.eval_shape`` (shapes only) and,
while tracing, records the arguments the compressor module is called with; the compressor
alone is then initialised for real (one small video), so a learned compressor never costs a
concrete ``init`` of the whole model (an extra fp32 copy: ~3.6 GB at LLaVA-OV-0.5B).
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from td_jax import compressors

COMPRESSOR = "compressor"     # the VideoLLM attribute (and top-level param key) of the compressor


def _flat(tree) -> dict[str, Any]:
    return {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(tree).items()}


def tree_problems(got, want, *, limit: int = 12) -> list[str]:
    """Differences between two parameter trees (arrays or ShapeDtypeStructs), by path:
    ``["missing (n): a/b, ...", "unexpected (n): ...", "mis-shaped (n): path (got) vs (want), ..."]``;
    empty when every path and shape agrees."""
    g, w = _flat(got), _flat(want)
    missing = sorted(set(w) - set(g))
    unexpected = sorted(set(g) - set(w))
    shaped = sorted(p for p in set(g) & set(w) if tuple(np.shape(g[p])) != tuple(np.shape(w[p])))

    def show(name, items, fmt=str):
        more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
        return f"{name} ({len(items)}): " + ", ".join(fmt(p) for p in items[:limit]) + more

    out = []
    if missing:
        out.append(show("missing from the checkpoint", missing))
    if unexpected:
        out.append(show("not in the model", unexpected))
    if shaped:
        out.append(show("mis-shaped", shaped, lambda p: f"{p} {tuple(np.shape(g[p]))} vs model "
                                                         f"{tuple(np.shape(w[p]))}"))
    return out


def check_params(got, want, *, source: str) -> None:
    """ValueError listing every missing / unexpected / mis-shaped parameter path."""
    problems = tree_problems(got, want)
    if problems:
        raise ValueError(f"{source}: parameters do not match the model: " + "; ".join(problems))


def _abstract_leaf(x):
    return jax.ShapeDtypeStruct(x.shape, x.dtype) if hasattr(x, "shape") and hasattr(x, "dtype") else x


def _dummy(sds, key):
    if not isinstance(sds, jax.ShapeDtypeStruct):
        return sds
    if jnp.issubdtype(sds.dtype, jnp.floating):
        return jax.random.normal(key, sds.shape, jnp.float32).astype(sds.dtype)
    if sds.dtype == jnp.bool_:
        return jnp.ones(sds.shape, bool)
    return jnp.zeros(sds.shape, sds.dtype)


def init_args(cfg, num_frames: int) -> tuple:
    """Dummy ``VideoLLM.__call__`` arguments: one row, one placeholder, ``num_frames`` frames
    (uint8 ``[1, T, R, R, 3]``) or precomputed tokens when the model has no vision tower."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    ids = jnp.full((1, 2), cfg.video_token_id, jnp.int32).at[0, 1].set(cfg.pad_id)
    if cfg.vision is not None:
        R = cfg.vision.image_size
        return ids, None, jax.ShapeDtypeStruct((1, num_frames, R, R, 3), jnp.uint8)
    raise ValueError("init_args: a VLMConfig without a vision tower needs the visual token shape; "
                     "initialise it with the task's abstract batch instead")


def abstract_video_llm(module, num_frames: int, *, args: tuple | None = None, kwargs: dict | None = None
                       ) -> tuple[dict, Callable[[jax.Array], dict] | None]:
    """(abstract params of ``module`` (ShapeDtypeStructs, unboxed), ``init_compressor(key)``
    returning the compressor's own freshly initialised params, or None when it has none).

    ``args``: ``VideoLLM.__call__`` positional arguments (arrays or ShapeDtypeStructs);
    default :func:`init_args` with ``num_frames`` frames; ``kwargs``: its keyword arguments
    (e.g. ``precomputed=`` a stored compressor stage, arrays or ShapeDtypeStructs)."""
    args = init_args(module.cfg, num_frames) if args is None else args
    seen: dict[str, Any] = {}

    def capture(next_fun, a, kw, ctx):
        # the compressor's call on media, or its learned stage on a stored one
        if (ctx.method_name in ("__call__", "apply_precomputed") and COMPRESSOR not in seen
                and ctx.module.scope is not None and tuple(ctx.module.path) == (COMPRESSOR,)):
            seen[COMPRESSOR] = (ctx.module.clone(parent=None, name=None), jax.tree.map(_abstract_leaf, a),
                                jax.tree.map(_abstract_leaf, kw), ctx.method_name)
        return next_fun(*a, **kw)

    def init():
        rngs = {"params": jax.random.key(0), compressors.RNG_STREAM: jax.random.key(1),
                "dropout": jax.random.key(2)}
        zeros = lambda x: jnp.zeros(x.shape, x.dtype) if isinstance(x, jax.ShapeDtypeStruct) else x  # noqa: E731
        concrete = [zeros(x) for x in args]
        kw = jax.tree.map(zeros, dict(kwargs or {}), is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
        with nn.intercept_methods(capture):
            return module.init(rngs, *concrete, **kw)["params"]

    abstract = nn.unbox(jax.eval_shape(init))
    if COMPRESSOR not in abstract:
        return abstract, None
    comp, c_args, c_kw, method = seen[COMPRESSOR]
    want = abstract[COMPRESSOR]

    leaves, treedef = jax.tree.flatten((c_args, c_kw), is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
    is_array = [isinstance(x, jax.ShapeDtypeStruct) for x in leaves]

    def init_compressor(key: jax.Array) -> dict:
        k_params, k_rng, k_drop, k_data = jax.random.split(key, 4)
        rngs = {"params": k_params, compressors.RNG_STREAM: k_rng, "dropout": k_drop}

        def run(*arrays):        # the recorded call, with these arrays where it had arrays
            it = iter(arrays)
            a, kw = jax.tree.unflatten(treedef, [next(it) if arr else x for x, arr in zip(leaves, is_array)])
            return comp.init(rngs, *a, method=getattr(type(comp), method), **kw)["params"]

        keys = jax.random.split(k_data, max(len(leaves), 1))
        dummies = [_dummy(x, k) for x, k, arr in zip(leaves, keys, is_array) if arr]
        fresh = nn.unbox(jax.jit(run)(*dummies))
        problems = tree_problems(fresh, want)
        if problems:   # the standalone module must build exactly the tree it has inside the model
            raise RuntimeError(f"compressor {module.cfg.compressor!r}: standalone init differs from the model's "
                               "tree: " + "; ".join(problems))
        return fresh

    return abstract, init_compressor


def cast_like(params, abstract):
    """``params`` with every float leaf cast to the dtype of its ``abstract`` leaf."""
    def cast(x, a):
        x = jnp.asarray(x)
        return x.astype(a.dtype) if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != a.dtype else x
    return jax.tree.map(cast, params, abstract)


def fit_params(params: dict, abstract: dict, init_compressor: Callable[[jax.Array], dict] | None, *,
               key: jax.Array | None = None, source: str) -> dict:
    """``params`` made to fit a model whose compressor may differ from the one they came with.

    Everything outside ``params["compressor"]`` must match ``abstract`` exactly (ValueError
    listing the differing paths otherwise). The compressor's own parameters are kept when they
    fit, dropped when the model's compressor has none, and freshly initialised (a warning says
    so) when the checkpoint has none or other ones.  Floats are cast to the model's dtypes.
    """
    rest = {k: v for k, v in params.items() if k != COMPRESSOR}
    want_rest = {k: v for k, v in abstract.items() if k != COMPRESSOR}
    check_params(rest, want_rest, source=source)
    out = dict(rest)
    have = params.get(COMPRESSOR)
    if COMPRESSOR in abstract:
        if have is not None and not tree_problems(have, abstract[COMPRESSOR]):
            out[COMPRESSOR] = have
        else:
            if init_compressor is None:
                raise ValueError(f"{source}: the model's compressor needs parameters the checkpoint does not have")
            logging.warning("%s: the compressor's parameters are freshly initialised (%s)", source,
                            "not in the checkpoint" if have is None else "the checkpoint's belong to another compressor")
            out[COMPRESSOR] = init_compressor(jax.random.key(0) if key is None else key)
    elif have:
        logging.warning("%s: the checkpoint's compressor parameters are not used by this model's compressor", source)
    return cast_like(out, abstract)
