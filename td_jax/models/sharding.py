"""The one logical-axis rules table: logical names → mesh axes ``("data", "fsdp", "tensor")``.

Parameters carry logical names (``embed``, ``mlp``, ``heads``, ``kv``, ``vocab``, ``norm``,
``vision_*``); activations use ``act_*`` names so that a parameter dimension and the
activation dimension of the same width can be sharded differently.  The framework's config
default ``config.axis_rules`` *is* :data:`AXIS_RULES` (``td_jax.train.config.defaults``);
FSDP / tensor parallelism change by overriding it, never by editing a model.
:data:`ACTIVATION_AXES` lists the activation names the models constrain, so the trainer can
refuse a rules table that forgets one (a missing rule would silently replicate it).
"""
from __future__ import annotations

MESH_AXES = ("data", "fsdp", "tensor")

# (logical name, mesh axis or axes or None)
AXIS_RULES: tuple[tuple[str, object], ...] = (
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

ACTIVATION_AXES = tuple(name for name, _ in AXIS_RULES if name.startswith("act_"))

# Pure data parallelism: only the batch is split.
DATA_PARALLEL_RULES: tuple[tuple[str, object], ...] = tuple(
    (name, ("data", "fsdp") if name == "act_batch" else None) for name, _ in AXIS_RULES)
