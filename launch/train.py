r"""Train (or ahead-of-time compile) an experiment.

    python -m launch.train --config=experiments/smoke.py --workdir=/tmp/smoke
    python -m launch.train --config=experiments/smoke.py --config.total_steps=50 --workdir=/tmp/smoke
    python -m launch.train --config=experiments/smoke.py --compile_only --num_cpu_devices=8 \
        --config.mesh.data=2 --config.mesh.fsdp=2 --config.mesh.tensor=2

Re-running with the same ``--workdir`` resumes from the newest complete checkpoint.
SIGTERM saves a checkpoint at the next step and exits with status 0.
Multi-process on CPU: add ``--coordinator_address=127.0.0.1:PORT --num_processes=N --process_id=I``;
on a multi-host TPU VM ``jax.distributed.initialize()`` runs without arguments.
"""
from __future__ import annotations

import json

from absl import app, flags, logging
from ml_collections import config_flags

from launch import cli, common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/NAME.py[:arg]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics.jsonl, TensorBoard events.")
flags.DEFINE_bool("compile_only", False, "Lower + compile the train step with abstract inputs, print "
                  "parameter count, per-device memory and FLOPs per step, and exit.")


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def format_compile_report(report: dict) -> str:
    """Human-readable lines for :func:`td_jax.train.trainer.compile_train_step`'s result."""
    lines = [f"mesh: {report['mesh']}", f"parameters: {report['params']['total']:,} "
             f"({', '.join(f'{k} {v:,}' for k, v in report['params'].items() if k != 'total')})"]
    mem = report["memory"]
    if mem is not None:
        fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
                  "generated_code_size_in_bytes")
        vals = {f: getattr(mem, f, None) for f in fields}
        per_device = sum(v for k, v in vals.items() if v is not None and k not in
                         ("alias_size_in_bytes", "generated_code_size_in_bytes")) - (vals["alias_size_in_bytes"] or 0)
        lines.append("memory per device: " + ", ".join(f"{k.replace('_size_in_bytes', '')} {_bytes(v)}"
                                                       for k, v in vals.items() if v is not None))
        lines.append(f"memory per device (arguments + outputs - aliased + temp): {_bytes(per_device)}")
    else:
        lines.append("memory per device: not reported by this backend")
    flops = report["flops"]
    lines.append(f"FLOPs per step (one device's program): {flops:.4g}" if flops is not None
                 else "FLOPs per step: not reported by this backend")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.config is None:
        raise app.UsageError("--config is required")
    common.init_runtime()
    from td_jax.train import trainer

    cfg = trainer.resolve_config(FLAGS.config)
    if FLAGS.compile_only:
        report = trainer.compile_train_step(cfg)
        print(format_compile_report(report), flush=True)
        return 0
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required (except with --compile_only)")
    result = trainer.train_and_evaluate(cfg, FLAGS.workdir)
    status = "preempted" if result.preempted else "done"
    logging.info("%s at step %d", status, result.step)
    import jax
    if jax.process_index() == 0:
        print(json.dumps({"status": status, "step": result.step, **{k: float(v) for k, v in
                          result.eval_metrics.items()}}), flush=True)
    return 0


if __name__ == "__main__":
    cli.run(main, defer_sigterm=True)   # a SIGTERM during start-up is handed to the trainer
