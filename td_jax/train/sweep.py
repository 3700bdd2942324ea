"""A config file's grid of runs: expand, run locally (resumably), describe for a cluster.

An experiment file ``experiments/NAME.py`` defines ``get_config(arg)`` (one run's config)
and may define ``get_sweep(arg)`` — a list of override dicts keyed by dotted config names
(``{"optim.lr": 1e-3}``; the reserved key ``"_name"`` names the run's directory) — and two
hooks the local runner calls: ``prepare(arg)`` before the runs (build data, extract
stores) and ``report(arg, workdir, results_dir, readme)`` after them.

    runs = expand("experiments/motion_qa.py:tiny", workdir="/tmp/mqa")   # [Run(name, overrides, workdir)]
    run_local(runs, config_arg, overrides={"total_steps": 10})          # finished runs skipped

Every run is ``trainer.train_and_evaluate`` in its own directory ``workdir/<name>``: a run
whose ``done.json`` exists is skipped, an interrupted one resumes from its newest complete
checkpoint, so re-running a killed sweep finishes it with the results of an uninterrupted
one.  A run's ``warm_start`` given as a relative path names another run of the same sweep.
"""
from __future__ import annotations

import csv
import dataclasses
import importlib.util
import io
import json
import os
import shlex
import subprocess
import sys
import time
import traceback
from typing import Any, Callable, Mapping

import ml_collections as mlc

RESERVED = ("_name",)


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    overrides: dict
    workdir: str


