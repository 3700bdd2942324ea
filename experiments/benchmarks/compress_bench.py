r"""Benchmark: Token Dynamics clustering as a user calls it, against scikit-learn, faiss and ToMe.

    python -m experiments.benchmarks.compress_bench [--sections=api,k32,bigk,adaptive,scaling,memory] \
        [--out=results/compress_bench.md]

Synthetic structured tokens at the LLaVA-OV size (27x27 grid per frame, D = 896; moving
regions whose prototypes drift, plus noise: td_jax.synthetic.structured_tokens). Every
time is the median wall time after one warm-up call, measured side by side in one process
(methods interleaved round by round, so a load change hits all of them alike); the 1-min
load average is recorded. Inertia per token is the mean ``1 - cos(x, mean of its cluster)``,
recomputed from each method's labels the same way.

Sections:
  api       each public entry point called exactly as the README shows vs the same call
            wrapped in the user's own ``jax.jit`` (T = 64, K = 32; adaptive at k_max = 64)
  k32       T = 16, 32, 64 at K = 32: ``td_jax.token_dynamics(tokens, 32, key=key)`` (the
            documented call) vs scikit-learn KMeans (k-means++, n_init=1) and faiss
            Kmeans(spherical) with its defaults (25 iterations on a 256·K-row sample; timed
            in the same interleaved --repeats rounds as ours; scikit-learn over
            --baseline_repeats rounds after), plus one GEMM pass over all tokens (the floor)
            and our passes / sample work
  bigk      one 32-frame video (23,328 tokens) at 1%, 10%, 25% of its tokens: ours vs faiss
            (spherical, niter 20), scikit-learn (up to --sklearn_max_k) and ToMe
            (``td_jax.compressors.get("tome")`` at the same budget; its merge map gives the labels)
  adaptive  ``adaptive_token_dynamics(tokens, 64, method=...)`` vs fixed K = 64, T = 64
  scaling   time of the documented K = 32 call for T = 16 ... 512; a linear fit and a plot
            (results/compress_bench_scaling.png beside --out)
  memory    T = --big_t in a child process: time and peak resident memory over the input's size
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
SECTIONS = ("api", "k32", "bigk", "adaptive", "scaling", "memory")


def define_flags() -> None:
    """Define this script's absl flags (only when run as a script, so importing it
    next to another benchmark in one process does not clash)."""
    flags.DEFINE_list("sections", list(SECTIONS), f"Sections to run, of {SECTIONS}.")
    flags.DEFINE_list("ts", ["16", "32", "64"], "Frame counts of the k32 section.")
    flags.DEFINE_integer("k", 32, "Clusters of the k32 / api / scaling sections.")
    flags.DEFINE_integer("d", 896, "Token width.")
    flags.DEFINE_integer("grid", 27, "Grid side (27 = SigLIP-so400m at 384 px).")
    flags.DEFINE_integer("repeats", 5, "Timed rounds of the fast calls (distinct keys); medians reported.",
                         lower_bound=1)
    flags.DEFINE_integer("api_repeats", 21, "Timed rounds of the api section (documented and jitted calls "
                         "interleaved; its ~0.07 s calls need many rounds for a ratio within a few %).", lower_bound=1)
    flags.DEFINE_integer("baseline_repeats", 3, "Timed rounds (distinct seeds) of the slow calls.",
                         lower_bound=1)
    flags.DEFINE_list("big_k_pcts", ["1", "10", "25"], "Budgets (% of the tokens) of the bigk section.")
    flags.DEFINE_integer("big_k_frames", 32, "Frames of the bigk video (32 x 729 = 23,328 tokens).")
    flags.DEFINE_integer("sklearn_max_k", 2333, "Largest K scikit-learn runs at in the bigk section.")
    flags.DEFINE_integer("adaptive_k_max", 64, "k_max of the adaptive section (fixed K compared at the same value).")
    flags.DEFINE_list("scaling_ts", ["16", "32", "64", "128", "256", "512"], "Frame counts of the scaling section.")
    flags.DEFINE_integer("big_t", 512, "Frames of the memory section.")
    flags.DEFINE_string("out", "", "Also write the markdown report (and a .json beside it) here.")
    flags.DEFINE_bool("child_big", False, "Internal: run the memory measurement in this process.")


# ----------------------------------------------------------------------------- helpers


def tokens_for(t, seed=0):
    """[T, grid, grid, D] float32 structured tokens."""
    from td_jax.synthetic import structured_tokens
    x, _ = structured_tokens(seed, t, FLAGS.grid, FLAGS.grid, FLAGS.d, n_objects=24, n_background=8)
    return x


def unit(x):
    import numpy as np
    x = np.asarray(x, np.float32).reshape(-1, x.shape[-1])
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def inertia_per_token(xn, labels):
    """Mean 1 - cos(x, mean direction of its cluster) for unit rows xn [N, D], labels [N]."""
    import numpy as np
    labels = np.asarray(labels).reshape(-1)
    order = np.argsort(labels, kind="stable")
    lab = labels[order]
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    sums = np.add.reduceat(xn[order], starts, axis=0)
    return float((len(xn) - np.linalg.norm(sums, axis=1).sum()) / len(xn))


def race(fns: dict, rounds: int) -> dict:
    """Median wall seconds of each thunk (after one warm-up call each), interleaved by round.
    A thunk returns something to block on; thunks taking a round index get it (distinct keys)."""
    import inspect

    import jax
    import numpy as np
    call = {k: (f if len(inspect.signature(f).parameters) else (lambda i, f=f: f())) for k, f in fns.items()}
    outs = {k: jax.block_until_ready(f(0)) for k, f in call.items()}
    times = {k: [] for k in fns}
    for r in range(rounds):
        for k, f in call.items():
            t0 = time.perf_counter()
            outs[k] = jax.block_until_ready(f(r + 1))
            times[k].append(time.perf_counter() - t0)
    return {k: {"median_s": float(np.median(v)), "min_s": float(np.min(v)), "last": outs[k]} for k, v in times.items()}


def faiss_kmeans(xn, k, seed, niter=None):
    """faiss spherical k-means on unit rows; returns labels of every row."""
    import faiss
    kw = {} if niter is None else {"niter": niter}
    km = faiss.Kmeans(xn.shape[1], k, spherical=True, seed=seed, **kw)
    km.train(xn)
    _, labels = km.index.search(xn, 1)
    return labels[:, 0]


def sklearn_kmeans(xn, k, seed):
    from sklearn.cluster import KMeans
    return KMeans(k, init="k-means++", n_init=1, random_state=seed).fit(xn).labels_


def _fmt_s(s):
    return f"{s:.3f}" if s < 10 else f"{s:.1f}"


# ----------------------------------------------------------------------------- sections


def section_api(rounds):
    """Documented call vs the user's jax.jit of the same call, per entry point."""
    import jax
    import jax.numpy as jnp
    import td_jax
    tokens = jnp.asarray(tokens_for(64))
    x = tokens.reshape(-1, tokens.shape[-1])
    k, kmax = FLAGS.k, FLAGS.adaptive_k_max
    td = td_jax.token_dynamics(tokens, k, key=jax.random.key(0))
    key = lambda i: jax.random.key(i)
    # The user's jit returns the whole result, as the documented call does: a jitted lambda
    # returning one field lets XLA drop the rest (kmeans(...).assignments alone skips the
    # per-cluster sums of the last pass, ~40% of the call), which is less work, not a faster call.
    cases = {
        f"kmeans(x, {k}, key=key)": (lambda i: td_jax.kmeans(x, k, key=key(i)),
                                     jax.jit(lambda x, kk: td_jax.kmeans(x, k, key=kk)), (x,)),
        f"token_dynamics(tokens, {k}, key=key)": (
            lambda i: td_jax.token_dynamics(tokens, k, key=key(i)),
            jax.jit(lambda t, kk: td_jax.token_dynamics(t, k, key=kk)), (tokens,)),
        "token_dynamics(tokens, 233, key=key)": (
            lambda i: td_jax.token_dynamics(tokens, 233, key=key(i)),
            jax.jit(lambda t, kk: td_jax.token_dynamics(t, 233, key=kk)), (tokens,)),
    }
    for m in ("elbow", "silhouette", "threshold"):
        cases[f'adaptive_token_dynamics(tokens, {kmax}, method="{m}")'] = (
            lambda i, m=m: td_jax.adaptive_token_dynamics(tokens, kmax, key=key(i), method=m),
            jax.jit(lambda t, kk, m=m: td_jax.adaptive_token_dynamics(t, kmax, key=kk, method=m)), (tokens,))
    cases["reconstruct(td)"] = (lambda i: td_jax.reconstruct(td), jax.jit(td_jax.reconstruct), None)
    cases["reconstruction_error(tokens, td)"] = (lambda i: td_jax.reconstruction_error(tokens, td),
                                                 jax.jit(td_jax.reconstruction_error), None)
    only = jax.jit(lambda x, kk: td_jax.kmeans(x, k, key=kk).assignments)
    fns = {("assignments only", "jit"): lambda i: only(x, key(i))}
    for name, (doc, jitted, args) in cases.items():
        fns[(name, "documented")] = doc
        if args is None:
            arg = (tokens, td) if "error" in name else (td,)
            fns[(name, "jit")] = lambda i, j=jitted, a=arg: j(*a)
        else:
            fns[(name, "jit")] = lambda i, j=jitted, a=args: j(*a, key(i))
    res = race(fns, rounds)
    rows = []
    for name in cases:
        d, j = res[(name, "documented")]["median_s"], res[(name, "jit")]["median_s"]
        rows.append({"call": name, "documented_s": d, "user_jit_s": j, "ratio": d / j})
    lines = [f"| call (T = 64, {x.shape[0]:,} tokens) | documented call (s) | under the user's `jax.jit` (s) | documented / jit |",
             "|---|---|---|---|"]
    lines += [f"| `td_jax.{r['call']}` | {_fmt_s(r['documented_s'])} | {_fmt_s(r['user_jit_s'])} | {r['ratio']:.2f} |"
              for r in rows]
    kname = f"kmeans(x, {k}, key=key)"
    part = res[("assignments only", "jit")]["median_s"]
    rows.append({"call": f"jax.jit(lambda x, key: td_jax.{kname}.assignments)", "user_jit_s": part,
                 "vs_documented_full": part / res[(kname, "documented")]["median_s"]})
    lines += ["", f"Both columns return the whole result. A user's jit that keeps only `.assignments` of "
              f"`td_jax.{kname}` lets XLA drop the per-cluster sums of the last pass and the centres: "
              f"{_fmt_s(part)} s, {rows[-1]['vs_documented_full']:.2f}x the documented call (less work, "
              f"not a faster path; the documented call cannot know which fields will be used)."]
    return rows, lines


