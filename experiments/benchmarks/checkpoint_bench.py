r"""Benchmark: what checksummed checkpoints cost, side by side with plain Orbax in one process.

    python -m experiments.benchmarks.checkpoint_bench [--mib=256] [--repeats=3] [--out=results/checkpoint_bench.md]

A train-state-like tree of float32 arrays totalling ``--mib`` MiB is saved and restored
``--repeats`` times (after one untimed warm-up round), alternating between a plain ``ocp.CheckpointManager`` (the same three
items, no manifest) and ``td_jax.train.checkpoint.Checkpointer`` (SHA-256 of every file in
Orbax's post-finalisation hook, verification before every restore). Reported: median seconds
of save-until-committed and of restore, and the ratios. The extra work is one read of the
step's files per save and per restore (SHA-256 ~1.2 GB/s on one core of this machine kind).
"""
from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_integer("mib", 256, "Size of the saved state in MiB (float32).")
    flags.DEFINE_integer("repeats", 3, "Save + restore rounds per variant (median reported).")
    flags.DEFINE_string("out", "", "Write the markdown table here (and the numbers to the .json beside it).")


def measure(mib: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    from td_jax.train.checkpoint import Checkpointer, abstract_with_shardings

    n_leaves = 8
    per_leaf = (mib << 20) // 4 // n_leaves
    key = jax.random.key(0)
    state = {"step": jnp.int32(1), "params": {f"w{i}": jax.random.normal(jax.random.fold_in(key, i), (per_leaf,))
                                              for i in range(n_leaves)}}
    sh = jax.tree.map(lambda x: x.sharding, state)
    abstract = abstract_with_shardings(state, sh)
    meta = {"config": {"x": 1}}

    def plain(d):
        return ocp.CheckpointManager(d, options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
                                     item_handlers={"state": ocp.StandardCheckpointHandler(),
                                                    "meta": ocp.JsonCheckpointHandler()})

    times = {k: [] for k in ("plain_save", "ours_save", "plain_restore", "ours_restore", "ours_verify")}
    root = tempfile.mkdtemp(prefix="ckpt_bench_")
    try:
        for r in range(repeats + 1):            # round 0 warms both paths up, untimed
            for variant in ("plain", "ours"):
                d = os.path.join(root, f"{variant}{r}")
                if variant == "plain":
                    m = plain(d)
                    t0 = time.perf_counter()
                    m.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                      meta=ocp.args.JsonSave(meta)))
                    m.wait_until_finished()
                    times["plain_save"].append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    out = m.restore(1, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                               meta=ocp.args.JsonRestore()))
                    jax.block_until_ready(out["state"])
                    times["plain_restore"].append(time.perf_counter() - t0)
                    m.close()
                else:
                    ck = Checkpointer(d, keep=2)
                    t0 = time.perf_counter()
                    ck.save(1, state, meta=meta)
                    ck.wait()
                    times["ours_save"].append(time.perf_counter() - t0)
                    ck.close()
                    ck = Checkpointer(d, keep=2)          # a fresh reader: nothing verified yet
                    t0 = time.perf_counter()
                    ck.verify(1)
                    times["ours_verify"].append(time.perf_counter() - t0)
                    ck._verified.clear()
                    t0 = time.perf_counter()
                    restored, _ = ck.restore(1, abstract)
                    jax.block_until_ready(restored)
                    times["ours_restore"].append(time.perf_counter() - t0)
                    ck.close()
                shutil.rmtree(d)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    times = {k: v[1:] for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"mib": mib, "repeats": repeats, "median_s": med, "all_s": times,
            "save_ratio": med["ours_save"] / med["plain_save"],
            "restore_ratio": med["ours_restore"] / med["plain_restore"],
            "verify_gb_per_s": mib / 1024 / med["ours_verify"]}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from experiments.benchmarks import load_sentence, write_results

    load_start = os.getloadavg()[0]
    res = measure(FLAGS.mib, FLAGS.repeats)
    load_end = os.getloadavg()[0]
    res.update(load_start=load_start, load_end=load_end)
    m = res["median_s"]
    md = "\n".join([
        f"Checkpoint of {FLAGS.mib} MiB (float32), save until committed and restore, median of {FLAGS.repeats}, "
        f"one process, variants alternating; {load_sentence(load_start, load_end, os.cpu_count())}", "",
        "| | plain Orbax (s) | Checkpointer with SHA-256 manifest (s) | ratio |", "|---|---|---|---|",
        f"| save (until committed) | {m['plain_save']:.2f} | {m['ours_save']:.2f} | {res['save_ratio']:.2f}x |",
        f"| restore (ours: verify + restore) | {m['plain_restore']:.2f} | {m['ours_restore']:.2f} | "
        f"{res['restore_ratio']:.2f}x |", "",
        f"Verification alone: {m['ours_verify']:.2f} s ({res['verify_gb_per_s']:.2f} GiB/s)."]) + "\n"
    print(md)
    if FLAGS.out:
        write_results(FLAGS.out, md, res)


if __name__ == "__main__":
    define_flags()
    app.run(main)
