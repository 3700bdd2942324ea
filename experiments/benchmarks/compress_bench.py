r"""Benchmark: Token Dynamics clustering vs scikit-learn and faiss k-means, side by side.

    python -m experiments.benchmarks.compress_bench [--ts=16,32,64] [--big_t=512] [--out=results/compress_bench.md]

Synthetic structured tokens at the LLaVA-OV size (27x27 grid, D = 896, K = 32; moving
regions whose prototypes drift, plus noise: td_jax.synthetic.structured_tokens). For each
T, in one process: median wall time after warm-up and inertia per token (mean 1 - cos to
the token's cluster mean, recomputed the same way for every method) of

  ours     td_jax.kmeans under jit (greedy k-means++ and Lloyd on a sample, refinement on all;
           --n_init starts, best kept), and again with --fast_n_init starts
  sklearn  sklearn.cluster.KMeans(k-means++, greedy, n_init=1) on L2-normalised rows
  faiss    faiss.Kmeans(spherical=True), its default training sample of 256*K rows

and the ratios to ours. With --big_t, one run at T = big_t (27*27*big_t tokens) in a child
process measures our wall time and peak resident memory relative to the input's size.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags

from experiments.benchmarks import load_sentence

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Define this script's absl flags (only when run as a script, so importing it
    next to another benchmark in one process does not clash)."""
    flags.DEFINE_list("ts", ["16", "32", "64"], "Frame counts to benchmark.")
    flags.DEFINE_integer("k", 32, "Clusters.")
    flags.DEFINE_integer("d", 896, "Token width.")
    flags.DEFINE_integer("grid", 27, "Grid side (27 = SigLIP-so400m at 384 px).")
    flags.DEFINE_integer("repeats", 5, "Timed runs of ours (distinct keys); medians reported.")
    flags.DEFINE_integer("baseline_repeats", 3, "Timed runs (distinct seeds) of sklearn and faiss.")
    flags.DEFINE_integer("big_t", 512, "Frames of the large run (0 to skip).")
    flags.DEFINE_integer("n_init", 2, "td_jax.kmeans n_init.")
    flags.DEFINE_integer("refine_iters", 1, "td_jax.kmeans refine_iters.")
    flags.DEFINE_integer("fast_n_init", 1, "Also time ours with this n_init (a faster, single-start row; 0 = skip).")
    flags.DEFINE_string("out", "", "Also write the markdown table (and a .json beside it) here.")
    flags.DEFINE_bool("child_big", False, "Internal: run the large-T measurement in this process.")


def inertia_per_token(xn, labels, k):
    """Mean 1 - cos(x, mean of its cluster) for unit rows xn [N, D]."""
    import numpy as np
    total = 0.0
    for j in range(k):
        sel = labels == j
        if sel.any():
            total += float(np.linalg.norm(xn[sel].sum(0)))
    return (len(xn) - total) / len(xn)


def tokens_for(t, seed=0):
    from td_jax.synthetic import structured_tokens
    x, _ = structured_tokens(seed, t, FLAGS.grid, FLAGS.grid, FLAGS.d, n_objects=24, n_background=8)
    return x.reshape(-1, FLAGS.d)


def run_ours(x, n_init=None):
    import functools
    import jax
    import jax.numpy as jnp
    import numpy as np
    import td_jax

    f = jax.jit(functools.partial(td_jax.kmeans, k=FLAGS.k, n_init=n_init or FLAGS.n_init,
                                  refine_iters=FLAGS.refine_iters))
    xj = jnp.asarray(x)
    jax.block_until_ready(f(xj, key=jax.random.key(100)))                     # compile + warm-up
    times, inert = [], []
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    for s in range(FLAGS.repeats):
        t0 = time.perf_counter()
        r = jax.block_until_ready(f(xj, key=jax.random.key(s)))
        times.append(time.perf_counter() - t0)
        inert.append(inertia_per_token(xn, np.asarray(r.assignments), FLAGS.k))
    return times, inert


def run_sklearn(x):
    import numpy as np
    from sklearn.cluster import KMeans
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    KMeans(FLAGS.k, n_init=1, random_state=100, max_iter=5).fit(xn[:4096])    # warm-up
    times, inert = [], []
    for s in range(FLAGS.baseline_repeats):
        t0 = time.perf_counter()
        km = KMeans(FLAGS.k, init="k-means++", n_init=1, random_state=s, tol=1e-4).fit(xn)
        times.append(time.perf_counter() - t0)
        inert.append(inertia_per_token(xn, km.labels_, FLAGS.k))
    return times, inert


def run_faiss(x):
    import faiss
    import numpy as np
    xn = np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)
    faiss.Kmeans(FLAGS.d, FLAGS.k, spherical=True, seed=100).train(xn[:8192])  # warm-up
    times, inert = [], []
    for s in range(FLAGS.baseline_repeats):
        t0 = time.perf_counter()
        km = faiss.Kmeans(FLAGS.d, FLAGS.k, spherical=True, seed=s)
        km.train(xn)
        _, labels = km.index.search(xn, 1)
        times.append(time.perf_counter() - t0)
        inert.append(inertia_per_token(xn, labels[:, 0], FLAGS.k))
    return times, inert


