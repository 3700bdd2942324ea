"""Experiment config schema and validation.

Every experiment is an ``ml_collections.ConfigDict``. The framework owns the top-level
keys listed in :func:`defaults`; the task named by ``config.task.name`` owns the
``config.task`` subtree (its :meth:`Task.default_config`). :func:`resolve` fills in
defaults and rejects unknown keys and wrong types, naming the dotted key::

    cfg = resolve(user_cfg, task_defaults)   # ValueError: unknown config key 'optim.lr_peak' ...

A few subtrees hold user-named entries (``optim.groups.<name>``); their entries are
validated against an entry schema (``pattern: str``, ``lr: float``).
"""
from __future__ import annotations

import difflib
from typing import Any, Mapping

import ml_collections as mlc

from td_jax.models.sharding import AXIS_RULES

# Subtrees whose keys are user-chosen names; each value must match the entry schema.
_NAMED_ENTRY_SCHEMAS: dict[str, dict[str, type]] = {
    "optim.groups": {"pattern": str, "lr": float},
}

REQUIRED_KEYS = ("total_steps", "log_every_steps", "checkpoint_every_steps", "seed")


def defaults() -> mlc.ConfigDict:
    """Framework defaults; every experiment config is checked against these keys."""
    c = mlc.ConfigDict()
    c.seed = 0
    c.total_steps = 100
    c.log_every_steps = 10
    c.checkpoint_every_steps = 50
    c.eval_every_steps = 0            # 0: evaluate only at the end
    c.eval_steps = 0                  # batches per evaluation; 0: the whole eval split once
    c.eval_split = "validation"       # the split of the periodic (and best-checkpoint) evaluations
    c.final_eval_splits = ()          # also evaluated once after the last step: WORKDIR/eval_<split>_<step>.json
    c.steps_per_call = 1              # optimizer steps per jitted call (a lax.scan over that many batches)
    c.warm_start = ""                 # a run directory whose checkpoint's params start this run (fresh optimizer)
    c.warm_start_step = -1            # its step (-1: the newest complete one)
    c.batch_size = 8                  # global batch (all processes), per optimizer step
    c.eval_batch_size = 8

    c.mesh = mlc.ConfigDict()
    c.mesh.data = -1                  # -1: all devices not used by the other axes
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    # Logical axis name -> mesh axis (or None for replicated): the one table of the project
    # (td_jax.models.sharding.AXIS_RULES, parameters and act_* activations).
    c.axis_rules = AXIS_RULES

    c.compute_dtype = "bfloat16"      # activations / matmuls; params stay param_dtype
    c.param_dtype = "float32"

    c.optim = mlc.ConfigDict()
    c.optim.name = "adamw"            # adamw | sgd
    c.optim.lr = 1e-3                 # peak LR for params in no group
    c.optim.schedule = "warmup_cosine"  # warmup_cosine | constant
    c.optim.warmup_frac = 0.03        # fraction of total_steps spent warming up linearly
    c.optim.end_lr_frac = 0.0         # final LR as a fraction of the peak
    c.optim.weight_decay = 0.0        # decoupled, on params with ndim >= 2
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.momentum = 0.9            # sgd only
    c.optim.clip_norm = 1.0           # global-norm clipping; 0 disables
    c.optim.grad_accum = 1            # micro-batches per optimizer step
    c.optim.groups = mlc.ConfigDict()  # name -> (pattern=regex on "a/b/kernel", lr=peak)
    c.optim.frozen = ""               # regex; matching params get no update and no state

    c.checkpoint = mlc.ConfigDict()
    c.checkpoint.keep = 3             # keep the latest N
    # plus the best N by best_metric (0: off), among the saves that carry an evaluation of
    # eval_split: the periodic ones at checkpoint steps and always the last step's (which is also
    # eval_split's final evaluation), so it acts with eval_every_steps = 0 too
    c.checkpoint.keep_best = 1
    c.checkpoint.best_metric = "eval/accuracy"   # an eval metric's key (else a ValueError at the first ranked save)
    c.checkpoint.best_mode = "max"    # max | min
    c.checkpoint.async_save = True

    c.task = mlc.ConfigDict()
    c.task.name = "video_qa"
    return c


