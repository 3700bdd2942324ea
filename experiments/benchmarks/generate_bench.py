r"""Batched video-LLM generation: the jitted ``td_jax.models.vlm.generate`` against the same
computation run without ``jit`` (what ``generate`` did before it was compiled), in one process.

    python -m experiments.benchmarks.generate_bench [--new_tokens=8 --batch=2 --frames=2 --repeats=3]

The model is the tiny LLaVA-OV shape of issue 17 (SigLIP 56 px / 14, Qwen2 width 64, 2 layers,
random weights; pooled video). Rows: the un-jitted path (every call traces and dispatches op by
op; the decoding ``lax.scan`` recompiles its body per call), the first jitted call (compile +
run) and later jitted calls (the cached program), each the median of ``--repeats`` calls after
one warm-up where it applies.
"""
from __future__ import annotations

import os
import statistics
import time

from absl import app, flags

from experiments.benchmarks import load_sentence

FLAGS = flags.FLAGS
flags.DEFINE_integer("new_tokens", 8, "Tokens generated per row.")
flags.DEFINE_integer("batch", 2, "Videos (rows) per call.")
flags.DEFINE_integer("frames", 2, "Frames per video.")
flags.DEFINE_integer("repeats", 3, "Timed calls per row of the table.")


def build(frames: int, batch: int):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from td_jax.convert import params as params_lib
    from td_jax.models import configs as C
    from td_jax.models.vlm import VideoLLM

    llm = C.LLMConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2,
                      rope_theta=10000.0)
    vision = C.VisionConfig(image_size=56, patch_size=14, hidden_size=32, intermediate_size=64, num_layers=3,
                            num_heads=4)
    cfg = C.VLMConfig(llm=llm, vision=vision, select_layer=-2, compressor="pool", budget=frames * 4,
                      video_token_id=101, pad_id=0)
    module = VideoLLM(cfg)
    args = params_lib.init_args(cfg, frames)
    params = module.init({"params": jax.random.key(0)}, args[0], None,
                         jnp.zeros(args[2].shape, args[2].dtype))["params"]
    rs = np.random.RandomState(0)
    frames_ = jnp.asarray(rs.randint(0, 255, (batch, frames, 56, 56, 3)).astype(np.uint8))
    ids = np.concatenate([rs.randint(2, 99, (batch, 3)), np.full((batch, 1), 101), rs.randint(2, 99, (batch, 4))], 1)
    return module, {"params": params}, jnp.asarray(ids), frames_


def unjitted(module, variables, ids, frames, new_tokens):
    """The pre-jit ``generate``: prompt embeddings then ``generate_from_embeds``, op by op."""
    from td_jax.models import llm as llm_lib
    from td_jax.models.vlm import VideoLLM

    emb, valid, _ = module.apply(variables, ids, None, frames, None, method=VideoLLM.prompt_embeds)
    return llm_lib.generate_from_embeds(module, variables, emb, valid, max_new_tokens=new_tokens,
                                        pad_id=module.cfg.pad_id)


def timed(fn, repeats: int) -> list[float]:
    import jax

    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - t)
    return out


def main(argv):
    del argv
    import jax
    import numpy as np

    from td_jax.models import vlm

    load_start = os.getloadavg()[0]
    module, variables, ids, frames = build(FLAGS.frames, FLAGS.batch)
    n = FLAGS.new_tokens
    eager = lambda: unjitted(module, variables, ids, frames, n)
    jitted = lambda: vlm.generate(module, variables, ids, frames=frames, max_new_tokens=n)
    t_eager = timed(eager, FLAGS.repeats)
    first = timed(jitted, 1)[0]
    t_jit = timed(jitted, FLAGS.repeats)
    same = np.array_equal(np.asarray(eager()["ids"]), np.asarray(jitted()["ids"]))
    load_end = os.getloadavg()[0]
    med_e, med_j = statistics.median(t_eager), statistics.median(t_jit)
    print(f"generate: batch {FLAGS.batch}, {FLAGS.frames} frames, {n} new tokens, tiny LLaVA-OV shape "
          f"(jax {jax.__version__}, {os.cpu_count()} CPUs)")
    print("| path | median s per call | vs jitted |")
    print("|---|---|---|")
    print(f"| un-jitted (before) | {med_e:.3f} | {med_e / med_j:.0f}x |")
    print(f"| jitted, first call (compile + run) | {first:.3f} | {first / med_j:.0f}x |")
    print(f"| jitted, later calls | {med_j:.4f} | 1x |")
    print(f"same token ids: {same}. {load_sentence(load_start, load_end, os.cpu_count() or 1)}")


if __name__ == "__main__":
    app.run(main)