def _rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def child_big():
    """Time and peak RSS of ours at T = big_t; prints one JSON line."""
    import gc
    import functools
    import jax
    import jax.numpy as jnp
    import numpy as np
    import td_jax

    t = FLAGS.big_t
    n = t * FLAGS.grid * FLAGS.grid
    # Build the input on the device from 32-frame chunks of one scene (the same 32 frames
    # repeated, so its clusters match the T <= 64 runs) so no host copy stays around.
    chunk = jnp.asarray(tokens_for(32, seed=0))
    x = jnp.concatenate([chunk[: (min(32, t - i)) * FLAGS.grid * FLAGS.grid] for i in range(0, t, 32)])
    del chunk
    gc.collect()
    f = jax.jit(functools.partial(td_jax.kmeans, k=FLAGS.k, n_init=FLAGS.n_init, refine_iters=FLAGS.refine_iters))
    compiled = f.lower(x, key=jax.random.key(0)).compile()
    mem = compiled.memory_analysis()
    jax.block_until_ready(compiled(x, key=jax.random.key(100)))              # warm-up
    gc.collect()
    input_bytes = x.size * x.dtype.itemsize
    base_kib = _rss_kib("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f_:                          # reset the VmHWM peak
        f_.write("5")
    times = []
    for s in range(3):
        t0 = time.perf_counter()
        r = jax.block_until_ready(compiled(x, key=jax.random.key(s)))
        times.append(time.perf_counter() - t0)
    peak_kib = _rss_kib("VmHWM:")
    extra = max(peak_kib - base_kib, 0) * 1024
    print(json.dumps({"t": t, "tokens": n, "input_bytes": int(input_bytes), "median_s": float(np.median(times)),
                      "extra_peak_bytes": int(extra),
                      "peak_over_input": float((input_bytes + extra) / input_bytes),
                      "xla_temp_bytes": int(getattr(mem, "temp_size_in_bytes", 0)),
                      "inertia_per_token": float(r.inertia) / n}))


def main(argv):
    del argv
    if FLAGS.child_big:
        child_big()
        return
    import numpy as np
    rows = []
    load_start = os.getloadavg()[0]
    print(f"k-means benchmark: grid {FLAGS.grid}x{FLAGS.grid}, D={FLAGS.d}, K={FLAGS.k}; "
          f"{os.cpu_count()} CPU cores", flush=True)
    for t_str in FLAGS.ts:
        t = int(t_str)
        x = tokens_for(t)
        res = {}
        methods = [("ours", run_ours)]
        if FLAGS.fast_n_init and FLAGS.fast_n_init != FLAGS.n_init:
            methods.append((f"ours n_init={FLAGS.fast_n_init}", lambda v: run_ours(v, FLAGS.fast_n_init)))
        for name, fn in methods + [("sklearn", run_sklearn), ("faiss", run_faiss)]:
            print(f"  T={t} ({len(x)} tokens): {name} ...", flush=True)
            times, inert = fn(x)
            res[name] = (float(np.median(times)), float(np.median(inert)), float(np.min(inert)), float(np.max(inert)))
        ours_t, ours_i = res["ours"][0], res["ours"][1]
        for name, (tm, im, lo, hi) in res.items():
            rows.append({"T": t, "tokens": len(x), "method": name, "median_s": tm, "inertia": im,
                         "inertia_min": lo, "inertia_max": hi, "time_vs_ours": tm / ours_t,
                         "inertia_vs_ours": im / ours_i})
    lines = ["| T | tokens | method | median time (s) | time / ours | inertia per token (median [min, max]) | inertia / ours |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['T']} | {r['tokens']:,} | {r['method']} | {r['median_s']:.3f} | {r['time_vs_ours']:.2f}x | "
                     f"{r['inertia']:.4f} [{r['inertia_min']:.4f}, {r['inertia_max']:.4f}] | {r['inertia_vs_ours']:.3f} |")
    big = None
    if FLAGS.big_t:
        print(f"  T={FLAGS.big_t}: ours in a child process (peak memory) ...", flush=True)
        cmd = [sys.executable, "-m", "experiments.benchmarks.compress_bench", "--child_big",
               f"--big_t={FLAGS.big_t}", f"--k={FLAGS.k}", f"--d={FLAGS.d}", f"--grid={FLAGS.grid}",
               f"--n_init={FLAGS.n_init}", f"--refine_iters={FLAGS.refine_iters}"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        big = json.loads(out.stdout.strip().splitlines()[-1])
        lines += ["", f"T = {big['t']} ({big['tokens']:,} tokens, input {big['input_bytes'] / 2**30:.2f} GiB): "
                      f"ours {big['median_s']:.3f} s median, peak resident memory {big['peak_over_input']:.2f}x the input "
                      f"(+{big['extra_peak_bytes'] / 2**20:.0f} MiB; XLA temporaries {big['xla_temp_bytes'] / 2**20:.0f} MiB), "
                      f"inertia per token {big['inertia_per_token']:.4f}"]
    load_end, cpus = os.getloadavg()[0], os.cpu_count()
    lines += ["", f"Machine: {cpus} CPU cores; " + load_sentence(load_start, load_end, cpus)]
    table = "\n".join(lines)
    print(table)
    if FLAGS.out:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
        with open(FLAGS.out, "w") as f:
            f.write(table + "\n")
        with open(os.path.splitext(FLAGS.out)[0] + ".json", "w") as f:
            json.dump({"rows": rows, "big": big, "load_average": [load_start, load_end], "cpus": cpus}, f, indent=2)


if __name__ == "__main__":
    define_flags()
    app.run(main)
