r"""Every registered compressor at equal token budgets, on one synthetic video batch.

    python -m experiments.benchmarks.compare_compressors \
        [--frames=16 --grid=27 --dim=256 --batch=2] [--budgets=0.07%,1%,10%,25%] \
        [--methods=tome,prune,...] [--cfg='{"tome": {"mode": "frame"}}'] \
        [--method_budgets='{"token_dynamics": ["0.07%", "1%"]}'] [--out=results/compare.md]

The batch is structured like a video's visual tokens (td_jax.synthetic.structured_tokens:
background bands and moving objects whose prototypes drift, plus noise).  For each method
and budget, ``td_jax.compressors.budget.plan`` picks the method's knob; the table shows

  tokens     real output tokens per video (mask True) / static slots M
  knob       the derived knob (frames kept, pooled grid, ToMe rounds, k, ...)
  rel_err    reconstruction error ||x - x_hat||^2 / ||x||^2, where x_hat puts back, for
             every input token, the output token it is represented by (``aux["assign"]``;
             for ``base_only`` the base looked up through the dynamics map).  Methods whose
             outputs are not stand-ins for input tokens (untrained cross-dynamics attention,
             noise base) or that drop tokens outright (prune, DyCoke's pruning, HoliTom's
             attention-kept dynamic tokens; any real token without a slot) show "-".
  ms         median wall time of the jitted call after warm-up (compile time separate);
             all methods of a budget are timed in turns (A B C, A B C, ...), so a change of
             load on a shared machine hits them alike
  x ToMe, x TD  that time over ToMe's and token dynamics' at the same budget (same run)
  prefill    analytic LLM prefill GFLOPs (Qwen2-0.5B, visual + --text_tokens tokens) and
             the ratio to the uncompressed sequence

The 1-minute load average at the start and end of the run is recorded next to the table
(the machine may be shared: compare the ratios, not the seconds).

Methods that cannot reach a budget say why (e.g. ``frames`` keeps whole frames).
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

from absl import app, flags

from experiments.benchmarks import load_sentence

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Define this script's absl flags (only when run as a script, so importing it
    next to another benchmark in one process does not clash)."""
    flags.DEFINE_integer("frames", 16, "Frames per video (T).")
    flags.DEFINE_integer("grid", 27, "Token grid side per frame (27 = SigLIP-so400m at 384 px).")
    flags.DEFINE_integer("dim", 256, "Token width D (LLaVA-OV-0.5B projects to 896).")
    flags.DEFINE_integer("batch", 2, "Videos per batch.")
    flags.DEFINE_list("budgets", ["0.07%", "1%", "10%", "25%"], "Budgets (percent, fraction or token count).")
    flags.DEFINE_string("method_budgets", "{}", 'JSON: budgets for some methods instead of --budgets, '
                        'e.g. {"token_dynamics": ["0.07%", "1%"]} (k-means at K = 25% of 23k tokens takes minutes).')
    flags.DEFINE_list("methods", [], "Methods to compare (default: every registered one).")
    flags.DEFINE_string("cfg", "{}", 'JSON: per-method config, e.g. {"tome": {"mode": "frame"}}.')
    flags.DEFINE_integer("warmup", 1, "Untimed runs after compilation.")
    flags.DEFINE_integer("repeats", 3, "Timed runs; the median is reported.")
    flags.DEFINE_integer("text_tokens", 64, "Text tokens added to the LLM sequence for the FLOP column.")
    flags.DEFINE_integer("seed", 0, "Seed of the synthetic batch and the compressors' keys.")
    flags.DEFINE_string("out", "", "Also write the table (markdown) and rows (.json beside it) here.")

# Methods whose ``tokens`` are attention outputs or noise rather than representatives of
# input tokens: a reconstruction through their map would not measure the method.
_NO_RECON = {"token_dynamics", "random_map", "random_base"}
# Table order: baselines from simplest to learned, then token dynamics and its ablations.
_ORDER = ["none", "frames", "pool", "prune", "tome", "token_learner", "vidtome", "dycoke", "fastvid", "visionzip",
          "holitom", "token_dynamics", "base_only", "random_map", "random_base"]


def import_methods():
    """Import every method module so the registry is complete."""
    import td_jax.compressors  # noqa: F401  (the package __init__ registers every method)


def synthetic_batch(seed: int, b: int, t: int, g: int, d: int):
    """[B, T, g, g, D] float32 structured tokens."""
    import numpy as np

    from td_jax.synthetic import structured_tokens

    return np.stack([structured_tokens(seed + i, t, g, g, d)[0] for i in range(b)])


