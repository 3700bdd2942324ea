"""Convert a Hugging Face checkpoint directory into a td_jax Orbax checkpoint.

    python -m launch.convert --hf_dir=/path/to/llava-onevision-qwen2-0.5b-ov --out=/ckpt/llava_ov_0_5b

Reads ``config.json`` + safetensors (no torch, no pickle), checks every key and shape,
and writes ``out/params`` (Orbax) and ``out/model.json`` (the model config), which
``td_jax.convert.checkpoint.load_converted(out)`` turns back into ``(module, params)``.
"""
from __future__ import annotations

from absl import app, flags, logging

from launch import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("hf_dir", None, "Hugging Face model directory (config.json + *.safetensors).")
flags.DEFINE_string("out", None, "Output directory for the Orbax checkpoint and model.json.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"], "Parameter / compute dtype.")
flags.DEFINE_string("cross_attention_prefix", "model.cross_attention.",
                    "Key prefix of the Token Dynamics cross-attention in original-layout checkpoints.")
flags.DEFINE_string("compressor", None, "Video LLMs: compressor name (default: LLaVA-OV's 'pool').")
flags.DEFINE_integer("budget", None, "Video LLMs: number of compressor output slots.")
flags.DEFINE_bool("apply_td_compat", None, "Original layout: apply the released cross-attention to the base.")
flags.DEFINE_bool("overwrite", False, "Replace an existing checkpoint at --out.")
flags.mark_flags_as_required(["hf_dir", "out"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from td_jax.convert import load_hf
    from td_jax.convert.checkpoint import save_converted

    overrides = {}
    if FLAGS.compressor is not None:
        overrides["compressor"] = FLAGS.compressor
    if FLAGS.budget is not None:
        overrides["budget"] = FLAGS.budget
    if FLAGS.apply_td_compat is not None:
        overrides["td_compat_apply"] = FLAGS.apply_td_compat
    module, params = load_hf(FLAGS.hf_dir, FLAGS.dtype, cross_attention_prefix=FLAGS.cross_attention_prefix, **overrides)
    import jax
    n = sum(int(x.size) for x in jax.tree.leaves(params))
    save_converted(FLAGS.out, module, params, source=FLAGS.hf_dir, overwrite=FLAGS.overwrite)
    logging.info("wrote %s (%s, %d parameters)", FLAGS.out, type(module).__name__, n)
    print(f"converted {FLAGS.hf_dir} -> {FLAGS.out}: {type(module).__name__}, {n:,} parameters")


if __name__ == "__main__":
    cli.run(main)
