"""Device mesh from config, logical-axis rules, and shardings for params / batches.

Mesh axes are always ``("data", "fsdp", "tensor")``; ``-1`` in one size means "all the
remaining devices". Parameters carry logical axis names (``nn.with_logical_partitioning``);
``config.axis_rules`` maps those names to mesh axes.
"""
from __future__ import annotations

import contextlib
import math
import re
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, int, int]:
    """Resolves ``{"data": -1, "fsdp": 2, "tensor": 1}`` against ``num_devices``.

    Raises ValueError when more than one axis is -1 or the product does not match.
    """
    dims = [int(sizes[a]) for a in MESH_AXES]
    free = [i for i, d in enumerate(dims) if d == -1]
    if len(free) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, dims))}")
    fixed = math.prod(d for d in dims if d != -1)
    if free:
        if num_devices % fixed:
            raise ValueError(f"mesh {dict(zip(MESH_AXES, dims))}: {num_devices} devices are not "
                             f"divisible by the fixed axes' product {fixed}")
        dims[free[0]] = num_devices // fixed
    if math.prod(dims) != num_devices:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, dims))} needs {math.prod(dims)} devices, "
                         f"have {num_devices}")
    return tuple(dims)


def make_mesh(sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``Mesh`` over ``devices`` (default: all) with axes ``data, fsdp, tensor``."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(sizes, len(devices))
    try:
        arr = jax.experimental.mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # non-TPU topologies the helper does not know: plain row-major order
        arr = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(arr, MESH_AXES)


def axis_rules(rules: Sequence[Sequence[Any]]) -> tuple[tuple[str, Any], ...]:
    """Normalises config rules (lists from JSON / tuples) to flax's ((name, axes), ...) form."""
    out = []
    for name, axes in rules:
        if isinstance(axes, list):
            axes = tuple(axes)
        if isinstance(axes, tuple):
            bad = [a for a in axes if a not in MESH_AXES]
        else:
            bad = [axes] if axes is not None and axes not in MESH_AXES else []
        if bad:
            raise ValueError(f"axis rule for {name!r} names unknown mesh axes {bad}; mesh axes are {MESH_AXES}")
        out.append((str(name), axes))
    return tuple(out)


@contextlib.contextmanager
def logical_context(mesh: Mesh, rules):
    """Inside traced code: makes ``nn.with_logical_constraint`` constrain onto ``mesh``.

    Sets the abstract mesh (allowed under ``jit``, unlike ``jax.set_mesh``) and flax's
    logical-axis rules.
    """
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(axis_rules(rules)):
        yield


def logical_to_shardings(logical_specs: Any, mesh: Mesh, rules) -> Any:
    """PartitionSpecs of logical names -> NamedShardings on ``mesh`` (pytree in, pytree out)."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, axis_rules(rules))


def param_shardings(abstract_boxed_params: Any, mesh: Mesh, rules) -> Any:
    """NamedShardings for a (boxed, abstract) param tree from ``jax.eval_shape(model.init)``.

    Unannotated leaves are replicated. Returns the *unboxed* structure.
    """
    specs = nn.get_partition_spec(abstract_boxed_params)
    shardings = logical_to_shardings(specs, mesh, rules)
    return fit_shardings(nn.unbox(abstract_boxed_params), shardings, mesh)


def fit_shardings(abstract: Any, shardings: Any, mesh: Mesh) -> Any:
    """Drops mesh axes from a dim they do not divide (e.g. a 3-row bias over 4 devices).

    Keeps sharding legal for any tiny config; returns the adjusted NamedShardings.
    """
    def fit(x, s):
        spec = list(s.spec) + [None] * (x.ndim - len(s.spec))
        new = []
        for dim, axes in zip(x.shape, spec):
            if axes is None:
                new.append(None)
                continue
            names = axes if isinstance(axes, tuple) else (axes,)
            size = math.prod(mesh.shape[a] for a in names)
            new.append(axes if dim % size == 0 else None)
        return NamedSharding(mesh, P(*new))

    return jax.tree.map(fit, abstract, shardings)


def _path_keys(path) -> tuple:
    out = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                out.append(getattr(k, attr))
                break
        else:
            out.append(str(k))
    return tuple(out)


def path_str(path) -> str:
    """'params/Dense_0/kernel'-style string for a pytree key path."""
    return "/".join(str(k) for k in _path_keys(path))


def mirror_shardings(abstract_tree: Any, params_abstract: Any, params_shardings: Any, mesh: Mesh) -> Any:
    """Shardings for a tree whose leaves mirror params (optimizer state: mu, nu, ...).

    A leaf whose key path ends with a param's key path and has that param's shape takes
    the param's sharding; every other leaf (counts, scalars) is replicated.
    """
    by_path = {}
    for (path, x), s in zip(jax.tree_util.tree_flatten_with_path(params_abstract)[0],
                            jax.tree.leaves(params_shardings)):
        by_path[_path_keys(path)] = (tuple(x.shape), s)
    replicated = NamedSharding(mesh, P())

    def pick(path, x):
        keys = _path_keys(path)
        for start in range(len(keys)):
            hit = by_path.get(keys[start:])
            if hit is not None and hit[0] == tuple(x.shape):
                return hit[1]
        return replicated

    return jax.tree_util.tree_map_with_path(pick, abstract_tree)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading (batch) dim over ``data`` x ``fsdp``; the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def regex_match(pattern: str, path: str) -> bool:
    return bool(pattern) and re.search(pattern, path) is not None
