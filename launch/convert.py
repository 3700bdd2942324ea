r"""Convert a Hugging Face checkpoint directory into a td_jax Orbax checkpoint.

    python -m launch.convert --hf_dir=~/hf/llava-onevision-qwen2-0.5b-ov-hf --out=/ckpt/llava_ov_0_5b
    python -m launch.convert --hf_dir=~/hf/llava-onevision-qwen2-0.5b-ov-hf --out=/ckpt/llava_ov_td32 \
        --compressor=token_dynamics --budget=32 --num_frames=32 --dtype=bfloat16

Reads ``config.json`` + safetensors (no torch, no pickle), checks every key and shape, and
writes ``out/params`` (Orbax), ``out/model.json`` (the architecture: model config, compressor,
budget) and a copy of the tokenizer files, which ``launch.eval --checkpoint=out`` and
``td_jax.convert.load_converted(out)`` read back.  A learned compressor's parameters (never in
a Hugging Face file) are freshly initialised from ``--seed``.  Paths may use ``~`` and ``$VARS``.
"""
from __future__ import annotations

import os
import shutil

from absl import app, flags, logging

from launch import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("hf_dir", None, "Hugging Face model directory (config.json + *.safetensors).")
flags.DEFINE_string("out", None, "Output directory for the Orbax checkpoint and model.json.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"], "Parameter / compute dtype.")
flags.DEFINE_string("cross_attention_prefix", "model.cross_attention.",
                    "Key prefix of the Token Dynamics cross-attention in original-layout checkpoints.")
flags.DEFINE_string("compressor", None, "Video LLMs: compressor name (default: LLaVA-OV's 'pool').")
flags.DEFINE_integer("budget", None, "Video LLMs: number of compressor output slots (default for pool / none: "
                     "every pooled cell / token of --num_frames frames).")
flags.DEFINE_string("compressor_cfg", None, "Video LLMs: compressor fields as a JSON object, e.g. '{\"iters\": 20}'.")
flags.DEFINE_integer("num_frames", None, "Video LLMs: frames per video (default budget; checks that the budget fits).")
flags.DEFINE_bool("apply_td_compat", None, "Original layout: apply the released cross-attention to the base.")
flags.DEFINE_integer("seed", 0, "PRNG seed of a learned compressor's fresh parameters.")
flags.DEFINE_bool("overwrite", False, "Replace an existing checkpoint at --out.")
flags.mark_flags_as_required(["hf_dir", "out"])

# Tokenizer files copied next to the converted weights (whichever exist).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "added_tokens.json", "chat_template.json", "chat_template.jinja", "generation_config.json")


def overrides_from_flags() -> dict:
    """The VLM overrides the user passed (JSON of --compressor_cfg checked here)."""
    out = {}
    if FLAGS.compressor is not None:
        out["compressor"] = FLAGS.compressor
    if FLAGS.budget is not None:
        out["budget"] = FLAGS.budget
    if FLAGS.compressor_cfg is not None:
        from td_jax.compressors import cfg_from_json
        out["compressor_cfg"] = cfg_from_json(FLAGS.compressor_cfg, "--compressor_cfg")
    if FLAGS.apply_td_compat is not None:
        out["td_compat_apply"] = FLAGS.apply_td_compat
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax
    from td_jax.convert import expand_path, load_hf
    from td_jax.convert.checkpoint import save_converted

    hf_dir, out = expand_path(FLAGS.hf_dir), os.path.abspath(expand_path(FLAGS.out))
    if os.path.exists(os.path.join(out, "params")) and not FLAGS.overwrite:
        raise FileExistsError(f"{out}/params already exists (pass --overwrite to replace it)")
    module, params = load_hf(hf_dir, FLAGS.dtype, cross_attention_prefix=FLAGS.cross_attention_prefix,
                             key=jax.random.PRNGKey(FLAGS.seed), num_frames=FLAGS.num_frames,
                             **overrides_from_flags())
    n = sum(int(x.size) for x in jax.tree.leaves(params))
    save_converted(out, module, params, source=hf_dir, overwrite=FLAGS.overwrite)
    copied = [f for f in TOKENIZER_FILES if os.path.isfile(os.path.join(hf_dir, f))]
    for f in copied:
        shutil.copy2(os.path.join(hf_dir, f), os.path.join(out, f))
    logging.info("wrote %s (%s, %d parameters; tokenizer files %s)", out, type(module).__name__, n, copied)
    extra = ""
    if hasattr(module.cfg, "compressor"):
        extra = f", compressor {module.cfg.compressor} (budget {module.cfg.budget})"
    print(f"converted {hf_dir} -> {out}: {type(module).__name__}, {n:,} parameters{extra}")


if __name__ == "__main__":
    cli.run(main)
