r"""Evaluate a trained checkpoint (or the task's pretrained / converted weights).

    python -m launch.eval --workdir=/tmp/smoke                       # newest checkpoint, validation split
    python -m launch.eval --workdir=/tmp/smoke --step=20 --split=test
    python -m launch.eval --config=experiments/smoke.py --pretrained --output_dir=/tmp/eval_hf

The config is read back from the checkpoint unless ``--config`` is given. Writes
``OUTPUT_DIR/eval_<split>_<step>.json`` (metrics) and ``.md`` (a table; per question family
for multiple choice).
"""
from __future__ import annotations

import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

from launch import cli, common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config (default: the one saved in the checkpoint).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory holding checkpoints/.")
flags.DEFINE_integer("step", -1, "Checkpoint step (-1: the newest complete one).")
flags.DEFINE_string("split", "validation", "Dataset split to evaluate.")
flags.DEFINE_bool("pretrained", False, "Evaluate the task's pretrained weights (e.g. converted HF weights named "
                  "by the config) instead of a checkpoint.")
flags.DEFINE_string("output_dir", None, "Where to write the JSON + markdown (default: --workdir).")
flags.DEFINE_integer("eval_steps", -1, "Batches to evaluate (-1: the config's eval_steps; 0: whole split).")


def run(config, *, workdir: str | None, step: int, split: str, pretrained: bool, output_dir: str,
        eval_steps: int = -1) -> dict:
    """Restores params, evaluates ``split``, writes JSON + markdown; returns the record."""
    import ml_collections as mlc
    from td_jax.train import checkpoint as ckpt_lib
    from td_jax.train import trainer

    ck = None
    if not pretrained:
        if not workdir:
            raise app.UsageError("--workdir is required unless --pretrained")
        # Read-only (creates and renames nothing); the step is checksum-verified, a damaged newest
        # one is skipped (and named in the record), a damaged explicit --step is an error.
        ck = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
        try:
            step = ck.newest_intact_step(step if step >= 0 else None)
            if config is None:
                config = mlc.ConfigDict(ck.read_meta(step)["config"])
        except BaseException:
            ck.close()
            raise
    if config is None:
        raise app.UsageError("--config is required with --pretrained")
    cfg = trainer.resolve_config(config)
    if eval_steps >= 0:
        with cfg.unlocked():
            cfg.eval_steps = eval_steps
    s = trainer.build(cfg)
    if pretrained:
        state = trainer.initial_state(s)
        if s.task.load_pretrained() is None:
            raise ValueError(f"task {cfg.task.name!r} has no pretrained weights configured")
        step = 0
    else:
        abstract = ckpt_lib.abstract_with_shardings(s.abstract_state, s.state_shardings)
        with ck:
            state, _ = ck.restore(step, abstract)
    preds: list = []
    metrics = trainer.evaluate(s, trainer.make_eval_step(s), state["params"], split=split, predictions=preds)
    extra = {"damaged_steps": {str(k): v for k, v in sorted(ck.damaged.items())}} if ck is not None and ck.damaged \
        else {}
    record = trainer.write_eval(s, output_dir, split=split, step=step, metrics=metrics,
                                source="pretrained" if pretrained else os.path.abspath(workdir), predictions=preds,
                                extra=extra)
    logging.info("wrote %s", trainer.eval_paths(output_dir, split, step))
    return record


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    common.init_runtime()
    config = FLAGS.config
    out = FLAGS.output_dir or FLAGS.workdir
    if not out:
        raise app.UsageError("--output_dir or --workdir is required")
    record = run(config, workdir=FLAGS.workdir, step=FLAGS.step, split=FLAGS.split, pretrained=FLAGS.pretrained,
                 output_dir=out, eval_steps=FLAGS.eval_steps)
    import jax
    if jax.process_index() == 0:
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    cli.run(main)
