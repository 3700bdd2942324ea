"""Build a TFDS dataset of this project as array_record (no TensorFlow needed).

    python -m launch.build_data --dataset=moving_shapes_qa/default --data_dir=~/tensorflow_datasets
    python -m launch.build_data --dataset=moving_shapes_qa/tiny --data_dir=/tmp/tfds \
        --contact_sheet=docs/contact_sheet.png
    python -m launch.build_data --dataset=video_qa_folder/f16_r224 --data_dir=DIR \
        --manual_dir=/data/nextqa_mc [--skip_corrupt]

Read back with ``tfds.data_source("moving_shapes_qa/default", split="train", data_dir=DIR)``
(after ``import td_jax.data``) or ``tfds.builder_from_directory(DIR/moving_shapes_qa/default/2.0.0)``.
"""
from __future__ import annotations

import os
import time

from absl import app, flags, logging

from launch import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "moving_shapes_qa/default", "NAME/CONFIG: moving_shapes_qa/{tiny,default,large,motion,long} "
                    "or video_qa_folder/{tiny,f16_r64,f16_r224,f32_r384}.")
flags.DEFINE_string("data_dir", None, "TFDS data_dir to write into (default: TFDS's ~/tensorflow_datasets).")
flags.DEFINE_string("manual_dir", None, "video_qa_folder: folder with {split}.jsonl and the videos.")
flags.DEFINE_integer("num_workers", -1, "Generator/decoder processes (-1: one per CPU, at most 8; 0: inline).")
flags.DEFINE_bool("skip_corrupt", False, "video_qa_folder: skip (log and count) undecodable videos instead of failing.")
flags.DEFINE_string("contact_sheet", None, "moving_shapes_qa: also write a PNG contact sheet of examples here.")
flags.DEFINE_string("contact_split", "validation", "Split the contact sheet draws from.")
flags.DEFINE_integer("contact_examples", 8, "Examples on the contact sheet (one per family from the first ones).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import tensorflow_datasets as tfds

    import td_jax.data  # noqa: F401  (registers the builders)

    name = FLAGS.dataset.split("/")[0]
    kwargs = {}
    if name == "moving_shapes_qa":
        kwargs["num_workers"] = None if FLAGS.num_workers < 0 else FLAGS.num_workers
    elif name == "video_qa_folder":
        if not FLAGS.manual_dir:
            raise app.UsageError("video_qa_folder needs --manual_dir")
        if not os.path.isdir(FLAGS.manual_dir):
            raise FileNotFoundError(f"--manual_dir={FLAGS.manual_dir}: no such directory")
        if not os.listdir(FLAGS.manual_dir):
            raise ValueError(f"--manual_dir={FLAGS.manual_dir}: empty (expected {{split}}.jsonl files and videos)")
        kwargs["num_workers"] = 0 if FLAGS.num_workers < 0 else FLAGS.num_workers
        kwargs["skip_corrupt"] = FLAGS.skip_corrupt
    else:
        raise app.UsageError(f"unknown --dataset {FLAGS.dataset!r}: expected moving_shapes_qa/CONFIG or "
                             "video_qa_folder/CONFIG")
    builder = tfds.builder(FLAGS.dataset, data_dir=FLAGS.data_dir, **kwargs)
    t0 = time.time()
    dl_config = tfds.download.DownloadConfig(manual_dir=FLAGS.manual_dir) if FLAGS.manual_dir else None
    builder.download_and_prepare(download_config=dl_config)
    splits = {s: builder.info.splits[s].num_examples for s in builder.info.splits}
    logging.info("built %s in %.1fs at %s: %s", builder.info.full_name, time.time() - t0, builder.data_dir, splits)
    print(f"{builder.info.full_name}: {splits} in {time.time() - t0:.1f}s -> {builder.data_dir}")
    if name == "video_qa_folder" and builder.info.metadata.get("skipped"):
        print(f"skipped corrupt videos: {dict(builder.info.metadata['skipped'])}")

    if FLAGS.contact_sheet:
        if name != "moving_shapes_qa":
            raise app.UsageError("--contact_sheet is for moving_shapes_qa")
        from td_jax.data.contact_sheet import contact_sheet

        src = builder.as_data_source(FLAGS.contact_split)
        picked, seen = [], set()
        for i in range(len(src)):  # one example per family first, then any
            ex = src[i]
            if ex["family"] not in seen or len(seen) >= len(td_jax.data.FAMILIES):
                seen.add(ex["family"])
                picked.append(ex)
            if len(picked) == FLAGS.contact_examples:
                break
        n = contact_sheet(picked, FLAGS.contact_sheet)
        print(f"contact sheet of {n} examples -> {FLAGS.contact_sheet}")


if __name__ == "__main__":
    cli.run(main)
