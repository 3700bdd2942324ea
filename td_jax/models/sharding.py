"""Default logical-axis rules for the models (FSDP + tensor parallelism by a rules change).

Parameters carry logical names (``embed``, ``mlp``, ``heads``, ``kv``, ``vocab``, ``norm``,
``vision_*``); activations use ``act_*`` names so that a parameter dimension and the
activation dimension of the same width can be sharded differently.  Mesh axes are
``("data", "fsdp", "tensor")``.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np

MESH_AXES = ("data", "fsdp", "tensor")

# (logical name, mesh axis or axes or None)
DEFAULT_RULES: tuple[tuple[str, object], ...] = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", "tensor"),
    ("norm", None),
    ("vision_embed", "fsdp"),
    ("vision_mlp", "tensor"),
    ("vision_heads", "tensor"),
    ("vision_pos", None),
    ("patch_h", None),
    ("patch_w", None),
    ("compat_in", None),
    ("compat_out", None),
    # activations
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
    ("act_kv", "tensor"),
    ("act_vocab", "tensor"),
)

# Pure data parallelism: only the batch is split.
DATA_PARALLEL_RULES: tuple[tuple[str, object], ...] = tuple(
    (name, ("data", "fsdp") if name == "act_batch" else None) for name, _ in DEFAULT_RULES)


def make_mesh(shape: tuple[int, int, int] = (1, 1, 1), devices=None) -> jax.sharding.Mesh:
    """A ``("data", "fsdp", "tensor")`` mesh over ``devices`` (default: all)."""
    devices = jax.devices() if devices is None else devices
    n = int(np.prod(shape))
    if n != len(devices):
        raise ValueError(f"mesh shape {shape} needs {n} devices, have {len(devices)}")
    return jax.sharding.Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def param_shardings(abstract_variables, mesh: jax.sharding.Mesh, rules=DEFAULT_RULES):
    """NamedShardings for a (possibly abstract) boxed variable tree from ``module.init``.

    ``abstract_variables`` is the output of ``jax.eval_shape(module.init, ...)`` (leaves
    wrapped in ``nn.LogicallyPartitioned``); the result is a tree of shardings matching
    the *unboxed* tree.
    """
    specs = nn.get_partition_spec(abstract_variables)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)
