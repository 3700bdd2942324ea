r"""Benchmark: our safetensors reader (memory map, zero-copy views) vs ``safetensors.safe_open``.

    python -m experiments.benchmarks.safetensors_bench [--mib=512] [--repeats=2] [--out=results/safetensors_bench.md]

Writes one bf16 file of ``--mib`` MiB (1024x1024 tensors), then, in a fresh child process per
run (alternating the two readers), times ``read_safetensors`` and
``safe_open(framework="np")`` + ``get_tensor`` for every tensor ("open"), then a pass that
reads every value ("touch all"), and records the child's peak RSS above its baseline. Why
``td_jax.convert.safetensors_io`` keeps its own reader: it validates the same header rules
but hands out views of a memory map instead of copies.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_integer("mib", 512, "File size in MiB (bf16 tensors of 1024x1024).")
    flags.DEFINE_integer("repeats", 3, "Runs per reader (each in a fresh process).")
    flags.DEFINE_string("path", "/tmp/td_jax_safetensors_bench.safetensors", "Where the test file goes.")
    flags.DEFINE_string("out", "", "Write the markdown table here (and the numbers to the .json beside it).")


def make_file(path: str, mib: int) -> None:
    import ml_dtypes
    import numpy as np
    from safetensors.numpy import save_file

    rs = np.random.default_rng(0)
    n = max(1, mib // 2)                    # 2 MiB per bf16 1024x1024 tensor
    save_file({f"layer{i}.w": rs.standard_normal((1024, 1024), np.float32).astype(ml_dtypes.bfloat16)
               for i in range(n)}, path)


def child(how: str, path: str) -> dict:
    """One measurement in this (fresh) process."""
    import numpy as np
    from td_jax.convert.safetensors_io import read_safetensors   # imports outside the timing

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    if how == "ours":
        tensors = read_safetensors(path)
    else:
        from safetensors import safe_open
        with safe_open(path, framework="np") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    t1 = time.perf_counter()
    total = sum(float(v.astype(np.float32).sum()) for v in tensors.values())
    t2 = time.perf_counter()
    return {"reader": how, "open_s": t1 - t0, "touch_all_s": t2 - t1, "checksum": total,
            "peak_rss_above_baseline_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not os.path.exists(FLAGS.path) or os.path.getsize(FLAGS.path) < FLAGS.mib << 20:
        make_file(FLAGS.path, FLAGS.mib)
    size_mib = os.path.getsize(FLAGS.path) / 2**20
    load_start = os.getloadavg()[0]
    rows = []
    for _ in range(FLAGS.repeats):
        for how in ("ours", "safe_open"):
            code = (f"import json, sys; sys.argv = ['x']; from experiments.benchmarks.safetensors_bench import child; "
                    f"print(json.dumps(child({how!r}, {FLAGS.path!r})))")
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    load_end = os.getloadavg()[0]
    from experiments.benchmarks import load_sentence, write_results

    def med(how, key):
        return statistics.median(r[key] for r in rows if r["reader"] == how)

    if len({r["checksum"] for r in rows}) != 1:
        raise RuntimeError("the two readers returned different values")
    lines = [f"safetensors file of {size_mib:.0f} MiB (bf16), each run in a fresh process, median of "
             f"{FLAGS.repeats}; {load_sentence(load_start, load_end, os.cpu_count())}", "",
             "| reader | open + get every tensor (s) | read every value (s) | peak RSS above baseline (MiB) |",
             "|---|---|---|---|"]
    for how, name in (("ours", "read_safetensors (memory map, views)"), ("safe_open", "safe_open(framework='np')")):
        lines.append(f"| {name} | {med(how, 'open_s'):.3f} | {med(how, 'touch_all_s'):.3f} | "
                     f"{med(how, 'peak_rss_above_baseline_mib'):.0f} |")
    ratio = med("safe_open", "open_s") / med("ours", "open_s")
    lines += ["", f"open: safe_open / ours = {ratio:.0f}x; both return identical values."]
    md = "\n".join(lines) + "\n"
    print(md)
    if FLAGS.out:
        write_results(FLAGS.out, md, {"file_mib": size_mib, "load_start": load_start, "load_end": load_end,
                                     "rows": rows})


if __name__ == "__main__":
    define_flags()
    app.run(main)