def section_k32(rounds, baseline_rounds):
    """K = 32 at T in --ts: ours (documented call) vs scikit-learn and faiss, plus the floor."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import td_jax
    from td_jax import cluster
    k = FLAGS.k
    rows, lines = [], []
    lines += ["| T | tokens | method | median time (s) | time / ours | inertia per token (median [min, max]) | inertia / ours |",
              "|---|---|---|---|---|---|---|"]
    floor_rows = []
    for t in (int(v) for v in FLAGS.ts):
        x = tokens_for(t)
        xn = unit(x)
        xj = jnp.asarray(x)
        flat = xj.reshape(-1, FLAGS.d)
        c = jnp.asarray(xn[:: len(xn) // k][:k])
        one_pass = jax.jit(lambda a, b: jnp.argmax(a @ b.T, axis=-1))
        # faiss runs in the same interleaved rounds as ours (a load change hits both alike)
        fast = race({"ours": lambda i: td_jax.token_dynamics(xj, k, key=jax.random.key(i)),
                     "floor": lambda i: one_pass(flat, c), "faiss": lambda i: faiss_kmeans(xn, k, i)}, rounds)
        inert = {"ours": []}
        for i in range(rounds):
            inert["ours"].append(inertia_per_token(xn, td_jax.token_dynamics(xj, k, key=jax.random.key(i)).dynamics_map))
        slow = {"sklearn": [], "faiss": [inertia_per_token(xn, faiss_kmeans(xn, k, i + 1)) for i in range(rounds)]}
        stimes = {"sklearn": []}
        sklearn_kmeans(xn[:4096], k, 0)                                   # warm-up
        for s in range(baseline_rounds):
            t0 = time.perf_counter()
            lab = sklearn_kmeans(xn, k, s)
            stimes["sklearn"].append(time.perf_counter() - t0)
            slow["sklearn"].append(inertia_per_token(xn, lab))
        ours_t = fast["ours"]["median_s"]
        ours_i = float(np.median(inert["ours"]))
        res = {"ours": (ours_t, inert["ours"]), "faiss": (fast["faiss"]["median_s"], slow["faiss"]),
               "sklearn": (float(np.median(stimes["sklearn"])), slow["sklearn"])}
        for name, (tm, iv) in res.items():
            row = {"T": t, "tokens": len(xn), "method": name, "median_s": tm, "inertia": float(np.median(iv)),
                   "inertia_min": float(np.min(iv)), "inertia_max": float(np.max(iv)), "time_vs_ours": tm / ours_t,
                   "inertia_vs_ours": float(np.median(iv)) / ours_i}
            rows.append(row)
            label = f"ours `token_dynamics(tokens, {k}, key=key)`" if name == "ours" else (
                "scikit-learn KMeans (k-means++, n_init=1)" if name == "sklearn" else "faiss Kmeans(spherical), defaults")
            lines.append(f"| {t} | {len(xn):,} | {label} | {_fmt_s(tm)} | {tm / ours_t:.2f}x | {row['inertia']:.4f} "
                         f"[{row['inertia_min']:.4f}, {row['inertia_max']:.4f}] | {row['inertia_vs_ours']:.3f} |")
        # Work of the documented call, in units of one [N, D] x [D, K] GEMM pass.
        n = len(xn)
        s = min(n, cluster.default_gram_rows(k))
        starts, steps = cluster.default_starts(k), cluster.MULTI_START_STEPS
        post = n <= cluster.default_sample_size(k)          # whole input fits the sample: Lloyd on it too
        res_k = td_jax.kmeans(flat, k, key=jax.random.key(0))
        post_steps = int(res_k.n_iter) - steps if post else 0
        # Gram matrix, (steps + 1) Gram GEMMs per start, the winner's centres, Lloyd on the rest
        sample_gemm = (s * s * FLAGS.d + starts * (steps + 1) * s * s * k + k * s * FLAGS.d
                       + (post_steps + 1) * 2 * n * FLAGS.d * k * post) / (n * FLAGS.d * k)
        floor_rows.append({"T": t, "floor_s": fast["floor"]["median_s"], "ours_s": ours_t,
                           "ours_over_floor": ours_t / fast["floor"]["median_s"],
                           "sample_gemm_passes": sample_gemm, "starts": starts, "gram_steps": steps,
                           "gram_rows": s, "post_lloyd_steps": post_steps})
    lines += ["", "Work per call, in one-GEMM-pass units (one [N, D] x [D, K] product over all tokens, the "
              "floor; measured in the same run):", "",
              "| T | one GEMM pass (s) | ours (s) | ours / floor | reads of all tokens | GEMM passes over all tokens | "
              "sample work in GEMM passes |", "|---|---|---|---|---|---|---|"]
    for f in floor_rows:
        extra = f" + {f['post_lloyd_steps']} Lloyd steps on all rows" if f["post_lloyd_steps"] else ""
        lines.append(f"| {f['T']} | {f['floor_s']:.4f} | {f['ours_s']:.4f} | {f['ours_over_floor']:.1f}x | 1: the pass "
                     f"(row sums of squares taken per tile) | 1 (assign, K columns) + 2 scatter-adds of the rows (unit, "
                     f"raw sums) | "
                     f"{f['sample_gemm_passes']:.2f} ({f['starts']} starts x [greedy seeding + {f['gram_steps']} Lloyd "
                     f"steps] in Gram space on {f['gram_rows']:,} rows{extra}) |")
    lines += ["", *floor_note(rows, floor_rows)]
    return {"rows": rows, "floor": floor_rows}, lines


def floor_note(rows, floor_rows):
    """What the work table means against faiss, from the same run's numbers."""
    f = floor_rows[-1]
    faiss = next(r for r in rows if r["T"] == f["T"] and r["method"] == "faiss")["median_s"]
    return [f"At T = {f['T']} ours costs {f['ours_over_floor']:.1f} GEMM passes and faiss {faiss / f['floor_s']:.1f} "
            f"in this run ({faiss / f['ours_s']:.2f}x). Of ours, the pass over all tokens is the assignment GEMM (K "
            "columns) and, on CPU, two scatter-adds of the rows per cluster (unit and raw sums: N x D adds each "
            "instead of a one-hot GEMM's N x D x 2K multiply-adds), in 512-row tiles that stay in cache between "
            "the two (about 2 units: tiles this small run the GEMM below its full-size speed, larger ones evict the "
            "tile before the sums); each tile's row sums of squares (validity, inverse norms, the scale) are taken "
            "there too, so no other read of all tokens is made (rows failing that check send the call down the "
            "path that reads them first), and the sample work is in the last column. faiss runs in the same "
            "interleaved rounds as ours; its threads lose more to other jobs on the cores than one GEMM pass does, "
            "so the time ratio to faiss depends on the load: read it with the load average below."]


