"""Metric sinks: ``WORKDIR/metrics.jsonl``, TensorBoard event files, console progress.

Only process 0 writes; on other processes :class:`MetricWriter` is a no-op sink.
TensorBoard goes through ``tensorboardX`` (``flax.metrics.tensorboard`` needs TensorFlow).
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

import jax
import numpy as np


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
    """

    def __init__(self, workdir: str, *, enabled: bool | None = None, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter
                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

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


def read_metrics(workdir: str) -> list[dict]:
    """All records of ``workdir/metrics.jsonl`` (empty if absent)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


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