def load_module(config_arg: str):
    """(module, arg) of ``path[:arg]``; ValueError naming the path if it does not exist."""
    path, _, arg = config_arg.partition(":")
    if not os.path.isfile(path):
        raise ValueError(f"config file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"_exp_{abs(hash(os.path.abspath(path)))}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, arg


def check_overrides(mod, overrides: Mapping[str, Any]) -> None:
    """ValueError for a job-wide ``--config.KEY=VALUE`` override that the experiment module
    declares fixed (``FIXED_KEYS``: key prefixes its ``prepare`` / stores / per-run arms set, such
    as the dataset, the tower or the compressor), since applying it to every run would train on
    data prepared for other settings."""
    fixed = tuple(getattr(mod, "FIXED_KEYS", ()))
    bad = sorted(k for k in overrides if any(k == f or k.startswith(f + ".") or
                                             (f.endswith("*") and k.startswith(f[:-1])) for f in fixed))
    if bad:
        raise ValueError(f"--config.{bad[0]}: the experiment sets it per run or builds data for it "
                         f"({', '.join(fixed)}); change the experiment's arg or file instead of overriding "
                         f"it for every run")


def run_name(point: Mapping[str, Any]) -> str:
    """The point's ``_name``, else its overrides: ``optim.lr=0.001,seed=1`` -> ``optim.lr=0.001_seed=1``."""
    if "_name" in point:
        name = str(point["_name"])
    else:
        name = "_".join(f"{k}={v}" for k, v in sorted(point.items()))
    name = name.replace("/", "-").replace(" ", "").replace("'", "").replace('"', "")
    if not name or name in (".", ".."):
        raise ValueError(f"sweep point {dict(point)!r} gives no usable run name")
    return name


def expand(config_arg: str, workdir: str) -> list[Run]:
    """The runs of ``get_sweep(arg)`` in order, each in ``workdir/<name>``."""
    mod, arg = load_module(config_arg)
    if not hasattr(mod, "get_sweep"):
        raise ValueError(f"{config_arg.partition(':')[0]} defines no get_sweep(arg)")
    grid = list(mod.get_sweep(arg))
    if not grid:
        raise ValueError(f"{config_arg}: get_sweep returned an empty grid")
    runs = []
    for point in grid:
        if not isinstance(point, dict) or not point:
            raise ValueError(f"{config_arg}: every sweep point must be a non-empty dict (overrides and/or "
                             f"'_name'), got {point!r}")
        name = run_name(point)
        runs.append(Run(name, {k: v for k, v in point.items() if k not in RESERVED}, os.path.join(workdir, name)))
    dup = sorted({r.name for r in runs if sum(q.name == r.name for q in runs) > 1})
    if dup:
        raise ValueError(f"{config_arg}: sweep points share run names {dup}")
    return runs


def apply_overrides(cfg: mlc.ConfigDict, overrides: Mapping[str, Any]) -> mlc.ConfigDict:
    """A copy of ``cfg`` with dotted-key ``overrides`` set (KeyError naming an unknown key)."""
    out = mlc.ConfigDict(cfg.to_dict())
    for key, value in overrides.items():
        node, parts = out, key.split(".")
        for p in parts[:-1]:
            if p not in node:
                raise KeyError(f"sweep override {key!r}: no config key {p!r}")
            node = node[p]
        if parts[-1] not in node:
            raise KeyError(f"sweep override {key!r}: no config key {parts[-1]!r}")
        if isinstance(value, list):
            value = tuple(value)
        node[parts[-1]] = value
    return out


def run_config(config_arg: str, run: Run, overrides: Mapping[str, Any] = ()) -> mlc.ConfigDict:
    """``get_config(arg)`` + the run's overrides + ``overrides`` (applied last); a relative
    ``warm_start`` names a sibling run (``trainer.resolve_warm_start`` finds it)."""
    mod, arg = load_module(config_arg)
    return apply_overrides(apply_overrides(mod.get_config(arg), run.overrides), dict(overrides))


def _flag_value(v) -> str:
    if isinstance(v, (tuple, list)):
        return repr(tuple(v))
    return str(v)


def train_args(run: Run, overrides: Mapping[str, Any] = ()) -> list[str]:
    """``--config.k=v`` flags of the run's overrides, then ``overrides``."""
    items = list(run.overrides.items()) + list(dict(overrides).items())
    return [f"--config.{k}={_flag_value(v)}" for k, v in items]


def list_flag(args) -> str:
    """``args`` as one absl list-flag value (``launch.tpu --train_args=``): comma-separated and
    CSV-quoted, as absl's list parser reads it back, so an argument holding commas (a JSON
    override such as ``--config.task.compressor_cfg={"adaptive": "elbow", "iters": 20}``) stays whole."""
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(list(args))
    return out.getvalue()


def train_command(config_arg: str, run: Run, overrides: Mapping[str, Any] = (), extra=()) -> list[str]:
    return ([sys.executable, "-m", "launch.train", f"--config={config_arg}", f"--workdir={run.workdir}"]
            + train_args(run, overrides) + list(extra))


def is_done(run: Run) -> bool:
    from td_jax.train.trainer import read_done
    return read_done(run.workdir) is not None


def run_local(runs: list[Run], config_arg: str, *, overrides: Mapping[str, Any] = (), in_process: bool = True,
              extra_args=(), timeout: float | None = None, log: Callable[[str], None] = print) -> list[str]:
    """Runs every unfinished run in order; returns the names of those that failed.

    ``in_process``: call ``trainer.train_and_evaluate`` here (compiled programs are reused
    through JAX's compilation cache, see :func:`enable_compilation_cache`); else one
    ``launch.train`` subprocess per run (``extra_args`` appended).  Progress lines carry an ETA
    from the finished runs' mean time.
    """
    from td_jax.train import trainer

    failed, times = [], []
    todo = [r for r in runs if not is_done(r)]
    log(f"[sweep] {len(runs)} runs, {len(runs) - len(todo)} already done, {len(todo)} to run")
    for i, run in enumerate(todo):
        eta = f", ETA {_fmt(sum(times) / len(times) * (len(todo) - i))}" if times else ""
        log(f"[sweep] run {i + 1}/{len(todo)}: {run.name}{eta}")
        t0 = time.time()
        if in_process:
            try:
                trainer.train_and_evaluate(trainer.resolve_config(run_config(config_arg, run, overrides)), run.workdir)
            except Exception as e:   # noqa: BLE001  one failed run does not stop the sweep
                failed.append(run.name)
                log(f"[sweep] {run.name} failed: {type(e).__name__}: {e}\n" + "".join(
                    traceback.format_exception(e)[-6:]))
        else:
            cmd = train_command(config_arg, run, overrides, extra_args)
            rc = subprocess.call(cmd, timeout=timeout)
            if rc != 0:
                failed.append(run.name)
                log(f"[sweep] {run.name} exited with status {rc}: {shlex.join(cmd)}")
        times.append(time.time() - t0)
        if run.name not in failed and not is_done(run):      # preempted (SIGTERM): stop here, resume later
            log(f"[sweep] {run.name} stopped before its end; run the same command again to resume")
            break
    return failed


WALL_TIME_FILE = "wall_time.json"


def add_wall_time(workdir: str, seconds: float) -> dict:
    """Adds one invocation's wall time to ``workdir/wall_time.json`` (``{"total_s", "invocations"}``)."""
    rec = read_wall_time(workdir) or {"total_s": 0.0, "invocations": []}
    rec["invocations"].append(round(float(seconds), 1))
    rec["total_s"] = float(sum(rec["invocations"]))
    os.makedirs(workdir, exist_ok=True)
    tmp = os.path.join(workdir, WALL_TIME_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(rec, f)
    os.replace(tmp, os.path.join(workdir, WALL_TIME_FILE))
    return rec


def read_wall_time(workdir: str) -> dict | None:
    path = os.path.join(workdir, WALL_TIME_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def enable_compilation_cache(directory: str) -> None:
    """JAX's persistent compilation cache in ``directory`` (every program, however fast to
    compile), so runs that differ only in data or seed compile once."""
    import jax

    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def final_metrics(workdir: str, names: list[str]) -> dict:
    """Last logged value of each metric in ``workdir/metrics.jsonl`` (None if never logged)."""
    from td_jax.train.metrics import read_metrics

    out = {n: None for n in names}
    step = None
    for rec in read_metrics(workdir):
        step = rec["step"] if step is None else max(step, rec["step"])
        for n in names:
            if n in rec:
                out[n] = rec[n]
    out["step"] = step
    return out


def summary_table(rows: list[tuple[str, dict]], names: list[str]) -> str:
    lines = ["| run | step | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for name, m in rows:
        vals = [("—" if m.get(n) is None else f"{m[n]:.4g}") for n in names]
        lines.append(f"| {name} | {m.get('step') if m.get('step') is not None else '—'} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def _fmt(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"
