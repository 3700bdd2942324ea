r"""Benchmark: ToMe's best-partner search, blocked vs one dense similarity matrix, side by side.

    python -m experiments.benchmarks.tome_bench [--batch=64] [--tokens=4096] [--dim=64] [--budget=8] \
        [--blocks=none,64,128,256] [--repeats=5] [--out=results/tome_bench.md]

``td_jax.compressors.tome.merge_to`` on random tokens ``[batch, tokens, dim]`` down to
``budget`` tokens (the motion-QA cache: 64 videos of 16x16x16 tokens, width 64, to 8),
with ``block`` = None (the whole ``[B, N/2, N/2]`` cosine matrix, then ``argmax``) and with
the blocked search of ``td_jax.compressors.tome.best_match`` (A rows ``block`` at a time,
``max`` + first index reaching it).  Every variant runs in the same process on the same
input, compiled first; the table gives the median wall time, the ratio to the dense
search, and whether the merge (sizes and assignments) is identical to the dense one.
"""
from __future__ import annotations

import json
import os
import time

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    """This script's absl flags (defined only when run as a script)."""
    flags.DEFINE_integer("batch", 64, "Videos per call.")
    flags.DEFINE_integer("tokens", 4096, "Tokens per video (T*H*W).")
    flags.DEFINE_integer("dim", 64, "Token width.")
    flags.DEFINE_integer("budget", 8, "Tokens left after merging.")
    flags.DEFINE_list("blocks", ["none", "64", "128", "256"], "Block sizes to time ('none' = dense).")
    flags.DEFINE_integer("repeats", 5, "Timed calls per variant (median reported).")
    flags.DEFINE_string("out", "", "Write the markdown table here (and the numbers to the .json beside it).")


def parse_block(s: str) -> int | None:
    if s.strip().lower() == "none":
        return None
    b = int(s)
    if b < 1:
        raise ValueError(f"--blocks: a block size must be >= 1 or 'none', got {s!r}")
    return b


def measure(batch: int, tokens: int, dim: int, budget: int, blocks: list[int | None], repeats: int) -> list[dict]:
    """One row per block size: median seconds, ratio to the dense search, identical merge."""
    import jax
    import numpy as np
    from td_jax.compressors import tome

    if budget >= tokens:
        raise ValueError(f"--budget={budget} must be below --tokens={tokens}")
    x = jax.random.normal(jax.random.key(0), (batch, tokens, dim))
    ref = None
    rows = []
    for block in [None] + [b for b in blocks if b is not None]:
        fn = jax.jit(lambda v, b=block: tome.merge_to(v, budget, block=b))
        out = jax.block_until_ready(fn(x))                      # compile + first run
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(x))
            times.append(time.perf_counter() - t0)
        _, sizes, assign = (np.asarray(o) for o in out)
        if ref is None:
            ref = (sizes, assign)
        rows.append({"block": block, "median_s": float(np.median(times)),
                     "same_merge": bool(np.array_equal(sizes, ref[0]) and np.array_equal(assign, ref[1]))})
    dense = rows[0]["median_s"]
    for r in rows:
        r["speedup_vs_dense"] = dense / r["median_s"]
    return rows


def table(rows: list[dict], batch: int, tokens: int, dim: int, budget: int) -> str:
    lines = [f"ToMe merge_to on [{batch}, {tokens:,}, {dim}] -> {budget} tokens per video "
             f"(median of timed calls after compilation, one process)", "",
             "| best-partner search | median s | speed-up vs dense | same merge as dense |", "|---|---|---|---|"]
    for r in rows:
        name = "dense (whole matrix + argmax)" if r["block"] is None else f"blocked, {r['block']} A rows"
        lines.append(f"| {name} | {r['median_s']:.3f} | {r['speedup_vs_dense']:.2f}x | {'yes' if r['same_merge'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    blocks = [parse_block(b) for b in FLAGS.blocks]
    rows = measure(FLAGS.batch, FLAGS.tokens, FLAGS.dim, FLAGS.budget, blocks, FLAGS.repeats)
    md = table(rows, FLAGS.batch, FLAGS.tokens, FLAGS.dim, FLAGS.budget)
    print(md)
    if FLAGS.out:
        os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
        with open(FLAGS.out, "w") as f:
            f.write(md)
        with open(os.path.splitext(FLAGS.out)[0] + ".json", "w") as f:
            json.dump({"settings": {"batch": FLAGS.batch, "tokens": FLAGS.tokens, "dim": FLAGS.dim,
                                    "budget": FLAGS.budget, "repeats": FLAGS.repeats}, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
