"""Metric sinks: ``WORKDIR/metrics.jsonl``, TensorBoard event files, console progress.

Only process 0 writes; on other processes :class:`MetricWriter` is a no-op sink.
TensorBoard goes through ``tensorboardX`` (``flax.metrics.tensorboard`` needs TensorFlow).

``metrics.jsonl`` holds one record per step: a run resumed at step ``s`` first drops the
records of steps after ``s`` (written after the checkpoint it resumed from, so about to be
redone), and tells TensorBoard to discard them too (a ``purge_step`` session-start event).
A logged training mean carries ``steps_in_mean``, the number of steps it averages.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging


def _scalar(v: Any) -> float | int:
    a = np.asarray(v)
    if a.size != 1:
        raise ValueError(f"metric value must be a scalar, got shape {a.shape}")
    x = a.reshape(()).item()
    return x


class MetricWriter:
    """Appends one JSON object per call to ``metrics.jsonl`` and mirrors it to TensorBoard.

    Args:
      workdir: the run directory.
      enabled: write at all (default: only on ``jax.process_index() == 0``).
      tensorboard: also write event files under ``workdir/tensorboard``.
      resume_step: the step this run starts from (0 for a fresh run): records of later steps
        are removed from ``metrics.jsonl`` and purged from TensorBoard. None: append only.
    """

    def __init__(self, workdir: str, *, enabled: bool | None = None, tensorboard: bool = True,
                 resume_step: int | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            if resume_step is not None:
                truncate_metrics(self.path, resume_step)
            if tensorboard:
                from tensorboardX import SummaryWriter
                purge = None if resume_step is None else int(resume_step) + 1
                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=purge)

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict:
        """Writes ``{"step": step, **metrics}``; returns the record (scalars as Python numbers)."""
        rec = {"step": int(step)}
        rec.update({k: _scalar(v) for k, v in metrics.items()})
        if not self.enabled:
            return rec
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, global_step=int(step))
            self._tb.flush()
        return rec

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _parse_lines(path: str) -> list[dict]:
    """Records of a metrics file; a cut-off last line (a kill mid-write) is dropped, any other
    unparsable line raises ``ValueError`` naming file and line."""
    with open(path) as f:
        lines = [(i + 1, line) for i, line in enumerate(f) if line.strip()]
    out = []
    for j, (lineno, line) in enumerate(lines):
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or "step" not in rec:
                raise ValueError("not a record with a 'step'")
        except ValueError as e:
            if j == len(lines) - 1 and not line.endswith("\n"):
                logging.warning("%s:%d: dropping a cut-off last record", path, lineno)
                continue
            raise ValueError(f"{path}:{lineno}: bad metrics record ({e})") from None
        out.append(rec)
    return out


def truncate_metrics(path: str, step: int) -> int:
    """Rewrites ``path`` keeping only records with ``step <= step`` (atomically); returns how
    many were dropped."""
    if not os.path.exists(path):
        return 0
    recs = _parse_lines(path)
    keep = [r for r in recs if int(r["step"]) <= step]
    with open(path) as f:
        clean = f.read().endswith("\n") or not recs
    if len(keep) == len(recs) and clean:
        return 0
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in keep)
    os.replace(tmp, path)
    if len(keep) != len(recs):
        logging.info("%s: dropped %d records after step %d (the run resumes from there)", path,
                     len(recs) - len(keep), step)
    return len(recs) - len(keep)


def read_metrics(workdir: str) -> list[dict]:
    """The records of ``workdir/metrics.jsonl`` (empty if absent), one per step in step order.

    Records of the same step (files written before resumes truncated them, or several
    writes at one step) are merged, later values winning.
    """
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    by_step: dict[int, dict] = {}
    for rec in _parse_lines(path):
        by_step.setdefault(int(rec["step"]), {}).update(rec)
    return [by_step[k] for k in sorted(by_step)]


class Progress:
    """Console progress: steps/s since the last report, loss, ETA to ``total_steps``."""

    def __init__(self, total_steps: int, start_step: int, *, enabled: bool | None = None):
        self.total = total_steps
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._t = time.perf_counter()
        self._step = start_step

    def update(self, step: int, metrics: Mapping[str, Any]) -> dict:
        now = time.perf_counter()
        dt = max(now - self._t, 1e-9)
        rate = (step - self._step) / dt
        self._t, self._step = now, step
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        if self.enabled:
            loss = metrics.get("loss", float("nan"))
            print(f"step {step}/{self.total}  loss {float(loss):.4f}  {rate:.2f} steps/s  "
                  f"ETA {_fmt_eta(eta)}", flush=True)
        return {"steps_per_sec": rate}


def _fmt_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"
