r"""Expand a config's ``get_sweep(arg)`` grid into runs, one workdir each, and tabulate them.

    python -m launch.sweep --config=experiments/smoke.py:synthetic --workdir=/tmp/sweep            # run locally
    python -m launch.sweep --config=experiments/smoke.py:synthetic --workdir=/tmp/sweep --mode=print
    python -m launch.sweep --config=experiments/smoke.py:synthetic --workdir=gs://b/sweep --mode=manifest

``get_sweep(arg)`` lives beside ``get_config`` and returns a list of override dicts keyed by
dotted config names (``{"optim.lr": 1e-3}``). Local runs are sequential subprocesses of
``launch.train`` (a finished run is skipped / an interrupted one resumes). ``print`` emits the
commands; ``manifest`` writes ``WORKDIR/manifest.json`` for a cluster scheduler. After
local runs (or with ``--mode=summarize``) a table of final metrics is printed and written to
``WORKDIR/summary.md``.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys

from absl import app, flags

from launch import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "Config file with get_config/get_sweep: path[:arg].")
flags.DEFINE_string("workdir", None, "Root directory; each run gets WORKDIR/<run name>.")
flags.DEFINE_enum("mode", "local", ["local", "print", "manifest", "summarize"], "What to do with the grid.")
flags.DEFINE_list("metrics", ["loss", "eval/accuracy"], "Final metrics to tabulate (last logged value).")
flags.DEFINE_list("train_args", [], "Extra flags for every launch.train run (e.g. --num_cpu_devices=8).")
flags.DEFINE_integer("run_timeout", 0, "Seconds per local run (0: none).")


def load_sweep(config_arg: str) -> tuple[str, str, list[dict]]:
    """(path, arg, grid) from ``path[:arg]``; ValueError if the file has no usable get_sweep."""
    path, _, arg = config_arg.partition(":")
    if not os.path.exists(path):
        raise ValueError(f"config file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location("_sweep_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, "get_sweep"):
        raise ValueError(f"{path} defines no get_sweep(arg)")
    grid = list(mod.get_sweep(arg))
    if not grid:
        raise ValueError(f"{path}:get_sweep({arg!r}) returned an empty grid")
    for point in grid:
        if not isinstance(point, dict) or not point:
            raise ValueError(f"{path}: every sweep point must be a non-empty dict of overrides, got {point!r}")
    return path, arg, grid


def run_name(point: dict) -> str:
    """Directory-safe name of a sweep point: ``optim.lr=0.001,seed=1`` -> ``optim.lr=0.001_seed=1``."""
    parts = [f"{k}={v}" for k, v in sorted(point.items())]
    return "_".join(parts).replace("/", "-").replace(" ", "").replace("'", "").replace('"', "")


def _flag_value(v) -> str:
    if isinstance(v, (tuple, list)):
        return repr(tuple(v))
    return str(v)


def run_command(config_arg: str, point: dict, workdir: str, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "launch.train", f"--config={config_arg}", f"--workdir={workdir}"]
    cmd += [f"--config.{k}={_flag_value(v)}" for k, v in sorted(point.items())]
    return cmd + list(extra)


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


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.config or not FLAGS.workdir:
        raise app.UsageError("--config and --workdir are required")
    path, arg, grid = load_sweep(FLAGS.config)
    runs = [(run_name(p), p, os.path.join(FLAGS.workdir, run_name(p))) for p in grid]
    cmds = [run_command(FLAGS.config, p, wd, FLAGS.train_args) for _, p, wd in runs]
    if FLAGS.mode == "print":
        for c in cmds:
            print(shlex.join(c))
        return 0
    if FLAGS.mode == "manifest":
        os.makedirs(FLAGS.workdir, exist_ok=True)
        manifest = [{"name": n, "overrides": p, "workdir": wd, "command": shlex.join(c)}
                    for (n, p, wd), c in zip(runs, cmds)]
        out = os.path.join(FLAGS.workdir, "manifest.json")
        with open(out, "w") as f:
            json.dump({"config": FLAGS.config, "runs": manifest}, f, indent=2)
        print(out)
        return 0
    failed = []
    if FLAGS.mode == "local":
        for (name, _, wd), cmd in zip(runs, cmds):
            print(f"[sweep] {name}: {shlex.join(cmd)}", flush=True)
            rc = subprocess.call(cmd, timeout=FLAGS.run_timeout or None)
            if rc != 0:
                failed.append(name)
                print(f"[sweep] {name} exited with status {rc}", flush=True)
    rows = [(name, final_metrics(wd, FLAGS.metrics)) for name, _, wd in runs]
    table = summary_table(rows, FLAGS.metrics)
    os.makedirs(FLAGS.workdir, exist_ok=True)
    with open(os.path.join(FLAGS.workdir, "summary.md"), "w") as f:
        f.write(table)
    print(table, flush=True)
    if failed:
        raise SystemExit(f"sweep runs failed: {failed}")
    return 0


if __name__ == "__main__":
    cli.run(main)
