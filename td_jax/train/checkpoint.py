"""Orbax checkpoints: train state + Grain iterator state + config, async, latest-N + best-N.

Layout: ``WORKDIR/checkpoints/<step>/{state,data,meta}``. Orbax writes each step into a
temporary directory and renames it when complete, so a save cut short by a kill leaves
only a ``*.orbax-checkpoint-tmp-*`` directory, which :meth:`Checkpointer.all_steps`
never lists (and which is deleted at start-up). If the newest listed step still fails to
restore (a damaged copy), :meth:`Checkpointer.restore_latest` falls back to the previous.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:
    """Thin wrapper around ``ocp.CheckpointManager`` with the framework's items.

    Args:
      directory: where step directories go.
      keep: keep the latest ``keep`` checkpoints.
      keep_best: additionally keep the best ``keep_best`` by ``best_metric`` (0: off).
      best_metric: key into the metrics passed to :meth:`save`.
      best_mode: "max" or "min".
      async_save: write in a background thread (call :meth:`wait` before reading).
    """

    def __init__(self, directory: str, *, keep: int = 3, keep_best: int = 0, best_metric: str = "eval/accuracy",
                 best_mode: str = "max", async_save: bool = True):
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        self.directory = os.path.abspath(directory)
        self.best_metric = best_metric
        policies = [ocp.checkpoint_managers.LatestN(n=keep)]
        if keep_best:
            policies.append(ocp.checkpoint_managers.BestN(
                get_metric_fn=lambda m: float(m[best_metric]), reverse=(best_mode == "min"), n=keep_best,
                keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            })

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, *, data_iter: Any = None, meta: Mapping | None = None,
             metrics: Mapping[str, float] | None = None) -> bool:
        """Starts saving ``state`` (pytree of jax arrays) at ``step``; returns whether it saved."""
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(dict(meta or {}))}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        m = None
        if metrics is not None and self.best_metric in metrics:
            m = {k: float(v) for k, v in metrics.items()}
        return self.manager.save(int(step), args=ocp.args.Composite(**items), metrics=m, force=True)

    def restore(self, step: int, abstract_state: Any, *, data_iter: Any = None) -> tuple[Any, dict]:
        """Restores step ``step`` onto the shardings carried by ``abstract_state``.

        ``abstract_state``: pytree of ``jax.ShapeDtypeStruct(shape, dtype, sharding=...)``;
        the saved arrays are resharded onto those shardings (any mesh shape).
        ``data_iter``: a Grain iterator restored in place, if given.
        """
        items = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        out = self.manager.restore(int(step), args=ocp.args.Composite(**items))
        return out["state"], dict(out["meta"] or {})

    def restore_latest(self, abstract_state: Any, *, data_iter: Any = None) -> tuple[int, Any, dict] | None:
        """Restores the newest step that restores cleanly; None if there is none.

        Newer steps that fail to restore are renamed ``<step>.damaged`` (kept for
        inspection, invisible to Orbax) so that the resumed run can save those steps again.
        """
        damaged = []
        for step in reversed(self.all_steps()):
            try:
                state, meta = self.restore(step, abstract_state, data_iter=data_iter)
            except Exception as e:  # a damaged step: say so and try the previous one
                logging.warning("checkpoint step %d in %s failed to restore (%s: %s); trying an older one",
                                step, self.directory, type(e).__name__, e)
                damaged.append(step)
                continue
            self._set_aside(damaged)
            return step, state, meta
        self._set_aside(damaged)
        return None

    def _set_aside(self, steps: list[int]) -> None:
        if not steps:
            return
        if jax.process_index() == 0:
            for step in steps:
                src = os.path.join(self.directory, str(step))
                dst = f"{src}.damaged"
                n = 1
                while os.path.exists(dst):
                    dst, n = f"{src}.damaged{n}", n + 1
                os.rename(src, dst)
                logging.warning("moved damaged checkpoint %s to %s", src, dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("checkpoint_set_aside_damaged")
        self.manager.reload()

    def read_meta(self, step: int) -> dict:
        """The JSON metadata (config, step) of ``step`` without touching the arrays."""
        path = os.path.join(self.directory, str(step), "meta", "metadata")
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        out = self.manager.restore(int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying ``shardings`` for every leaf of ``tree`` (arrays or structs)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
