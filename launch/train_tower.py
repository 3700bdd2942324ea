"""Pretrain the stand-in vision tower of the moving-shapes benchmarks (``td_jax.data.tower``).

    python -m launch.train_tower --out=/tmp/tower.npz [--context=1] [--patch=4] [--dim=64] \
        [--hidden=128] [--videos=240] [--steps=3000] [--seed=0] [--data_seed=1001]

Trains a per-window network on generated videos of ``--data_seed`` (never a benchmark split)
so that a linear read-out of one token names the shape and colour under its patch, and
writes its frozen weights; ``patch_embed(..., tower=OUT)`` (``task.patch.tower`` in a config,
``experiments/motion_qa.py:tower=pretrained``) applies them.  Prints the held-out accuracy
of the linear heads; check the tokens with ``python -m experiments.tower_probe``.
"""
from __future__ import annotations

import json
import os

from absl import app, flags

from launch import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "Where to write the weights (.npz).", required=True)
flags.DEFINE_integer("patch", 4, "Patch size in pixels.", lower_bound=1)
flags.DEFINE_integer("context", 1, "Patches each side of the window a token reads.", lower_bound=0)
flags.DEFINE_integer("dim", 64, "Token width.", lower_bound=1)
flags.DEFINE_integer("hidden", 128, "Hidden width of the per-window network.", lower_bound=1)
flags.DEFINE_integer("videos", 240, "Generated training videos.", lower_bound=1)
flags.DEFINE_integer("test_videos", 40, "Generated held-out videos (the accuracy printed).", lower_bound=1)
flags.DEFINE_integer("steps", 3000, "Adam steps.", lower_bound=1)
flags.DEFINE_integer("frames", 16, "Frames per generated video.", lower_bound=8)
flags.DEFINE_integer("resolution", 64, "Frame size in pixels.", lower_bound=24)
flags.DEFINE_integer("seed", 0, "Initialisation and batch-order seed.")
flags.DEFINE_integer("data_seed", 1001, "Generator seed of the training videos (the benchmarks use 0).")
flags.DEFINE_bool("overwrite", False, "Retrain even if --out exists (else an existing file with other settings "
                  "is an error and one with these settings is kept).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from td_jax.data import tower

    if FLAGS.resolution % FLAGS.patch:
        raise app.UsageError(f"--resolution={FLAGS.resolution} is not a multiple of --patch={FLAGS.patch}")
    settings = dict(patch=FLAGS.patch, context=FLAGS.context, dim=FLAGS.dim, hidden=FLAGS.hidden,
                    videos=FLAGS.videos, test_videos=FLAGS.test_videos, steps=FLAGS.steps, frames=FLAGS.frames,
                    resolution=FLAGS.resolution, seed=FLAGS.seed, data_seed=FLAGS.data_seed)
    if FLAGS.overwrite and os.path.exists(FLAGS.out):
        os.remove(FLAGS.out)
    meta = tower.ensure_tower(FLAGS.out, **settings)
    print(json.dumps({"out": FLAGS.out, "held_out_linear_accuracy": meta["held_out_linear_accuracy"]}))


if __name__ == "__main__":
    cli.run(main)