def section_bigk(rounds, baseline_rounds):
    """Large K on one video: ours vs faiss (niter 20), scikit-learn, ToMe at the same budget."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import td_jax
    import td_jax.compressors  # noqa: F401
    from td_jax.compressors import tome as _tome  # noqa: F401  (registers tome)
    x = tokens_for(FLAGS.big_k_frames)
    xn = unit(x)
    xj = jnp.asarray(x)
    n = len(xn)
    tome = td_jax.compressors.get("tome")
    rows, lines = [], []
    lines += ["| budget | K | method | median time (s) | time / ToMe | inertia per token (median [min, max]) | "
              "inertia / faiss |", "|---|---|---|---|---|---|---|"]
    for pct in (float(v) for v in FLAGS.big_k_pcts):
        k = int(round(n * pct / 100))
        fast = race({"ours": lambda i: td_jax.token_dynamics(xj, k, key=jax.random.key(i)),
                     "tome": lambda i: tome(xj[None], key=jax.random.key(i), budget=k)}, rounds)
        ours_lab = [np.asarray(td_jax.token_dynamics(xj, k, key=jax.random.key(i)).dynamics_map) for i in range(rounds)]
        tome_lab = np.asarray(fast["tome"]["last"].aux["assign"][0])
        res = {"ours": (fast["ours"]["median_s"], [inertia_per_token(xn, lab) for lab in ours_lab]),
               "tome": (fast["tome"]["median_s"], [inertia_per_token(xn, tome_lab)])}
        for name, fn, ok in (("faiss", lambda s: faiss_kmeans(xn, k, s, niter=20), True),
                             ("sklearn", lambda s: sklearn_kmeans(xn, k, s), k <= FLAGS.sklearn_max_k)):
            if not ok:
                continue
            ts, iv = [], []
            for s in range(baseline_rounds if name == "faiss" else 1):
                t0 = time.perf_counter()
                lab = fn(s)
                ts.append(time.perf_counter() - t0)
                iv.append(inertia_per_token(xn, lab))
            res[name] = (float(np.median(ts)), iv)
        tome_t = res["tome"][0]
        faiss_i = float(np.median(res["faiss"][1]))
        labels = {"ours": "ours `token_dynamics(tokens, K, key=key)`", "tome": "ToMe (`compressors.get(\"tome\")`)",
                  "faiss": "faiss Kmeans(spherical, niter=20)", "sklearn": "scikit-learn KMeans (k-means++, n_init=1)"}
        for name in ("ours", "faiss", "sklearn", "tome"):
            if name not in res:
                continue
            tm, iv = res[name]
            row = {"pct": pct, "K": k, "tokens": n, "method": name, "median_s": tm, "time_vs_tome": tm / tome_t,
                   "inertia": float(np.median(iv)), "inertia_min": float(np.min(iv)), "inertia_max": float(np.max(iv)),
                   "inertia_vs_faiss": float(np.median(iv)) / faiss_i, "runs": len(iv)}
            rows.append(row)
            lines.append(f"| {pct:g}% | {k:,} | {labels[name]} | {_fmt_s(tm)} | {tm / tome_t:.2f}x | {row['inertia']:.5f} "
                         f"[{row['inertia_min']:.5f}, {row['inertia_max']:.5f}] | {row['inertia_vs_faiss']:.4f} |")
        if k > FLAGS.sklearn_max_k:
            lines.append(f"| {pct:g}% | {k:,} | scikit-learn | not run (K > --sklearn_max_k={FLAGS.sklearn_max_k}) | | | |")
    return rows, lines


def section_adaptive(rounds):
    """Adaptive K at k_max vs fixed K = k_max on the same T = 64 tokens."""
    import jax
    import jax.numpy as jnp
    import td_jax
    xj = jnp.asarray(tokens_for(64))
    kmax = FLAGS.adaptive_k_max
    fns = {"fixed": lambda i: td_jax.token_dynamics(xj, kmax, key=jax.random.key(i)).base}
    for m in ("elbow", "silhouette", "threshold"):
        fns[m] = lambda i, m=m: td_jax.adaptive_token_dynamics(xj, kmax, key=jax.random.key(i), method=m)
    res = race(fns, rounds)
    fixed = res["fixed"]["median_s"]
    rows = [{"method": m, "median_s": r["median_s"], "vs_fixed": r["median_s"] / fixed,
             "k": None if m == "fixed" else int(r["last"].k)} for m, r in res.items()]
    lines = [f"| T = 64, k_max = {kmax} | median time (s) | time / fixed K = {kmax} | K chosen |", "|---|---|---|---|"]
    for r in rows:
        name = f"fixed `token_dynamics(tokens, {kmax})`" if r["method"] == "fixed" else \
            f'`adaptive_token_dynamics(tokens, {kmax}, method="{r["method"]}")`'
        lines.append(f"| {name} | {_fmt_s(r['median_s'])} | {r['vs_fixed']:.2f}x | {'' if r['k'] is None else r['k']} |")
    return rows, lines


def section_scaling(rounds, plot_path):
    """Time of the documented K = 32 call vs T; least-squares line through the origin-free fit."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import td_jax
    rows = []
    for t in (int(v) for v in FLAGS.scaling_ts):
        xj = jnp.asarray(tokens_for(min(t, 32)))
        if t > 32:                                     # repeat a 32-frame scene: same clusters, linear size
            xj = jnp.concatenate([xj] * (t // 32) + [xj[: t % 32]])
        r = race({"ours": lambda i: td_jax.token_dynamics(xj, FLAGS.k, key=jax.random.key(i)).base}, rounds)
        rows.append({"T": t, "tokens": t * FLAGS.grid * FLAGS.grid, "median_s": r["ours"]["median_s"]})
        del xj
    ts = np.array([r["T"] for r in rows], float)
    ys = np.array([r["median_s"] for r in rows])
    slope, icpt = np.polyfit(ts, ys, 1)
    pred = slope * ts + icpt
    r2 = 1 - np.sum((ys - pred) ** 2) / np.sum((ys - ys.mean()) ** 2)
    for r, p in zip(rows, pred):
        r["fit_s"] = float(p)
    lines = ["| T | tokens | median time (s) | linear fit (s) | ms per frame |", "|---|---|---|---|---|"]
    lines += [f"| {r['T']} | {r['tokens']:,} | {_fmt_s(r['median_s'])} | {_fmt_s(r['fit_s'])} | "
              f"{1e3 * r['median_s'] / r['T']:.2f} |" for r in rows]
    lines += ["", f"Least-squares line: {1e3 * slope:.2f} ms per frame + {1e3 * icpt:.0f} ms fixed (R² = {r2:.4f})."]
    if plot_path:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(ts, ys, "o", label="td_jax.token_dynamics(tokens, 32) (median)")
        ax.plot(ts, pred, "-", label=f"linear fit, R² = {r2:.3f}")
        ax.set_xlabel("frames T (729 tokens each, D = 896)")
        ax.set_ylabel("seconds")
        ax.set_title("Token Dynamics K = 32: time vs video length")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(plot_path, dpi=120)
        plt.close(fig)
    return {"rows": rows, "slope_s_per_frame": float(slope), "intercept_s": float(icpt), "r2": float(r2)}, lines


def _rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def child_big():
    """Time and peak RSS of the documented call at T = big_t; prints one JSON line."""
    import gc

    import jax
    import jax.numpy as jnp
    import numpy as np
    import td_jax

    t = FLAGS.big_t
    # Build the input on the device from a 32-frame scene repeated, so no host copy stays.
    chunk = jnp.asarray(tokens_for(32))
    x = jnp.concatenate([chunk[: min(32, t - i)] for i in range(0, t, 32)])
    del chunk
    gc.collect()
    jax.block_until_ready(td_jax.token_dynamics(x, FLAGS.k, key=jax.random.key(100)).base)     # compile + warm-up
    gc.collect()
    input_bytes = x.size * x.dtype.itemsize
    base_kib = _rss_kib("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f_:                          # reset the VmHWM peak
        f_.write("5")
    times = []
    for s in range(3):
        t0 = time.perf_counter()
        td = jax.block_until_ready(td_jax.token_dynamics(x, FLAGS.k, key=jax.random.key(s)))
        times.append(time.perf_counter() - t0)
    peak_kib = _rss_kib("VmHWM:")
    extra = max(peak_kib - base_kib, 0) * 1024
    print(json.dumps({"t": t, "tokens": int(x.shape[0] * x.shape[1] * x.shape[2]), "input_bytes": int(input_bytes),
                      "median_s": float(np.median(times)), "extra_peak_bytes": int(extra),
                      "peak_over_input": float((input_bytes + extra) / input_bytes), "inertia_per_token": float(td.inertia)}))


def section_memory():
    cmd = [sys.executable, "-m", "experiments.benchmarks.compress_bench", "--child_big", f"--big_t={FLAGS.big_t}",
           f"--k={FLAGS.k}", f"--d={FLAGS.d}", f"--grid={FLAGS.grid}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    big = json.loads(out.stdout.strip().splitlines()[-1])
    lines = [f"T = {big['t']} ({big['tokens']:,} tokens, input {big['input_bytes'] / 2**30:.2f} GiB), documented call "
             f"`token_dynamics(tokens, {FLAGS.k}, key=key)`: {big['median_s']:.3f} s median, peak resident memory "
             f"{big['peak_over_input']:.3f}x the input (+{big['extra_peak_bytes'] / 2**20:.0f} MiB), inertia per token "
             f"{big['inertia_per_token']:.4f}."]
    return big, lines


def main(argv):
    del argv
    if FLAGS.child_big:
        child_big()
        return
    unknown = set(FLAGS.sections) - set(SECTIONS)
    if unknown:
        raise app.UsageError(f"unknown --sections {sorted(unknown)}; choose from {SECTIONS}")
    report = {}
    load_start, cpus = os.getloadavg()[0], os.cpu_count()
    command = "python -m experiments.benchmarks.compress_bench " + " ".join(sys.argv[1:])
    md = ["# compress_bench", "", f"`{command.strip()}` — every section below comes from this one run "
          f"({cpus} CPU cores; the 1-min load average is given per section: the seconds are inflated when "
          "other jobs share the cores, the ratios are measured side by side, rounds interleaved).", ""]
    if "bigk" in FLAGS.sections:
        md += [f"scikit-learn runs in the bigk section only up to K = {FLAGS.sklearn_max_k} "
               "(`--sklearn_max_k`; above it a fit takes minutes on these cores).", ""]
    print(f"compress_bench: grid {FLAGS.grid}x{FLAGS.grid}, D={FLAGS.d}; {cpus} CPU cores; load {load_start:.1f}", flush=True)
    if FLAGS.out:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    plot = (os.path.splitext(FLAGS.out)[0] + "_scaling.png") if FLAGS.out else ""
    titles = {"api": "Documented calls vs the user's own jax.jit", "k32": "K = 32 against scikit-learn and faiss",
              "bigk": f"Large K on one {FLAGS.big_k_frames}-frame video", "adaptive": "Adaptive K",
              "scaling": "Time vs video length", "memory": "Peak memory at T = " + str(FLAGS.big_t)}
    for sec in SECTIONS:
        if sec not in FLAGS.sections:
            continue
        load = os.getloadavg()[0]
        print(f"  section {sec} (load {load:.1f}) ...", flush=True)
        t0 = time.perf_counter()
        if sec == "api":
            data, lines = section_api(FLAGS.api_repeats)
        elif sec == "k32":
            data, lines = section_k32(FLAGS.repeats, FLAGS.baseline_repeats)
        elif sec == "bigk":
            data, lines = section_bigk(FLAGS.baseline_repeats, FLAGS.baseline_repeats)
        elif sec == "adaptive":
            data, lines = section_adaptive(FLAGS.repeats)
        elif sec == "scaling":
            data, lines = section_scaling(FLAGS.baseline_repeats, plot)
        else:
            data, lines = section_memory()
        load_end = os.getloadavg()[0]
        report[sec] = {"data": data, "load_average": [load, load_end], "seconds": time.perf_counter() - t0}
        md += [f"### {titles[sec]}", "", *lines, "", f"({load_sentence(load, load_end, cpus)})", ""]
        print("\n".join(lines), flush=True)
    load_end = os.getloadavg()[0]
    md += [f"Machine: {cpus} CPU cores; whole run {load_sentence(load_start, load_end, cpus)}"]
    text = "\n".join(md)
    print(text)
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            f.write(text + "\n")

        def clean(v):
            if isinstance(v, dict):
                return {k: clean(w) for k, w in v.items() if k != "last"}
            if isinstance(v, list):
                return [clean(w) for w in v]
            return v
        with open(os.path.splitext(FLAGS.out)[0] + ".json", "w") as f:
            json.dump({"command": command.strip(), "sections": clean(report), "load_average": [load_start, load_end],
                       "cpus": cpus}, f, indent=2)


if __name__ == "__main__":
    define_flags()
    app.run(main)
