r"""Run a config's ``get_sweep(arg)`` grid, one workdir per run, and tabulate (or report) it.

    python -m launch.sweep --config=experiments/smoke.py:synthetic --workdir=/tmp/sweep            # run locally
    python -m launch.sweep --config=experiments/smoke.py:synthetic --workdir=/tmp/sweep --config.total_steps=20
    python -m launch.sweep --config=experiments/smoke.py:synthetic --workdir=/tmp/sweep --mode=print
    python -m launch.sweep --config=experiments/motion_qa.py --workdir=gs://b/mqa --mode=tpu --tpu=NAME --zone=Z
    python -m launch.sweep --config=experiments/smoke.py:synthetic --workdir=gs://b/sweep --mode=manifest

Local runs go one after another (``--in_process``: in this process, compiled programs shared
through JAX's compilation cache; else ``launch.train`` subprocesses); a finished run (its
``done.json``) is skipped and an interrupted one resumes, so re-running a killed sweep
finishes it.  ``--config.KEY=VALUE`` overrides apply to every run, after the grid's.  If the
config file defines ``prepare(arg)`` it runs first (local mode), and ``--report`` calls its
``report(arg, workdir, results_dir, readme)`` afterwards.  ``print`` / ``tpu`` emit the
``launch.train`` / ``launch.tpu`` command of every run; ``manifest`` writes
``WORKDIR/manifest.json`` for a scheduler; a table of final metrics goes to ``WORKDIR/summary.md``.
A flag only another mode reads (e.g. ``--train_args`` / ``--run_timeout`` with ``--in_process``)
is a usage error, not silently dropped.
"""
from __future__ import annotations

import json
import os
import shlex
import time

from absl import app, flags
from ml_collections import config_flags

from launch import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file with get_config/get_sweep: path[:arg].",
                                lock_config=False)
flags.DEFINE_string("workdir", None, "Root directory; each run gets WORKDIR/<run name>.")
flags.DEFINE_enum("mode", "local", ["local", "print", "tpu", "manifest", "summarize"], "What to do with the grid.")
flags.DEFINE_list("metrics", ["loss", "eval/accuracy"], "Final metrics to tabulate (last logged value).")
flags.DEFINE_list("train_args", [], "Extra flags for every launch.train subprocess (e.g. --num_cpu_devices=8).")
flags.DEFINE_integer("run_timeout", 0, "Seconds per subprocess run (0: none).")
flags.DEFINE_bool("in_process", True, "Local mode: run in this process (else one launch.train subprocess per run).")
flags.DEFINE_string("compilation_cache", "", "JAX compilation cache directory ('' = WORKDIR/.jax_cache).")
flags.DEFINE_bool("report", False, "After the runs, call the config file's report(arg, workdir, results_dir, readme).")
flags.DEFINE_string("results_dir", "", "--report: where the results go.")
flags.DEFINE_string("readme", "", "--report: also refresh this README's results block.")
flags.DEFINE_string("tpu", "TPU_NAME", "--mode=tpu: TPU VM name.")
flags.DEFINE_string("zone", "ZONE", "--mode=tpu: GCP zone.")


def _flag_uses() -> dict[str, tuple[bool, str]]:
    """Each flag only some modes read -> (whether this invocation reads it, when it is read)."""
    local, sub = FLAGS.mode == "local", FLAGS.mode == "local" and not FLAGS.in_process
    tabulates = FLAGS.mode in ("local", "summarize")
    return {
        "train_args": (FLAGS.mode in ("print", "tpu", "manifest") or sub,
                       "--mode=print/tpu/manifest, or --mode=local with --in_process=false"),
        "run_timeout": (sub, "--mode=local with --in_process=false"),
        "compilation_cache": (local and FLAGS.in_process, "--mode=local with --in_process (the default)"),
        "in_process": (local, "--mode=local"),
        "tpu": (FLAGS.mode == "tpu", "--mode=tpu"),
        "zone": (FLAGS.mode == "tpu", "--mode=tpu"),
        "metrics": (tabulates, "--mode=local/summarize"),
        "report": (tabulates, "--mode=local/summarize"),
        "results_dir": (tabulates and FLAGS.report, "--report"),
        "readme": (tabulates and FLAGS.report, "--report"),
    }


def check_flag_uses() -> None:
    """A flag given where this invocation ignores it is an error, not silently dropped."""
    for name, (used, when) in _flag_uses().items():
        if FLAGS[name].present and not used:
            raise app.UsageError(f"--{name} is only used with {when}; this invocation "
                                 f"(--mode={FLAGS.mode}, --in_process={FLAGS.in_process}) ignores it")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.config is None or not FLAGS.workdir:
        raise app.UsageError("--config and --workdir are required")
    check_flag_uses()
    from td_jax.train import sweep

    config_arg = config_flags.get_config_filename(FLAGS["config"])
    overrides = config_flags.get_override_values(FLAGS["config"])
    runs = sweep.expand(config_arg, FLAGS.workdir)
    mod, arg = sweep.load_module(config_arg)
    sweep.check_overrides(mod, overrides)
    if FLAGS.mode == "print":
        for r in runs:
            print(shlex.join(sweep.train_command(config_arg, r, overrides, FLAGS.train_args)))
        return 0
    if FLAGS.mode == "tpu":
        for r in runs:
            args = sweep.train_args(r, overrides) + list(FLAGS.train_args)
            print(shlex.join(["python", "-m", "launch.tpu", f"--tpu={FLAGS.tpu}", f"--zone={FLAGS.zone}",
                              f"--config={config_arg}", f"--workdir={r.workdir}",
                              "--train_args=" + sweep.list_flag(args)]))
        return 0
    if FLAGS.mode == "manifest":
        os.makedirs(FLAGS.workdir, exist_ok=True)
        manifest = [{"name": r.name, "overrides": r.overrides, "workdir": r.workdir,
                     "command": shlex.join(sweep.train_command(config_arg, r, overrides, FLAGS.train_args))}
                    for r in runs]
        out = os.path.join(FLAGS.workdir, "manifest.json")
        with open(out, "w") as f:
            json.dump({"config": config_arg, "overrides": overrides, "runs": manifest}, f, indent=2)
        print(out)
        return 0
    failed = []
    if FLAGS.mode == "local":
        if FLAGS.in_process:
            sweep.enable_compilation_cache(FLAGS.compilation_cache or os.path.join(FLAGS.workdir, ".jax_cache"))
        if hasattr(mod, "prepare"):
            mod.prepare(arg)
        t0 = time.time()
        failed = sweep.run_local(runs, config_arg, overrides=overrides, in_process=FLAGS.in_process,
                                 extra_args=FLAGS.train_args, timeout=FLAGS.run_timeout or None)
        sweep.add_wall_time(FLAGS.workdir, time.time() - t0)
    table = sweep.summary_table([(r.name, sweep.final_metrics(r.workdir, FLAGS.metrics)) for r in runs],
                                FLAGS.metrics)
    os.makedirs(FLAGS.workdir, exist_ok=True)
    with open(os.path.join(FLAGS.workdir, "summary.md"), "w") as f:
        f.write(table)
    print(table, flush=True)
    if failed:
        raise SystemExit(f"sweep runs failed: {failed}")
    if FLAGS.report:
        if not hasattr(mod, "report"):
            raise ValueError(f"{config_arg.partition(':')[0]} defines no report(arg, workdir, results_dir, readme)")
        mod.report(arg, FLAGS.workdir, FLAGS.results_dir or FLAGS.workdir, FLAGS.readme)
    return 0


if __name__ == "__main__":
    cli.run(main)