def reconstruction_error(name, x, out):
    """||x - x_hat||^2 / ||x||^2 over the batch, or None where undefined (see module doc)."""
    import jax.numpy as jnp

    if name in _NO_RECON:
        return None
    b, n, d = x.shape[0], x.shape[1] * x.shape[2] * x.shape[3], x.shape[-1]
    if "assign" in out.aux:
        assign = out.aux["assign"]
    elif name == "base_only" and "dynamics_map" in out.aux:
        assign = out.aux["dynamics_map"].reshape(b, n)
    else:
        return None
    if bool(jnp.any(assign < 0)):
        return None   # some token has no slot standing in for it: the method drops tokens
    flat = jnp.asarray(x).reshape(b, n, d)
    x_hat = jnp.take_along_axis(out.tokens, jnp.maximum(assign, 0)[..., None], axis=1)
    x_hat = jnp.where((assign >= 0)[..., None], x_hat, 0.0)
    return float(jnp.sum((flat - x_hat) ** 2) / jnp.sum(flat ** 2))


def compile_method(fn, args):
    """(compiled fn, compile seconds) of a jitted fn."""
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def interleaved_times(calls, warmup: int, repeats: int):
    """Median seconds of each zero-argument call, timed in turns (A B C, A B C, ...) so a
    change of load on a shared machine hits every method alike.  Returns (medians, last
    outputs)."""
    import jax

    outs = [None] * len(calls)
    for _ in range(warmup):
        for i, call in enumerate(calls):
            outs[i] = jax.block_until_ready(call())
    runs = [[] for _ in calls]
    for _ in range(repeats):
        for i, call in enumerate(calls):
            t0 = time.perf_counter()
            outs[i] = jax.block_until_ready(call())
            runs[i].append(time.perf_counter() - t0)
    return [statistics.median(r) if r else float("nan") for r in runs], outs


def compare(tokens, methods, budgets, method_cfg, *, warmup, repeats, text_tokens, seed, method_budgets=None):
    """One row per (method, budget): dicts with the columns of the module doc.
    ``method_budgets`` ({method: [budgets]}) replaces ``budgets`` for those methods.  All
    methods of a budget are compiled first, then timed in turns (:func:`interleaved_times`)."""
    import jax

    from td_jax.compressors.budget import plan
    from td_jax.eval.budget import QWEN2_0_5B, token_report

    b, t, h, w, _ = tokens.shape
    n = t * h * w
    key = jax.random.key(seed)
    x = jax.device_put(tokens)
    specs = {name: ["100%"] if name == "none" else list((method_budgets or {}).get(name, budgets))
             for name in methods}
    order = list(dict.fromkeys(s for name in methods for s in specs[name]))
    rows = {}
    for spec in order:
        entries = []
        for name in methods:
            if spec not in specs[name]:
                continue
            row = {"method": name, "budget": spec}
            try:
                p = plan(name, spec, (t, h, w), **method_cfg.get(name, {}))
            except ValueError as e:
                rows[(name, spec)] = {**row, "error": str(e)}
                print(f"  {name} @ {spec}: unreachable", flush=True)
                continue
            comp = p.compressor()
            params = comp.init(jax.random.key(seed + 1), x, budget=p.budget)
            fn = jax.jit(lambda prm, v, k, comp=comp, m=p.budget: comp(v, key=k, budget=m, params=prm))
            compiled, compile_s = compile_method(fn, (params, x, key))
            print(f"  {name} @ {spec}: compiled in {compile_s:.1f} s", flush=True)
            entries.append((row, p, compile_s, lambda c=compiled, prm=params: c(prm, x, key)))
        secs, outs = interleaved_times([e[3] for e in entries], warmup, repeats)
        for (row, p, compile_s, _), run_s, out in zip(entries, secs, outs):
            real = float(out.mask.sum()) / b
            rep = token_report(n, int(round(real)), text_tokens=text_tokens, decoder=QWEN2_0_5B)
            rows[(row["method"], row["budget"])] = {
                **row, "slots": p.budget, "real_tokens": real, "knobs": p.knobs, "kept_pct": 100.0 * real / n,
                "rel_err": reconstruction_error(row["method"], tokens, out), "compile_s": compile_s,
                "ms": 1e3 * run_s, "prefill_gflops": rep["flops_compressed"] / 1e9, "llm_speedup": rep["llm_speedup"]}
            print(f"  {row['method']} @ {row['budget']}: {real:.0f} tokens, {1e3 * run_s:.1f} ms", flush=True)
    out_rows = [rows[(name, spec)] for name in methods for spec in specs[name] if (name, spec) in rows]
    add_ratios(out_rows)
    return out_rows


