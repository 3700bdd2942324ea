"""Precompute visual tokens of a video-QA dataset into an ArrayRecord token store.

    python -m launch.extract_tokens --dataset=moving_shapes_qa/tiny --data_dir=/tmp/tfds \
        --out_dir=/tmp/tokens/tiny [--embed=patch --patch_size=8 --dim=64]
    python -m launch.extract_tokens --folder_jsonl=/data/qa/{split}.jsonl --num_frames=16 \
        --resolution=64 --out_dir=/tmp/tokens/qa --embed=my_pkg.towers:embed_frames

``--embed`` is "patch" (the fixed patch embedding of td_jax.data.patch_embed) or
"module:function" naming any ``embed_fn(frames [B,T,R,R,3] uint8) -> tokens [B,T,h,w,D]``.
Train on the store with the data config ``source="tokens", tokens_dir=OUT_DIR``.
"""
from __future__ import annotations

import importlib
import time

from absl import app, flags, logging

from launch import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "moving_shapes_qa/tiny", "TFDS NAME/CONFIG to read (ignored with --folder_jsonl).")
flags.DEFINE_string("data_dir", "", "TFDS data_dir.")
flags.DEFINE_string("folder_jsonl", "", "Read a video folder instead: JSONL path with '{split}'.")
flags.DEFINE_string("video_root", "", "Folder source: video paths are relative to this ('' = JSONL dir).")
flags.DEFINE_integer("num_frames", 0, "Frames per video (0 = as stored; required for folders).")
flags.DEFINE_integer("resolution", 0, "Frame side in px (0 = as stored; required for folders).")
flags.DEFINE_list("splits", ["train", "validation", "test"], "Splits to extract.")
flags.DEFINE_string("out_dir", None, "Token store directory to write.", required=True)
flags.DEFINE_string("embed", "patch", "'patch' or 'module:function' returning an embed_fn-compatible callable.")
flags.DEFINE_integer("patch_size", 8, "--embed=patch: patch side in px.")
flags.DEFINE_integer("dim", 64, "--embed=patch: token width D.")
flags.DEFINE_integer("seed", 0, "--embed=patch: seed of the fixed projection.")
flags.DEFINE_integer("batch_size", 16, "Videos per embed_fn call.")
flags.DEFINE_enum("dtype", "float16", ["float16", "float32"], "Stored token dtype.")
flags.DEFINE_bool("skip_corrupt", False, "Skip (and log) undecodable videos instead of failing.")


def load_embed(spec: str, *, patch_size: int, dim: int, seed: int):
    """``"patch"`` → the fixed patch embedding; ``"module:function"`` → that callable."""
    if spec == "patch":
        from td_jax.data.patch_embed import make_patch_embed

        return make_patch_embed(patch_size, dim, seed), {"embed": "patch", "patch_size": patch_size, "dim": dim,
                                                         "seed": seed}
    if ":" not in spec:
        raise ValueError(f"--embed must be 'patch' or 'module:function', got {spec!r}")
    mod, fn = spec.split(":", 1)
    return getattr(importlib.import_module(mod), fn), {"embed": spec}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from td_jax.data import pipeline, tokens_store

    embed_fn, embed_meta = load_embed(FLAGS.embed, patch_size=FLAGS.patch_size, dim=FLAGS.dim, seed=FLAGS.seed)
    if FLAGS.folder_jsonl:
        cfg = dict(source="folder", folder_jsonl=FLAGS.folder_jsonl, video_root=FLAGS.video_root)
        origin = FLAGS.folder_jsonl
    else:
        cfg = dict(source="tfds", tfds_name=FLAGS.dataset, data_dir=FLAGS.data_dir)
        origin = FLAGS.dataset
    cfg.update(num_frames=FLAGS.num_frames, resolution=FLAGS.resolution, skip_corrupt=FLAGS.skip_corrupt)
    shape, counts = None, {}
    for split in FLAGS.splits:
        t0 = time.time()
        n, s = tokens_store.extract_split(pipeline.iter_examples(cfg, split), FLAGS.out_dir, split, embed_fn,
                                          batch_size=FLAGS.batch_size, dtype=FLAGS.dtype)
        if shape is not None and s != shape:
            raise ValueError(f"split {split} token shape {s} differs from {shape}")
        shape, counts[split] = s, n
        logging.info("%s: %d examples, tokens %s, %.1fs", split, n, s, time.time() - t0)
        print(f"{split}: {n} examples -> {tokens_store.split_path(FLAGS.out_dir, split)} tokens {s}")
    tokens_store.write_meta(FLAGS.out_dir, {"token_shape": list(shape), "dtype": FLAGS.dtype, "source": origin,
                                            "counts": counts, **embed_meta})


if __name__ == "__main__":
    cli.run(main)