def _dotted(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _check_type(key: str, value: Any, ref: Any) -> Any:
    """Returns value coerced to ref's type (int -> float only); raises TypeError naming key."""
    if ref is None or value is None:
        return value
    if isinstance(ref, bool):
        if not isinstance(value, bool):
            raise TypeError(f"config key {key!r} must be bool, got {type(value).__name__} {value!r}")
        return value
    if isinstance(ref, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"config key {key!r} must be float, got {type(value).__name__} {value!r}")
        return float(value)
    if isinstance(ref, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"config key {key!r} must be int, got {type(value).__name__} {value!r}")
        return value
    if isinstance(ref, str):
        if not isinstance(value, str):
            raise TypeError(f"config key {key!r} must be str, got {type(value).__name__} {value!r}")
        return value
    if isinstance(ref, (tuple, list)):
        if not isinstance(value, (tuple, list)):
            raise TypeError(f"config key {key!r} must be a tuple, got {type(value).__name__} {value!r}")
        return tuple(value)
    return value


def _merge(prefix: str, user: Mapping, ref: Mapping, out: dict) -> None:
    for key in user:
        dk = _dotted(prefix, key)
        if key not in ref:
            near = difflib.get_close_matches(key, list(ref), n=1)
            hint = f"; did you mean {_dotted(prefix, near[0])!r}?" if near else ""
            raise ValueError(f"unknown config key {dk!r}{hint} (known under "
                             f"{prefix or 'top level'}: {sorted(ref)})")
    for key, rv in ref.items():
        dk = _dotted(prefix, key)
        if key not in user:
            out[key] = rv.to_dict() if isinstance(rv, mlc.ConfigDict) else rv
            continue
        uv = user[key]
        if dk in _NAMED_ENTRY_SCHEMAS:
            out[key] = _named_entries(dk, uv)
        elif isinstance(rv, (Mapping, mlc.ConfigDict)):
            if not isinstance(uv, (Mapping, mlc.ConfigDict)):
                raise TypeError(f"config key {dk!r} must be a ConfigDict, got {type(uv).__name__}")
            out[key] = {}
            _merge(dk, uv, rv, out[key])
        else:
            out[key] = _check_type(dk, uv, rv)


def _named_entries(prefix: str, entries: Mapping) -> dict:
    schema = _NAMED_ENTRY_SCHEMAS[prefix]
    if not isinstance(entries, (Mapping, mlc.ConfigDict)):
        raise TypeError(f"config key {prefix!r} must be a ConfigDict of entries, got {type(entries).__name__}")
    out = {}
    for name, entry in entries.items():
        dk = _dotted(prefix, name)
        if not isinstance(entry, (Mapping, mlc.ConfigDict)):
            raise TypeError(f"config key {dk!r} must be a ConfigDict with keys {sorted(schema)}")
        unknown = sorted(set(entry) - set(schema))
        if unknown:
            raise ValueError(f"unknown config key {_dotted(dk, unknown[0])!r} (known: {sorted(schema)})")
        missing = sorted(set(schema) - set(entry))
        if missing:
            raise ValueError(f"config key {_dotted(dk, missing[0])!r} is required")
        out[name] = {k: _check_type(_dotted(dk, k), entry[k], t()) for k, t in schema.items()}
    return out


def resolve(user: mlc.ConfigDict | Mapping, task_defaults: mlc.ConfigDict | Mapping | None = None
            ) -> mlc.ConfigDict:
    """Merges ``user`` into the defaults; rejects unknown keys / wrong types by dotted name.

    Args:
      user: the experiment config (a ConfigDict or nested dict).
      task_defaults: the ``task`` subtree schema (from the task named by ``user.task.name``);
        must include ``name``.
    Returns:
      A new locked ConfigDict with every default filled in.
    """
    ref = defaults()
    if task_defaults is not None:
        ref.task = mlc.ConfigDict(dict(task_defaults))
    for key in REQUIRED_KEYS:
        if key not in user:
            raise ValueError(f"config key {key!r} is required (every experiment sets {list(REQUIRED_KEYS)})")
    out: dict = {}
    _merge("", user, ref, out)
    cfg = mlc.ConfigDict(out)
    check_values(cfg)
    cfg.lock()
    return cfg


def check_values(cfg: mlc.ConfigDict) -> None:
    """Range checks that types alone cannot express; raises ValueError naming the key."""
    def positive(key):
        v = _get(cfg, key)
        if v <= 0:
            raise ValueError(f"config key {key!r} must be > 0, got {v}")

    for key in ("log_every_steps", "checkpoint_every_steps", "batch_size", "eval_batch_size", "optim.grad_accum",
                "checkpoint.keep", "steps_per_call"):
        positive(key)
    for key in ("total_steps", "eval_every_steps", "eval_steps", "checkpoint.keep_best"):
        if _get(cfg, key) < 0:
            raise ValueError(f"config key {key!r} must be >= 0, got {_get(cfg, key)}")
    if not 0.0 <= cfg.optim.warmup_frac < 1.0:
        raise ValueError(f"config key 'optim.warmup_frac' must be in [0, 1), got {cfg.optim.warmup_frac}")
    for key, choices in (("optim.name", ("adamw", "sgd")), ("optim.schedule", ("warmup_cosine", "constant")),
                         ("checkpoint.best_mode", ("max", "min")),
                         ("compute_dtype", ("float32", "bfloat16", "float16")),
                         ("param_dtype", ("float32", "bfloat16"))):
        if _get(cfg, key) not in choices:
            raise ValueError(f"config key {key!r} must be one of {choices}, got {_get(cfg, key)!r}")
    if cfg.batch_size % cfg.optim.grad_accum:
        raise ValueError(f"config key 'batch_size' ({cfg.batch_size}) must be divisible by "
                         f"'optim.grad_accum' ({cfg.optim.grad_accum})")
    for axis in ("data", "fsdp", "tensor"):
        v = cfg.mesh[axis]
        if v == 0 or v < -1:
            raise ValueError(f"config key 'mesh.{axis}' must be >= 1 or -1, got {v}")
    for i, rule in enumerate(cfg.axis_rules):
        if len(rule) != 2 or not isinstance(rule[0], str):
            raise ValueError(f"config key 'axis_rules[{i}]' must be (logical_name, mesh_axes), got {rule!r}")


def _get(cfg: mlc.ConfigDict, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node