def add_ratios(rows, refs=("tome", "token_dynamics")):
    """Each row's time over each reference method's at the same budget (``x_<ref>``; None
    where the reference has no row)."""
    ms = {(r["method"], r["budget"]): r["ms"] for r in rows if "ms" in r}
    for r in rows:
        for ref in refs:
            base = ms.get((ref, r["budget"]))
            r[f"x_{ref}"] = None if base is None or "ms" not in r else r["ms"] / base


def _knob_text(knobs):
    parts = []
    for k, v in knobs.items():
        if k == "r":
            continue  # the per-round list is long; rounds says enough
        parts.append(f"{k}={v[0]}x{v[1]}" if isinstance(v, tuple) else f"{k}={v}")
    return " ".join(parts)


def format_table(rows):
    """Markdown table of the rows."""
    head = ("| method | budget | tokens / slots | % kept | knob | rel_err | ms | x ToMe | x TD | compile s "
            "| prefill GFLOPs | LLM x |")
    lines = [head, "|" + "---|" * 12]
    ratio = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['budget']} | unreachable: {r['error']} |" + "  |" * 9)
            continue
        err = "-" if r["rel_err"] is None else f"{r['rel_err']:.3f}"
        lines.append(f"| {r['method']} | {r['budget']} | {r['real_tokens']:.1f} / {r['slots']} | "
                     f"{r['kept_pct']:.3f} | {_knob_text(r['knobs'])} | {err} | {r['ms']:.2f} | "
                     f"{ratio(r.get('x_tome'))} | {ratio(r.get('x_token_dynamics'))} | "
                     f"{r['compile_s']:.1f} | {r['prefill_gflops']:.1f} | {r['llm_speedup']:.1f} |")
    return "\n".join(lines)


def main(argv):
    del argv
    import jax

    import_methods()
    from td_jax.compressors import names

    try:
        method_cfg = json.loads(FLAGS.cfg)
        method_budgets = json.loads(FLAGS.method_budgets)
    except json.JSONDecodeError as e:
        raise app.UsageError(f"--cfg / --method_budgets is not valid JSON: {e}") from None
    if not isinstance(method_cfg, dict) or not all(isinstance(v, dict) for v in method_cfg.values()):
        raise app.UsageError('--cfg must be a JSON object of objects, e.g. {"tome": {"mode": "frame"}}')
    if not isinstance(method_budgets, dict) or not all(isinstance(v, list) for v in method_budgets.values()):
        raise app.UsageError('--method_budgets must be a JSON object of lists, e.g. {"token_dynamics": ["1%"]}')
    methods = FLAGS.methods or sorted(names(), key=lambda m: (_ORDER.index(m) if m in _ORDER else len(_ORDER), m))
    unknown = sorted(set(methods) - set(names()))
    if unknown:
        raise app.UsageError(f"unknown methods {unknown}; known: {', '.join(names())}")
    tokens = synthetic_batch(FLAGS.seed, FLAGS.batch, FLAGS.frames, FLAGS.grid, FLAGS.dim)
    n = FLAGS.frames * FLAGS.grid * FLAGS.grid
    print(f"batch {tuple(tokens.shape)} = {n} tokens per video; {jax.device_count()} {jax.default_backend()} "
          f"device(s); budgets {FLAGS.budgets}")
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    rows = compare(tokens, methods, FLAGS.budgets, method_cfg, warmup=FLAGS.warmup, repeats=FLAGS.repeats,
                   text_tokens=FLAGS.text_tokens, seed=FLAGS.seed, method_budgets=method_budgets)
    load_end, cpus = os.getloadavg()[0], os.cpu_count()
    table = format_table(rows)
    note = (f"Batch {tuple(tokens.shape)} ({n} tokens per video), {jax.device_count()} {jax.default_backend()} "
            f"device(s), {cpus} CPU cores, run {time.perf_counter() - t0:.0f} s; "
            + load_sentence(load_start, load_end, cpus))
    command = ("python -m experiments.benchmarks.compare_compressors " + " ".join(sys.argv[1:])).strip()
    header = f"# compare_compressors\n\n`{command}`\n\n{note}\n"
    print(header + "\n" + table)
    if FLAGS.out:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
        with open(FLAGS.out, "w") as f:
            f.write(header + "\n" + table + "\n")
        with open(os.path.splitext(FLAGS.out)[0] + ".json", "w") as f:
            json.dump({"command": command, "shape": list(tokens.shape), "rows": rows,
                       "load_average": [load_start, load_end], "cpus": cpus}, f, indent=1, default=str)


if __name__ == "__main__":
    define_flags()
    app.run(main)
