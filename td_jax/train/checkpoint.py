"""Orbax checkpoints: train state + Grain iterator state + config, async, latest-N + best-N, checksummed.

Layout: ``WORKDIR/checkpoints/<step>/{state,data,meta,metrics,checksums.json}``; ``metrics``
(with ``keep_best``) holds the step's evaluation metrics, so a resumed run ranks the steps
saved before it for best-N. Orbax writes each step into a temporary directory and renames
it when complete, so a save cut short by a kill leaves only a ``*.orbax-checkpoint-tmp-*``
directory, which :meth:`Checkpointer.all_steps` never lists (and which a writing
:class:`Checkpointer` deletes at start-up).

Orbax verifies nothing it reads back (a flipped byte in an array file restores as a wrong
value), so every save also records the size and SHA-256 of each of its files in
``checksums.json``. The manifest is written by Orbax's post-finalisation callback, inside
the temporary directory, after every item is finalised and before the rename, so it
describes exactly the committed files and appears atomically with them (async saves
included). Only the two files Orbax itself rewrites at commit, ``_CHECKPOINT_METADATA`` and
the top-level ``commit_success.txt``, are left out; a restore reads neither's contents.

Every restore (:meth:`Checkpointer.restore`, :meth:`Checkpointer.read_meta`, and so training
resumes, ``launch.eval`` and warm starts) verifies the step first and raises
:class:`CheckpointError` naming the damaged file. :meth:`Checkpointer.restore_latest` and
:meth:`Checkpointer.newest_intact_step` skip damaged steps (reporting each by path) and use
the newest intact one. A directory written before checksums existed (no step has a
manifest) restores unverified, with a warning.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from td_jax.checksums import (MANIFEST, UNCHECKED, CheckpointError, verify_manifest,  # noqa: F401 (re-exported)
                              write_manifest)

_TMP_SUFFIX = ".orbax-checkpoint-tmp"


def _all_processes_agree(ok: bool) -> bool:
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils
    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


class Checkpointer:
    """Thin wrapper around ``ocp.CheckpointManager`` with the framework's items and checksums.

    Args:
      directory: where step directories go.
      keep: keep the latest ``keep`` checkpoints.
      keep_best: additionally keep the best ``keep_best`` by ``best_metric`` (0: off).
      best_metric: key into the metrics passed to :meth:`save` (with ``keep_best > 0``, metrics
        without it are a ValueError naming the keys they have).
      best_mode: "max" or "min".
      async_save: write in a background thread (call :meth:`wait` before reading).
      read_only: only read: ``directory`` must exist, nothing is created, deleted or renamed
        (``launch.eval``); :meth:`save` raises.
    """

    def __init__(self, directory: str, *, keep: int = 3, keep_best: int = 0, best_metric: str = "eval/accuracy",
                 best_mode: str = "max", async_save: bool = True, read_only: bool = False):
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        self.directory = os.path.abspath(directory)
        self.best_metric = best_metric
        self.keep_best = keep_best
        self.read_only = read_only
        self.async_save = async_save
        self.damaged: dict[int, str] = {}          # step -> reason, of steps found damaged so far
        self._verified: set[int] = set()
        self._pending_step: int | None = None
        if read_only and not epath.Path(self.directory).is_dir():
            raise FileNotFoundError(f"no checkpoint directory {self.directory}")
        policies = [ocp.checkpoint_managers.LatestN(n=keep)]
        # A step whose stored metrics lack best_metric (saved under another best_metric) ranks last.
        worst = float("inf") if best_mode == "min" else float("-inf")
        score = lambda m: float(m[best_metric]) if best_metric in m else worst  # noqa: E731
        if keep_best:
            policies.append(ocp.checkpoint_managers.BestN(
                get_metric_fn=score, reverse=(best_mode == "min"), n=keep_best,
                keep_checkpoints_without_metrics=False))
        # Orbax writes a step's metrics to disk (``<step>/metrics/metrics``, inside the temporary
        # directory, so the manifest covers them) and reads them back on start-up only when
        # ``best_fn`` is set; without it a resumed run sees its earlier steps as unscored and BestN
        # deletes the best ones. ``preservation_policy`` still alone decides what is kept.
        track_best = bool(keep_best) and not read_only
        # Always Orbax's async checkpointer: its post-finalisation hook writes the manifest into the
        # temporary directory before the commit rename. A synchronous save waits right after starting.
        options = ocp.CheckpointManagerOptions(
            preservation_policy=None if read_only else ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            best_fn=score if track_best else None,
            best_mode=best_mode,
            enable_async_checkpointing=True,
            async_options=ocp.AsyncOptions(post_finalization_callback=self._write_pending_manifest),
            cleanup_tmp_directories=not read_only,
            create=not read_only,
            read_only=read_only,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            })

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(int(step)))

    # ------------------------------------------------------------------ saving

    def save(self, step: int, state: Any, *, data_iter: Any = None, meta: Mapping | None = None,
             metrics: Mapping[str, float] | None = None) -> bool:
        """Starts saving ``state`` (pytree of jax arrays) at ``step``; returns whether it saved.

        Asynchronous unless ``async_save=False``; the step becomes visible (with its checksum
        manifest) only once committed: :meth:`wait` / :meth:`close` block until then.
        """
        if self.read_only:
            raise RuntimeError(f"{self.directory}: this Checkpointer is read-only")
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(dict(meta or {}))}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        m = self._best_metrics(metrics)
        self.manager.wait_until_finished()         # the manifest hook names one step at a time
        self._pending_step = int(step)
        saved = self.manager.save(int(step), args=ocp.args.Composite(**items), metrics=m, force=True)
        if not self.async_save:
            self.manager.wait_until_finished()
        return saved

    def _best_metrics(self, metrics: Mapping[str, float] | None) -> dict[str, float] | None:
        """``metrics`` as floats for best-N tracking; ValueError when they lack ``best_metric``."""
        if metrics is None:
            return None
        if self.keep_best and self.best_metric not in metrics:
            raise ValueError(f"checkpoint.best_metric {self.best_metric!r} is not among the evaluation metrics "
                             f"(have {sorted(metrics)})")
        return {k: float(v) for k, v in metrics.items()}

    def _write_pending_manifest(self) -> None:
        """Orbax's post-finalisation hook (primary process, background thread): the step's files
        are complete in its temporary directory, the rename has not happened yet."""
        step = self._pending_step
        root = epath.Path(self.directory)
        found = [p for p in root.glob(f"{step}{_TMP_SUFFIX}*") if p.is_dir()]
        if not found and (root / str(step)).is_dir():
            found = [root / str(step)]     # storage without atomic rename: written in place
        if len(found) != 1:
            logging.error("checkpoint step %s: cannot find its directory under %s to checksum (found %s); "
                          "the step will read as incomplete", step, root, found)
            return
        write_manifest(found[0])

    # --------------------------------------------------------------- verifying

    def _has_manifests(self) -> bool:
        return any(os.path.exists(os.path.join(self.step_dir(s), MANIFEST)) for s in self.all_steps())

    def verify(self, step: int) -> None:
        """Raises :class:`CheckpointError` unless ``step`` matches its checksums (all processes agree).

        A directory none of whose steps has a manifest (saved before checksums existed) is
        accepted unverified, with a warning.
        """
        step = int(step)
        if step in self._verified:
            return
        if step not in self.all_steps():
            raise CheckpointError(f"no step {step} in {self.directory} (have {self.all_steps()})")
        path = self.step_dir(step)
        reason = None
        if not os.path.exists(os.path.join(path, MANIFEST)) and not self._has_manifests():
            logging.warning("checkpoint %s has no %s (saved before checksums existed): restoring it unverified",
                            path, MANIFEST)
        else:
            try:
                verify_manifest(path)
            except CheckpointError as e:
                reason = str(e)
        if not _all_processes_agree(reason is None):
            reason = reason or f"{path}: damaged on another process"
        if reason is not None:
            self.damaged[step] = reason
            raise CheckpointError(reason)
        self._verified.add(step)

    def newest_intact_step(self, step: int | None = None) -> int:
        """``step`` if it is intact, else :class:`CheckpointError`; ``None``: the newest intact step.

        Damaged newer steps are reported (warning, and in :attr:`damaged`) and skipped.
        """
        steps = self.all_steps()
        if step is not None:
            self.verify(step)
            return int(step)
        if not steps:
            raise CheckpointError(f"no complete checkpoint in {self.directory}")
        for s in reversed(steps):
            try:
                self.verify(s)
            except CheckpointError as e:
                logging.warning("skipping damaged checkpoint step %d: %s", s, e)
                continue
            if s != steps[-1]:
                logging.warning("using step %d, the newest intact checkpoint in %s (damaged: %s)", s,
                                self.directory, sorted(self.damaged))
            return s
        raise CheckpointError(f"no intact checkpoint in {self.directory}: " +
                              "; ".join(self.damaged[s] for s in sorted(self.damaged, reverse=True)))

    # --------------------------------------------------------------- restoring

    def restore(self, step: int, abstract_state: Any, *, data_iter: Any = None) -> tuple[Any, dict]:
        """Verifies, then restores step ``step`` onto the shardings carried by ``abstract_state``.

        ``abstract_state``: pytree of ``jax.ShapeDtypeStruct(shape, dtype, sharding=...)``;
        the saved arrays are resharded onto those shardings (any mesh shape).
        ``data_iter``: a Grain iterator restored in place, if given.
        Raises :class:`CheckpointError` if the step is missing or damaged.
        """
        self.verify(step)
        items = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        out = self.manager.restore(int(step), args=ocp.args.Composite(**items))
        return out["state"], dict(out["meta"] or {})

    def restore_latest(self, abstract_state: Any, *, data_iter: Any = None, set_aside: bool = True
                       ) -> tuple[int, Any, dict] | None:
        """Restores the newest intact step; None if the directory has no step at all.

        Damaged newer steps are reported by path and, with ``set_aside`` (training), renamed
        ``<step>.damaged`` (kept for inspection, invisible to Orbax) so that the resumed run can
        save those steps again. Raises :class:`CheckpointError` when steps exist but none is
        intact (never silently starts afresh). An intact step that still fails to restore is
        not damage (e.g. a changed model config): that error propagates and nothing is renamed.
        An unverifiable step of a directory without checksums that fails to restore counts as
        damaged, as before checksums existed.
        """
        if not self.all_steps():
            return None
        for step in reversed(self.all_steps()):
            try:
                self.verify(step)
            except CheckpointError as e:
                logging.warning("checkpoint step %d is damaged, trying an older one: %s", step, e)
                continue
            unverified = not os.path.exists(os.path.join(self.step_dir(step), MANIFEST))
            try:
                state, meta = self.restore(step, abstract_state, data_iter=data_iter)
            except Exception as e:  # only an unverifiable step's failure counts as damage
                if not unverified:
                    raise
                self.damaged[step] = f"{self.step_dir(step)}: failed to restore ({type(e).__name__}: {e})"
                logging.warning("checkpoint step %d failed to restore, trying an older one: %s", step,
                                self.damaged[step])
                continue
            if set_aside:
                self._set_aside(sorted(s for s in self.damaged if s > step))
            return step, state, meta
        raise CheckpointError(f"no intact checkpoint in {self.directory}: " +
                              "; ".join(self.damaged[s] for s in sorted(self.damaged, reverse=True)) +
                              " (move the directory away to start afresh)")

    def _set_aside(self, steps: list[int]) -> None:
        if not steps:
            return
        if self.read_only:
            raise RuntimeError(f"{self.directory}: this Checkpointer is read-only")
        if jax.process_index() == 0:
            for step in steps:
                src = self.step_dir(step)
                dst = f"{src}.damaged"
                n = 1
                while os.path.exists(dst):
                    dst, n = f"{src}.damaged{n}", n + 1
                os.rename(src, dst)
                logging.warning("moved damaged checkpoint %s to %s", src, dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("checkpoint_set_aside_damaged")
        for step in steps:
            self.damaged.pop(step, None)
        self.manager.reload()

    def read_meta(self, step: int) -> dict:
        """The JSON metadata (config, step) of ``step`` (verified) without reading the arrays."""
        self.verify(step)
        path = os.path.join(self.step_dir(step), "meta", "metadata")
        try:
            if os.path.exists(path):
                with open(path) as f:
                    return json.load(f)
            out = self.manager.restore(int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            return dict(out["meta"])
        except ValueError as e:        # JSONDecodeError of an unverifiable step
            raise CheckpointError(f"{path}: unreadable metadata ({e})") from None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying ``shardings`` for every leaf of ``tree`` (arrays or structs)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
