r"""Precompute a video-QA dataset's visual tokens — or a compressor's parameter-free stage — into a token store.

    python -m launch.extract_tokens --dataset=moving_shapes_qa/tiny --data_dir=/tmp/tfds \
        --out_dir=/tmp/tokens/tiny [--embed=patch --patch_size=8 --dim=64]
    python -m launch.extract_tokens --dataset=moving_shapes_qa/motion --data_dir=/tmp/tfds --patch_size=4 \
        --out_dir=/tmp/stores/td8 --compressor=token_dynamics --budget=8 --compressor_cfg='{"iters": 20}'
    python -m launch.extract_tokens --folder_jsonl=/data/qa/{split}.jsonl --num_frames=16 \
        --resolution=64 --out_dir=/tmp/tokens/qa --embed=my_pkg.towers:embed_frames

``--embed`` is "patch" (the fixed patch embedding of td_jax.data.patch_embed, with its 2-D
position embedding) or "module:function" naming any ``embed_fn(frames [B,T,R,R,3] uint8) ->
tokens [B,T,h,w,D]``.  With ``--compressor`` the store holds that compressor's precomputed
stage (k-means base + map, ToMe's merged slots, ...; one key per video from
``--compress_seed``) instead of the tokens.  Train on a store with the data config
``source="tokens", tokens_dir=OUT_DIR``.  Re-running completes an interrupted store.
"""
from __future__ import annotations

import json

from absl import app, flags

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
flags.DEFINE_enum("pos_embed", "sincos2d", ["sincos2d", "none"], "--embed=patch: spatial position embedding.")
flags.DEFINE_float("pos_scale", 0.1, "--embed=patch: per-entry RMS of the position embedding.")
flags.DEFINE_bool("temporal", False, "--embed=patch: also add a sin-cos embedding of the frame index.")
flags.DEFINE_integer("context", 0, "--embed=patch: project each patch's (2c+1)-patch window (0: the patch alone).")
flags.DEFINE_string("tower", "", "--embed=patch: a pretrained tower's weights (launch.train_tower) instead of the "
                    "random projection ('' = the projection).")
flags.DEFINE_string("compressor", "", "Store this registered compressor's parameter-free stage ('' = the tokens).")
flags.DEFINE_integer("budget", 0, "--compressor: its budget (output slots).")
flags.DEFINE_string("compressor_cfg", "{}", "--compressor: JSON object of its config fields.")
flags.DEFINE_integer("compress_seed", 0, "--compressor: seed of the per-video keys.")
flags.DEFINE_integer("batch_size", 16, "Videos per embed_fn call.")
flags.DEFINE_enum("dtype", "float16", ["float16", "float32"], "Stored token dtype (tower tokens only).")
flags.DEFINE_bool("skip_corrupt", False, "Skip (and log) undecodable videos instead of failing.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from td_jax.data import extract

    if FLAGS.folder_jsonl:
        src = dict(source="folder", folder_jsonl=FLAGS.folder_jsonl, video_root=FLAGS.video_root)
    else:
        src = dict(source="tfds", tfds_name=FLAGS.dataset, data_dir=FLAGS.data_dir)
    src.update(num_frames=FLAGS.num_frames, resolution=FLAGS.resolution, skip_corrupt=FLAGS.skip_corrupt)
    embed = ("patch", dict(patch_size=FLAGS.patch_size, dim=FLAGS.dim, seed=FLAGS.seed, pos_embed=FLAGS.pos_embed,
                           pos_scale=FLAGS.pos_scale, temporal=FLAGS.temporal,
                           context=FLAGS.context, **({"tower": FLAGS.tower} if FLAGS.tower else {}))) \
        if FLAGS.embed == "patch" \
        else (FLAGS.embed, {})
    compressor = None
    if FLAGS.compressor:
        if FLAGS.budget < 1:
            raise ValueError(f"--compressor={FLAGS.compressor} needs --budget >= 1, got {FLAGS.budget}")
        from td_jax import compressors

        cfg = compressors.cfg_from_json(FLAGS.compressor_cfg, "--compressor_cfg")
        compressor = {"name": FLAGS.compressor, "budget": FLAGS.budget, "cfg": cfg, "seed": FLAGS.compress_seed}
    meta = extract.build_store(FLAGS.out_dir, src, FLAGS.splits, embed=embed, compressor=compressor,
                               batch_size=FLAGS.batch_size, dtype=FLAGS.dtype)
    print(json.dumps({"out_dir": FLAGS.out_dir, "counts": meta["counts"], "arrays": meta["arrays"]}), flush=True)


if __name__ == "__main__":
    cli.run(main)
