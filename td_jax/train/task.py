"""The small interface between the trainer and a model + data pipeline.

A :class:`Task` knows how to build params, compute the loss / eval sums, and make Grain
iterators; the trainer knows meshes, optimizers, checkpoints and logging. Tasks register
by name (``config.task.name``).
"""
from __future__ import annotations

import abc
from typing import Any, Callable, Mapping

import jax
import ml_collections as mlc
import numpy as np

_TASKS: dict[str, type["Task"]] = {}
# Modules imported on first lookup of a name not yet registered (keeps imports lazy).
_LAZY = {"video_qa": "td_jax.train.video_qa", "synthetic_mc": "td_jax.train.synthetic_task"}


def register_task(name: str) -> Callable[[type["Task"]], type["Task"]]:
    """Class decorator: make a Task available as ``config.task.name = name``."""

    def deco(cls):
        if name in _TASKS and _TASKS[name] is not cls:
            raise ValueError(f"task {name!r} registered twice")
        cls.name = name
        _TASKS[name] = cls
        return cls

    return deco


def get_task_class(name: str) -> type["Task"]:
    if name not in _TASKS and name in _LAZY:
        import importlib
        importlib.import_module(_LAZY[name])
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r} (config key 'task.name'); known: {sorted(set(_TASKS) | set(_LAZY))}")
    return _TASKS[name]


class Task(abc.ABC):
    """Model + data for the trainer.

    ``config`` is the full resolved experiment config; ``config.task`` is this task's subtree.
    Batches are dicts of arrays with the batch on the leading axis.
    """

    name: str = ""
    # Logical names the task's model constrains activations with (``nn.with_logical_constraint``):
    # the trainer refuses a config.axis_rules table that has no rule for one of them.
    activation_axes: tuple[str, ...] = ()

    def __init__(self, config: mlc.ConfigDict):
        self.config = config

    @classmethod
    @abc.abstractmethod
    def default_config(cls) -> mlc.ConfigDict:
        """Schema + defaults of ``config.task`` (must contain ``name``)."""

    @abc.abstractmethod
    def abstract_batch(self, batch_size: int, *, train: bool = True) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes/dtypes of a global batch of ``batch_size`` examples (no data needed)."""

    @abc.abstractmethod
    def init_params(self, rng: jax.Array, batch: Mapping[str, Any]) -> Any:
        """Params (may be boxed with logical axis names); called under ``jax.eval_shape`` / ``jit``."""

    @abc.abstractmethod
    def loss_fn(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Scalar loss (mean over the batch) and scalar metrics."""

    @abc.abstractmethod
    def eval_fn(self, params: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Sums over the batch's valid examples (the trainer adds them across batches).

        Entries named ``per_example/<name>`` (``[B, ...]`` arrays, with ``per_example/index`` = the
        example's position in the split, -1 on padding) are kept per example instead
        (``trainer.evaluate(..., predictions=[])``, the ``.predictions.jsonl`` of an eval)."""

    def load_pretrained(self) -> Any | None:
        """Host (numpy) params to start from when there is no checkpoint, or None (random init).

        Must have the structure of ``nn.unbox(init_params(...))``.
        """
        return None

    def checkpoint_meta(self) -> dict[str, Any]:
        """JSON-serialisable facts saved with every checkpoint next to the config (e.g. the
        model's architecture, which ``launch.eval`` reads back); default none."""
        return {}

    def eval_report(self, metrics: Mapping[str, float]) -> str:
        """Markdown summary of :meth:`finalize_eval` metrics (default: a key/value table)."""
        lines = ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items())]
        return "\n".join(lines) + "\n"

    def finalize_eval(self, sums: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Turns summed eval values into metrics; default: pass scalars through."""
        return {k: float(np.asarray(v)) for k, v in sums.items() if np.asarray(v).size == 1}

    @abc.abstractmethod
    def make_data(self, split: str, *, batch_size: int, train: bool, seed: int, shard_index: int,
                  shard_count: int) -> Any:
        """A Grain iterator (``get_state``/``set_state``) of process-local batches.

        ``batch_size`` is this process's share. ``train=True``: infinite, shuffled.
        ``train=False``: one pass, padded with ``valid=False`` examples to whole batches, the
        same number of batches on every process.
        """
