"""Optimizer from config: warm-up + cosine, weight decay, clipping, per-group LRs, frozen groups.

Parameters are addressed by their path string ``"vision/encoder/layer_0/attn/query/kernel"``.
``optim.groups`` maps a group name to ``(pattern=regex, lr=peak LR)``; a param matched by two
groups' regexes is a ValueError naming it and both groups (a ``ConfigDict`` sorts its keys, so
no written order could decide); unmatched params use ``optim.lr``.
``optim.frozen`` (a regex) wins over every group: those params get a zero update and no
optimizer state. Clipping is by the global norm over the trainable gradients.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from td_jax.train.mesh import path_str

FROZEN = "frozen"
DEFAULT_GROUP = "default"


def schedule(peak_lr: float, total_steps: int, *, kind: str = "warmup_cosine", warmup_frac: float = 0.03,
             end_lr_frac: float = 0.0) -> optax.Schedule:
    """LR schedule: linear warm-up from 0 over ``warmup_frac`` of the steps, then cosine to
    ``end_lr_frac * peak_lr`` at ``total_steps`` (``kind="constant"``: ``peak_lr`` always)."""
    if kind == "constant":
        return optax.constant_schedule(peak_lr)
    if kind != "warmup_cosine":
        raise ValueError(f"unknown schedule {kind!r}; known: warmup_cosine, constant")
    warmup = int(round(warmup_frac * total_steps))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak_lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=end_lr_frac * peak_lr)


def group_lrs(optim_cfg: Mapping) -> dict[str, float]:
    """Peak LR per group name (including the default group)."""
    out = {DEFAULT_GROUP: float(optim_cfg["lr"])}
    for name, g in optim_cfg["groups"].items():
        if name in (DEFAULT_GROUP, FROZEN):
            raise ValueError(f"optim.groups: {name!r} is a reserved group name")
        out[name] = float(g["lr"])
    return out


def label_params(params: Any, optim_cfg: Mapping) -> Any:
    """Pytree of group names (same structure as ``params``), by regex on param paths."""
    groups = [(name, re.compile(g["pattern"])) for name, g in optim_cfg["groups"].items()]
    frozen = re.compile(optim_cfg["frozen"]) if optim_cfg["frozen"] else None

    def label(path, _):
        p = path_str(path)
        if frozen is not None and frozen.search(p):
            return FROZEN
        hits = [name for name, rx in groups if rx.search(p)]
        if len(hits) > 1:
            raise ValueError(f"param {p!r} matches the patterns of optim.groups {hits[0]!r} and {hits[1]!r}; "
                             "make them exclusive")
        return hits[0] if hits else DEFAULT_GROUP

    return jax.tree_util.tree_map_with_path(label, params)


def _decay_mask(params: Any) -> Any:
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def _base(name: str, lr: optax.Schedule, cfg: Mapping) -> optax.GradientTransformation:
    if name == "adamw":
        return optax.adamw(lr, b1=cfg["b1"], b2=cfg["b2"], eps=cfg["eps"], weight_decay=cfg["weight_decay"],
                           mask=_decay_mask)
    if name == "sgd":
        tx = optax.sgd(lr, momentum=cfg["momentum"] or None)
        if cfg["weight_decay"]:
            tx = optax.chain(optax.add_decayed_weights(cfg["weight_decay"], mask=_decay_mask), tx)
        return tx
    raise ValueError(f"unknown optimizer {name!r}; known: adamw, sgd")


def make_optimizer(optim_cfg: Mapping, total_steps: int) -> tuple[optax.GradientTransformation,
                                                                   dict[str, optax.Schedule]]:
    """The optax transformation and the LR schedule of every group.

    The returned transformation is applied once per optimizer step (gradient
    accumulation happens inside the train step, see ``trainer.make_train_step``).
    """
    schedules = {
        name: schedule(lr, total_steps, kind=optim_cfg["schedule"], warmup_frac=optim_cfg["warmup_frac"],
                       end_lr_frac=optim_cfg["end_lr_frac"])
        for name, lr in group_lrs(optim_cfg).items()
    }
    transforms = {name: _base(optim_cfg["name"], sched, optim_cfg) for name, sched in schedules.items()}
    transforms[FROZEN] = optax.set_to_zero()
    labeller: Callable[[Any], Any] = lambda params: label_params(params, optim_cfg)
    tx = optax.multi_transform(transforms, labeller)
    if optim_cfg["clip_norm"] and optim_cfg["clip_norm"] > 0:
        tx = optax.chain(_clip_trainable(optim_cfg["clip_norm"], labeller), tx)
    return tx, schedules


def _clip_trainable(max_norm: float, labeller) -> optax.GradientTransformation:
    """Global-norm clipping that ignores frozen params' gradients (they are dropped anyway)."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        labels = labeller(updates)
        live = jax.tree.map(lambda g, lab: g if lab != FROZEN else jnp.zeros_like(g), updates, labels)
        norm = optax.tree.norm(live)
        scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
        return jax.tree.map(lambda g: (g * scale).astype(g.dtype), updates), state

    return optax.GradientTransformation(init, update)


def count_params(params: Any, optim_cfg: Mapping | None = None) -> dict[str, int]:
    """Parameter count in total and per group label."""
    counts = {"total": int(sum(x.size for x in jax.tree.leaves(params)))}
    if optim_cfg is not None:
        for x, lab in zip(jax.tree.leaves(params), jax.tree.leaves(label_params(params, optim_cfg))):
            counts[lab] = counts.get(lab, 0) + int(x.size)
    return counts
