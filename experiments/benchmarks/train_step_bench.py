r"""The motion-QA train step with the dense layers' matmul in 3-D form vs flattened to 2-D.

    python -m experiments.benchmarks.train_step_bench [--arms=none,token_dynamics] [--repeats=5] \
        [--root=/tmp/td_jax_motion_qa] [--out=results/train_step_bench.md]

Each arm's run exactly as the default motion-QA grid trains it (``experiments/motion_qa.py``:
its config, one real batch of 32 from its data; the data and stores are built first if
missing, as ``launch.motion_qa`` does).  Two forms of every ``nn.Dense`` in the library
(``td_jax.dense``): ``lax.dot_general`` on ``[B, S, D]`` (3-D: its weight gradient contracts
over two axes, which XLA on CPU lowers with transposed copies) and the same GEMM on
``[B·S, D]`` (2-D, the library's default).  Per arm, the two train steps are built and
compiled side by side, then timed alternately (``--repeats`` rounds of one step each, the
order flipped every round so drifting load hits both); the table gives the median seconds
per step, the ratio, and the largest relative difference (per array, against its largest
entry) of the loss and of the train state after one step — parameters and the optimiser's
moments, which hold the gradients (float32 rounding: the weight gradient's summation order).
"""
from __future__ import annotations

import os
import statistics
import time

from absl import app, flags

from experiments.benchmarks import load_sentence, write_results

FLAGS = flags.FLAGS
flags.DEFINE_list("arms", ["none", "token_dynamics"], "Motion-QA arms (experiments/motion_qa.py ARMS names).")
flags.DEFINE_integer("repeats", 5, "Timed rounds per arm (one step of each form per round).")
flags.DEFINE_string("root", "", "Data and stores root ('' = the experiment's default).")
flags.DEFINE_string("out", "", "Also write the table here (.md; a .json with the numbers beside it).")


def setup(arm: str, root: str, flatten: bool):
    """(step, state, batch, key) of ``arm``'s first train step, compiled with the given form."""
    import jax

    from experiments import motion_qa as mq
    from td_jax import dense
    from td_jax.train import data as data_lib
    from td_jax.train import trainer

    arg = f"arm={arm}" + (f",root={root}" if root else "")
    cfg = mq.get_config(arg)
    with dense.flattening(flatten):
        s = trainer.build(cfg)
        it = s.task.make_data("train", batch_size=cfg.batch_size, train=True, seed=0, shard_index=0, shard_count=1)
        batch = data_lib.to_global(next(it), s.batch_shardings)
        state = trainer.initial_state(s)
        key = trainer.seed_key(cfg.seed)
        step = trainer.make_train_step(s, 1)
        t = time.perf_counter()
        compiled = step.lower(state, batch, key).compile()
        compile_s = time.perf_counter() - t
    cur = list(compiled(state, batch, key))            # the step donates its state: feed each output back
    first = jax.device_get(cur)                          # (state, metrics) after one step, kept on the host

    def run():
        cur[:] = compiled(cur[0], batch, key)
        return cur[1]

    return {"run": run, "state": first[0], "metrics": first[1], "compile_s": compile_s}


def rel_diff(a, b) -> float:
    import jax
    import numpy as np

    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.dtype.kind != "f" or x.size == 0:
            continue
        worst = max(worst, float(np.abs(x - y).max() / (np.abs(y).max() + 1e-30)))
    return worst


def main(argv):
    del argv
    import jax

    from experiments import motion_qa as mq

    unknown = sorted(set(FLAGS.arms) - set(mq.ARM_NAMES))
    if unknown:
        raise app.UsageError(f"--arms: unknown {unknown}; known: {list(mq.ARM_NAMES)}")
    if FLAGS.repeats < 1:
        raise app.UsageError("--repeats must be >= 1")
    load_start, t0 = os.getloadavg()[0], time.perf_counter()
    mq.prepare(",".join(filter(None, [f"arms={'+'.join(FLAGS.arms)}", f"root={FLAGS.root}" if FLAGS.root else ""])))
    rows = []
    for arm in FLAGS.arms:
        print(f"[train_step_bench] {arm}: compiling both forms", flush=True)
        forms = {"3-D": setup(arm, FLAGS.root, False), "2-D": setup(arm, FLAGS.root, True)}
        times = {k: [] for k in forms}
        for r in range(FLAGS.repeats):
            for name in (("3-D", "2-D") if r % 2 == 0 else ("2-D", "3-D")):
                t = time.perf_counter()
                jax.block_until_ready(forms[name]["run"]())
                times[name].append(time.perf_counter() - t)
            print(f"[train_step_bench] {arm}: round {r + 1}/{FLAGS.repeats}: "
                  + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()), flush=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"arm": arm, "median_s_3d": med["3-D"], "median_s_2d": med["2-D"],
                     "speedup": med["3-D"] / med["2-D"], "compile_s_3d": forms["3-D"]["compile_s"],
                     "compile_s_2d": forms["2-D"]["compile_s"],
                     "loss_rel_diff": rel_diff(forms["2-D"]["metrics"]["loss"], forms["3-D"]["metrics"]["loss"]),
                     "state_rel_diff": rel_diff(forms["2-D"]["state"], forms["3-D"]["state"])})
    load_end = os.getloadavg()[0]
    command = "python -m experiments.benchmarks.train_step_bench " + " ".join(
        [f"--arms={','.join(FLAGS.arms)}", f"--repeats={FLAGS.repeats}"] + ([f"--root={FLAGS.root}"] if FLAGS.root else [])
        + ([f"--out={FLAGS.out}"] if FLAGS.out else []))
    lines = ["# train_step_bench", "", f"`{command}`", "",
             f"One motion-QA train step (batch 32, the default grid's config per arm), median of {FLAGS.repeats} "
             f"alternating rounds; jax {jax.__version__}, {os.cpu_count()} CPUs, "
             f"{time.perf_counter() - t0:.0f} s in all. {load_sentence(load_start, load_end, os.cpu_count() or 1)}", "",
             "| arm | 3-D dense (s/step) | 2-D dense, the default (s/step) | speed-up | compile s (3-D / 2-D) "
             "| loss rel. diff | state after 1 step rel. diff |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['median_s_3d']:.3f} | {r['median_s_2d']:.3f} | {r['speedup']:.2f}x "
                     f"| {r['compile_s_3d']:.1f} / {r['compile_s_2d']:.1f} | {r['loss_rel_diff']:.1e} "
                     f"| {r['state_rel_diff']:.1e} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if FLAGS.out:
        write_results(FLAGS.out, text, {"command": command, "rows": rows, "load_average": [load_start, load_end]})


if __name__ == "__main__":
    app.run(main)
