r"""The main job: the motion-QA grid of experiments/motion_qa.py, from an empty machine to results/.

    python -m launch.motion_qa --config=experiments/motion_qa.py --results_dir=results
    python -m launch.motion_qa --config=experiments/motion_qa.py:tiny --results_dir=/tmp/mqa_tiny
    python -m launch.motion_qa --config=experiments/motion_qa.py --results_dir=results --report_only --readme=README.md
    python -m launch.motion_qa --config=experiments/motion_qa.py --results_dir=results --report_only --from_stored --readme=README.md

One command: ``prepare`` (build the dataset and the compressor stores if absent) → every run
of ``get_sweep`` in ``--workdir`` (default ``RESULTS_DIR/runs``; finished runs are skipped,
an interrupted one resumes from its newest complete checkpoint, so after a kill the same
command finishes the job with the same results) → the report
(``experiments/motion_qa_report.py``).  ``--config.KEY=VALUE`` overrides apply to every run,
except those of keys the experiment fixes (``FIXED_KEYS``: the data, the tower, the arms'
compressors, seeds and steps), which are refused.
"""
from __future__ import annotations

import json
import os
import time

from absl import app, flags
from ml_collections import config_flags

from launch import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "experiments/motion_qa.py", "The experiment (path[:arg]).",
                                lock_config=False)
flags.DEFINE_string("results_dir", "results", "Where motion_qa.json / .md and the plots go.")
flags.DEFINE_string("workdir", "", "The runs' directory ('' = RESULTS_DIR/runs).")
flags.DEFINE_string("readme", "", "Also write the results block into this README (between its motion_qa markers).")
flags.DEFINE_bool("report_only", False, "Run nothing: rewrite the report from the finished runs.")
flags.DEFINE_bool("from_stored", False, "With --report_only: re-render from the stored motion_qa.json / "
                  "motion_qa_meta.json (the runs may be gone), every rule re-applied; the example plot left as it is. "
                  "An arm the stored report lacks whose runs have finished in --workdir since is added.")
flags.DEFINE_bool("in_process", True, "Run every run in this process (else one launch.train subprocess each).")
flags.DEFINE_string("compilation_cache", "", "JAX compilation cache directory ('' = WORKDIR/.jax_cache).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS["compilation_cache"].present and not FLAGS.in_process:
        raise app.UsageError("--compilation_cache is only used with --in_process (the default); "
                             "--in_process=false runs launch.train subprocesses, which ignore it")
    from td_jax.train import sweep

    config_arg = config_flags.get_config_filename(FLAGS["config"])
    overrides = config_flags.get_override_values(FLAGS["config"])
    workdir = os.path.abspath(FLAGS.workdir or os.path.join(FLAGS.results_dir, "runs"))
    mod, arg = sweep.load_module(config_arg)
    sweep.check_overrides(mod, overrides)
    if FLAGS.from_stored and not FLAGS.report_only:
        raise app.UsageError("--from_stored re-renders a stored report: use it with --report_only")
    if not FLAGS.report_only:
        t0 = time.time()
        runs = sweep.expand(config_arg, workdir)
        if FLAGS.in_process:
            sweep.enable_compilation_cache(FLAGS.compilation_cache or os.path.join(workdir, ".jax_cache"))
        mod.prepare(arg)
        failed = sweep.run_local(runs, config_arg, overrides=overrides, in_process=FLAGS.in_process)
        sweep.add_wall_time(workdir, time.time() - t0)
        if failed:
            raise SystemExit(f"[motion_qa] runs failed: {failed} (fix, then run the same command to finish)")
        if not all(sweep.is_done(r) for r in runs):
            print("[motion_qa] stopped before the grid finished; run the same command again to resume", flush=True)
            return 0
    paths = mod.report(arg, workdir, FLAGS.results_dir, FLAGS.readme, **({"stored": True} if FLAGS.from_stored else {}))
    print(json.dumps({"results": paths}), flush=True)
    return 0


if __name__ == "__main__":
    cli.run(main)
