r"""Issue 19 ("Never silently wrong") re-probed as a hostile-but-honest user: every probe of the issue, measured now.

    python -m experiments.benchmarks.probe_robustness [--out=results/robustness_probes.md] [--only=1,3]

Each probe does what the issue did to the project (small configs, a fixed seed, CLIs in
subprocesses in a temporary directory sharing one compilation cache) and records what
happens *now*; the "before" column is the issue's own report. A probe is ``ok`` when the
outcome is right or a clear error: exit 0 only with a correct result, a user mistake in one
line (exit 2, no traceback), damage named by path, nothing created by a read-only command.
Writes ``--out`` (markdown table) and the same records as ``.json`` beside it. Takes a few
minutes on a 2-core CPU, most of it process start-up and compilation.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import tracemalloc

from absl import app, flags

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def define_flags() -> None:
    flags.DEFINE_string("out", "results/robustness_probes.md", "Markdown table path (.json written beside it).")
    flags.DEFINE_string("only", "", "Comma-separated issue items to probe (1..8; default all).")


# ----------------------------------------------------------------------------- helpers


class Ctx:
    """Temporary directory, shared compilation cache, and the training run the eval probes damage."""

    def __init__(self, tmp: str):
        self.tmp = tmp
        self.cache = os.path.join(tmp, "jax_cache")
        self._run = None

    def env(self) -> dict:
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8",
                   JAX_COMPILATION_CACHE_DIR=self.cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        return env

    def cli(self, *args, timeout=600) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=ROOT, env=self.env(), capture_output=True, text=True,
                              timeout=timeout)

    def trained(self) -> str:
        """An 8-step synthetic run with checkpoints at steps 4 and 8 (made once, in this process)."""
        if self._run is None:
            self._run = os.path.join(self.tmp, "run")
            trainer_run(train_config(), self._run)
        return self._run

    def copy_run(self, name: str) -> str:
        dst = os.path.join(self.tmp, name)
        shutil.copytree(self.trained(), dst)
        return dst


def train_config(**over):
    import ml_collections as mlc

    from td_jax.train import trainer

    c = mlc.ConfigDict({
        "seed": 0, "total_steps": 8, "log_every_steps": 1, "checkpoint_every_steps": 4, "eval_every_steps": 4,
        "batch_size": 16, "eval_batch_size": 32, "compute_dtype": "float32",
        "mesh": {"data": -1, "fsdp": 1, "tensor": 1}, "optim": {"lr": 1e-2, "warmup_frac": 0.1},
        "checkpoint": {"keep": 3}, "task": {"name": "synthetic_mc", "hidden": 16, "depth": 1}})
    c.update(over)
    return trainer.resolve_config(c)


def trainer_run(cfg, workdir, **kw):
    from td_jax.train import trainer

    return trainer.train_and_evaluate(cfg, workdir, **kw)


def last_line(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.strip().splitlines()
    return lines[-1] if lines else ""


def traceback_in(r) -> bool:
    return "Traceback (most recent call last)" in r.stderr


def short(text: str, n: int = 150) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def outcome(r) -> str:
    """Exit status and the last stderr line of a CLI run."""
    return f"exit {r.returncode}; {'traceback; ' if traceback_in(r) else ''}{short(last_line(r), 110)}"


def one_line_error(r, startswith: str) -> bool:
    return r.returncode == 2 and not traceback_in(r) and last_line(r).startswith(startswith)


def eval_record(r) -> dict:
    lines = [l for l in r.stdout.strip().splitlines() if l.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def largest_state_file(step_dir: str) -> str:
    files = glob.glob(os.path.join(step_dir, "state", "ocdbt.process_0", "d", "*"))
    return max(files, key=os.path.getsize)


# ----------------------------------------------------------------------------- 1. launch.eval and damaged checkpoints


def probe_eval_truncated_file(ctx):
    w = ctx.copy_run("eval_trunc")
    f = largest_state_file(os.path.join(w, "checkpoints", "8"))
    with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 2)
    r = ctx.cli("-m", "launch.eval", f"--workdir={w}", f"--output_dir={ctx.tmp}/eval_trunc_out")
    rec = eval_record(r)
    ok = r.returncode == 0 and rec.get("step") == 4 and "8" in rec.get("damaged_steps", {}) and f in r.stderr
    return f"exit {r.returncode}; evaluated step {rec.get('step')}; damaged steps named: {sorted(rec.get('damaged_steps', {}))}", ok


def probe_eval_truncated_metadata(ctx):
    w = ctx.copy_run("eval_meta")
    step = os.path.join(w, "checkpoints", "8")
    metas = [p for p in glob.glob(os.path.join(step, "**", "*"), recursive=True)
             if os.path.isfile(p) and ("metadata" in os.path.basename(p).lower()) and os.path.getsize(p) > 2]
    f = max(metas, key=os.path.getsize)
    with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 2)
    r = ctx.cli("-m", "launch.eval", f"--workdir={w}", f"--output_dir={ctx.tmp}/eval_meta_out")
    rec = eval_record(r)
    ok = r.returncode == 0 and rec.get("step") == 4 and "JSONDecodeError" not in r.stderr
    return (f"{os.path.relpath(f, w)} cut in half: exit {r.returncode}; evaluated step {rec.get('step')}; "
            f"damaged steps named: {sorted(rec.get('damaged_steps', {}))}"), ok


def probe_eval_flipped_bytes(ctx):
    w = ctx.copy_run("eval_flip")
    f = largest_state_file(os.path.join(w, "checkpoints", "8"))
    with open(f, "r+b") as fh:
        fh.seek(os.path.getsize(f) // 2)
        fh.write(b"\xff" * 16)
    r = ctx.cli("-m", "launch.eval", f"--workdir={w}", f"--output_dir={ctx.tmp}/eval_flip_out")
    rec = eval_record(r)
    r8 = ctx.cli("-m", "launch.eval", f"--workdir={w}", "--step=8", f"--output_dir={ctx.tmp}/eval_flip_out8")
    ok = (r.returncode == 0 and rec.get("step") == 4 and "SHA-256 differs" in rec.get("damaged_steps", {}).get("8", "")
          and one_line_error(r8, f"error: {f}: SHA-256 differs"))
    return (f"exit {r.returncode}, evaluated step {rec.get('step')}, damage named "
            f"({short(rec.get('damaged_steps', {}).get('8', '-'), 60)}); with --step=8: {outcome(r8)}"), ok


def probe_eval_empty_workdir(ctx):
    w = os.path.join(ctx.tmp, "eval_empty")
    os.makedirs(os.path.join(w, "checkpoints", "4.orbax-checkpoint-tmp"))
    r = ctx.cli("-m", "launch.eval", f"--workdir={w}")
    ok = one_line_error(r, "error: no complete checkpoint") and "cannot schedule new futures" not in r.stderr
    return outcome(r), ok


def probe_eval_missing_workdir(ctx):
    w = os.path.join(ctx.tmp, "eval_missing")
    r = ctx.cli("-m", "launch.eval", f"--workdir={w}")
    created = os.path.exists(w)
    ok = one_line_error(r, f"error: --workdir={w}: no such directory") and not created
    return f"{outcome(r)}; directory created: {created}", ok


# ----------------------------------------------------------------------------- 2. truncated video


def _write_video(path, n=32, size=64):
    import av
    import numpy as np

    frames = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    with av.open(path, "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = size, size, "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def probe_truncated_video(ctx):
    full = os.path.join(ctx.tmp, "clip.mp4")
    _write_video(full)
    cut = os.path.join(ctx.tmp, "clip_cut.mp4")
    data = open(full, "rb").read()
    with open(cut, "wb") as f:
        f.write(data[: int(0.6 * len(data))])
    common = ["--frames=4", "--k=4", "--resolution=32", "--patch=8", "--dim=16"]
    out = os.path.join(ctx.tmp, "compress_cut")
    r = ctx.cli("-m", "launch.compress", f"--video={cut}", f"--out={out}", *common)
    good_out = os.path.join(ctx.tmp, "compress_full")
    g = ctx.cli("-m", "launch.compress", f"--video={full}", f"--out={good_out}", *common)
    idx = None
    npz = glob.glob(os.path.join(good_out, "*.npz"))
    if npz:
        import numpy as np

        with np.load(npz[0]) as z:
            idx = z["frame_indices"].tolist() if "frame_indices" in z else None
    ok = (one_line_error(r, f"error: {cut}: decoded") and not os.path.exists(out) and g.returncode == 0
          and idx == [0, 10, 20, 31])
    return f"cut clip: {outcome(r)}; output dir created: {os.path.exists(out)}; whole clip: exit {g.returncode}, frame_indices {idx}", ok


# ----------------------------------------------------------------------------- 3. token scale


def _scaled(x, dtype, scale):
    import jax.numpy as jnp
    import numpy as np

    return jnp.asarray((np.asarray(x, np.float64) * scale).astype(np.float32)).astype(dtype)


def probe_scale_core(ctx):
    import jax
    import jax.numpy as jnp
    import numpy as np

    import td_jax
    from td_jax.synthetic import structured_tokens

    x, _ = structured_tokens(3, 8, 12, 12, 64, n_objects=3, n_background=3, noise=0.5)
    x = x / np.abs(x).max()
    rows, all_ok = [], True
    for dtype, name in ((jnp.float32, "f32"), (jnp.bfloat16, "bf16")):
        base = jnp.asarray(x).astype(dtype)
        ref = td_jax.token_dynamics(base, 6, key=jax.random.key(0))
        ref_km = td_jax.kmeans(base.reshape(-1, 64), 6, key=jax.random.key(0))
        ref_ad = td_jax.adaptive_token_dynamics(base, 8, key=jax.random.key(1))
        bad = []
        for scale in (1e19, 1e-7, 1e-30, 1e-38, 3e38):
            xs = _scaled(x, dtype, scale)
            td = td_jax.token_dynamics(xs, 6, key=jax.random.key(0))
            km = td_jax.kmeans(xs.reshape(-1, 64), 6, key=jax.random.key(0))
            ad = td_jax.adaptive_token_dynamics(xs, 8, key=jax.random.key(1))
            same = (np.array_equal(td.dynamics_map, ref.dynamics_map) and np.array_equal(km.assignments, ref_km.assignments)
                    and np.array_equal(ad.dynamics_map, ref_ad.dynamics_map))
            if not same:
                bad.append(f"{scale:g} (counts {np.asarray(td.counts).tolist()})")
        all_ok &= not bad
        rows.append(f"{name}: {'same clusters at x·1e19, 1e-7, 1e-30, 1e-38, 3e38' if not bad else 'differs at ' + ', '.join(bad)}")
    return "token_dynamics, kmeans, adaptive — " + "; ".join(rows), all_ok


def probe_scale_compressors(ctx):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from td_jax import compressors
    from td_jax.compressors.budget import plan
    from td_jax.synthetic import structured_tokens

    t, h, w = 8, 4, 4
    x, _ = structured_tokens(0, t, h, w, 16)
    x = (x / np.abs(x).max())[None]
    key = jax.random.key(0)
    equal, refused, by_definition, wrong = [], [], [], []
    for name in compressors.names():
        p = plan(name, {"none": t * h * w, "frames": 2 * h * w}.get(name, 12), (t, h, w))
        comp = p.compressor()
        params = comp.init(jax.random.key(1), jnp.asarray(x), budget=p.budget)
        ref = comp(jnp.asarray(x), key=key, budget=p.budget, params=params)
        equivariant = not jax.tree.leaves(params) and comp.module(p.budget).scale_equivariant()
        bad = []
        for scale in (1e19, 1e-7, 1e-38, 3e38):
            try:
                out = comp(_scaled(x, jnp.float32, scale), key=key, budget=p.budget, params=params)
            except ValueError as e:
                extreme = scale in (1e-38, 3e38)
                if equivariant or not extreme or "rescale the tokens first" not in str(e):
                    bad.append(f"{scale:g}: {short(e, 60)}")
                continue
            tok = np.asarray(out.tokens, np.float64) / scale
            same = np.array_equal(out.mask, ref.mask) and np.allclose(tok, np.asarray(ref.tokens, np.float64),
                                                                      rtol=1e-3, atol=2e-3)
            if not same and (equivariant or scale in (1e-38, 3e38)):
                bad.append(f"{scale:g}")
            elif not same:
                by_definition.append(f"{name} (x·{scale:g})")
        if bad:
            wrong.append(f"{name} ({', '.join(bad)})")
        else:
            (equal if equivariant else refused).append(name)
    return (f"scale-equivariant methods give the unscaled output ×scale at x·1e19, 1e-7, 1e-38, 3e38: {', '.join(equal)}; "
            f"the others (learned, or scale-dependent by definition) refuse x·1e-38 and x·3e38 with a ValueError: "
            f"{', '.join(refused)}; of these, differing at a moderate scale because the method depends on it (learned "
            f"layers; DPC-kNN's density exp(-d^2) on raw distances): {', '.join(by_definition) or 'none'}; "
            f"wrong: {', '.join(wrong) or 'none'}"), not wrong


# ----------------------------------------------------------------------------- 4. SIGTERM

_SIGTERM_DRIVER = textwrap.dedent("""
    import os, runpy, signal, sys
    when = sys.argv.pop(1)
    from td_jax.train import checkpoint as ck, trainer
    kill = lambda: os.kill(os.getpid(), signal.SIGTERM)
    if when == "startup":
        build = trainer.build
        trainer.build = lambda *a, **k: (kill(), build(*a, **k))[1]
    elif when == "last_save":
        close = ck.Checkpointer.close
        ck.Checkpointer.close = lambda self: (kill(), close(self))[1]
    sys.argv[0] = "launch.train"
    runpy.run_module("launch.train", run_name="__main__")
""")


def _sigterm(ctx, when):
    w = os.path.join(ctx.tmp, f"sigterm_{when}")
    args = ["--config=experiments/smoke.py:synthetic", f"--workdir={w}", "--config.total_steps=8",
            "--config.checkpoint_every_steps=4", "--config.eval_every_steps=4", "--config.log_every_steps=2"]
    r = ctx.cli("-c", _SIGTERM_DRIVER, when, *args)
    ck = os.path.join(w, "checkpoints")
    steps = sorted(os.listdir(ck)) if os.path.isdir(ck) else []
    return r, w, args, steps


def probe_sigterm_last_save(ctx):
    from td_jax.train.checkpoint import verify_manifest

    r, w, args, steps = _sigterm(ctx, "last_save")
    verified = all(verify_manifest(os.path.join(w, "checkpoints", s)) > 0 for s in steps if s.isdigit())
    again = ctx.cli("-m", "launch.train", *args)
    rec = eval_record(again)
    ok = r.returncode == 0 and steps == ["4", "8"] and verified and again.returncode == 0 and rec.get("step") == 8
    return (f"exit {r.returncode}; checkpoints {steps} (manifests verify: {verified}); the rerun: exit "
            f"{again.returncode}, ends at step {rec.get('step')} with {len(read_steps(w))} metrics records"), ok


def read_steps(w):
    from td_jax.train.metrics import read_metrics

    return [x["step"] for x in read_metrics(w) if "loss" in x]


def probe_sigterm_startup(ctx):
    r, _, _, steps = _sigterm(ctx, "startup")
    rec = eval_record(r)
    ok = r.returncode == 0 and rec.get("status") == "preempted" and "nothing to save yet" in r.stderr and not steps
    return f"exit {r.returncode}; status {rec.get('status')!r}; says 'nothing to save yet': {'nothing to save yet' in r.stderr}", ok


# ----------------------------------------------------------------------------- 5. safetensors


def _st(path, header, length=None, data=b"\0" * 24):
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h) if length is None else length) + h + data)
    return path


def probe_safetensors(ctx):
    from td_jax.convert.safetensors_io import read_safetensors

    good = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}
    cases = [("length 2^31", good, 2 ** 31), ("length 2^40", good, 2 ** 40), ("length 2^63", good, 2 ** 63),
             ("offsets past the end", {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 48]}}, None),
             ("offsets [-4,16]", {"a": {"dtype": "F32", "shape": [1, 5], "data_offsets": [-4, 16]}}, None),
             ("overlapping", {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                              "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, None),
             ("header a list", b"[1, 2]", None), ("no data_offsets", {"a": {"dtype": "F32", "shape": [2, 3]}}, None)]
    results, ok = [], True
    for i, (what, header, length) in enumerate(cases):
        path = _st(os.path.join(ctx.tmp, f"bad{i}.safetensors"), header, length)
        tracemalloc.start()
        try:
            read_safetensors(path)
            got, good_err = "loaded", False
        except Exception as e:                      # a probe records whatever escapes
            got = type(e).__name__
            good_err = isinstance(e, ValueError) and str(e).startswith(path)
            if "tensor" in what or "offsets" in what or "overlap" in what:
                good_err &= "'a'" in str(e)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        good_err &= peak < 1 << 20
        ok &= good_err
        results.append(f"{what}: {got}{'' if good_err else ' (NOT a named ValueError / allocated ' + str(peak) + ' B)'}")
    return "; ".join(results) + " — each naming the file (and tensor), < 1 MiB allocated", ok


# ----------------------------------------------------------------------------- 6. padded batches


def probe_padded_batches(ctx):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from td_jax import compressors
    from td_jax.compressors.base import accepts
    from td_jax.compressors.budget import plan
    from td_jax.synthetic import structured_tokens

    t, h, w, d = 8, 4, 4, 8
    a = structured_tokens(0, t, h, w, d)[0]
    b = structured_tokens(1, t, h, w, d)[0]
    b[5:] = 0.0                                           # a 5-frame video zero-padded to 8 frames
    noisy = b.copy()
    noisy[5:] = 100.0 * np.random.default_rng(2).standard_normal(noisy[5:].shape)   # other padding values
    fm = jnp.asarray(np.arange(t)[None, :] < np.array([[t], [5]]))
    only_padding = jnp.asarray(np.arange(t)[None, :] < np.array([[t], [0]]))         # video 2: no real frame
    bad, checked = [], []
    for name in compressors.names():
        if not accepts(compressors.get(name).module_cls, "mask"):
            bad.append(f"{name}: no mask")
            continue
        p = plan(name, {"none": t * h * w, "frames": 2 * h * w}.get(name, 12), (t, h, w))
        comp = p.compressor()
        x = jnp.asarray(np.stack([a, b]))
        params = comp.init(jax.random.key(1), x, budget=p.budget, mask=fm)
        run = lambda v, m: comp(v, key=jax.random.key(0), budget=p.budget, params=params, mask=m)
        zero_pad, noise_pad = run(x, fm), run(jnp.asarray(np.stack([a, noisy])), fm)
        empty = run(x, only_padding)
        same = (np.array_equal(zero_pad.mask[1], noise_pad.mask[1])
                and np.allclose(zero_pad.tokens[1], noise_pad.tokens[1], atol=1e-5))
        none_real = not np.asarray(empty.mask[1]).any()
        if same and none_real:
            checked.append(name)
        else:
            bad.append(f"{name} ({'padding values change the output' if not same else ''}"
                       f"{'; ' if not same and not none_real else ''}"
                       f"{'a padding-only video has real slots' if not none_real else ''})")
    takes = sum(accepts(compressors.get(n).module_cls, "mask") for n in compressors.names())
    return (f"{takes} of {len(compressors.names())} methods take the mask; zero vs noise padding gives the same output and a "
            f"padding-only video no real slot: {len(checked)} methods" + (f"; failing: {', '.join(bad)}" if bad else "")), not bad


# ----------------------------------------------------------------------------- 7. metrics after resume


def probe_metrics_resume(ctx):
    w = os.path.join(ctx.tmp, "metrics_run")
    cfg = train_config(total_steps=10, log_every_steps=3, checkpoint_every_steps=5, eval_every_steps=0)
    trainer_run(cfg, w, stop_at=7)
    shutil.rmtree(os.path.join(w, "checkpoints", "7"))     # killed after step 7 was logged, before it committed
    second = trainer_run(cfg, w)
    lines = [json.loads(l) for l in open(os.path.join(w, "metrics.jsonl"))]
    steps = [x["step"] for x in lines]
    means = [(x["step"], x.get("steps_in_mean")) for x in second.history]
    ok = steps == sorted(set(steps)) and all(m is not None for _, m in means)
    return f"metrics.jsonl steps {steps}; resumed records (step, steps_in_mean) {means}", ok


# ----------------------------------------------------------------------------- 8. smaller


def _raises(fn, exc=ValueError, contains=""):
    try:
        fn()
    except exc as e:
        return contains in str(e), f"{type(e).__name__}: {short(e, 70)}"
    except Exception as e:                           # a probe records whatever escapes
        return False, f"{type(e).__name__}: {short(e, 70)}"
    return False, "no error"


def probe_smaller_api(ctx):
    import jax
    import jax.numpy as jnp
    import numpy as np

    import td_jax
    from td_jax import compressors

    notes, ok = [], True
    xi = jnp.asarray(np.repeat(np.array([[10, 0, 0, 1], [0, 10, 1, 0]], np.int32), 8, axis=0).reshape(2, 2, 4, 4))
    td = td_jax.token_dynamics(xi, 2, key=jax.random.key(0))
    good = jnp.issubdtype(td.base.dtype, jnp.floating)
    ok &= good
    notes.append(f"integer tokens: base {td.base.dtype}")
    xn = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4, 4, 8)), jnp.float32).at[1, 3].set(jnp.nan)
    mask = jnp.ones((2, 4, 4), bool).at[1, 3].set(False)
    try:
        r = td_jax.token_dynamics(xn, 3, key=jax.random.key(0), mask=mask)
        nan_ok = bool(np.isfinite(np.asarray(r.base)).all())
    except ValueError:
        nan_ok = False
    ok &= nan_ok
    notes.append(f"NaN only in masked rows, eager: {'accepted, finite base' if nan_ok else 'rejected'}")
    x = jnp.ones((1, 2, 4, 4, 8)) + jnp.arange(8.0)
    for what, fn, contains in [
        ("learned compressor without params", lambda: compressors.get("token_dynamics")(x, key=jax.random.key(0), budget=4),
         "compressor.init"),
        ("fractional budget 4.5", lambda: compressors.get("pool")(x, key=jax.random.key(0), budget=4.5), "whole number"),
        ("n_init=0", lambda: td_jax.kmeans(x.reshape(-1, 8), 2, key=jax.random.key(0), n_init=0), "n_init"),
        ("k_min > k_max", lambda: td_jax.adaptive_token_dynamics(x[0], 3, key=jax.random.key(0), k_min=5), "k_min=5"),
        ("D=0", lambda: td_jax.kmeans(jnp.zeros((10, 0)), 2, key=jax.random.key(0)), "D=0")]:
        good, msg = _raises(fn, contains=contains)
        ok &= good
        notes.append(f"{what}: {msg}")
    return "; ".join(notes), ok


def probe_smaller_cli(ctx):
    video = os.path.join(ctx.tmp, "empty.mp4")
    open(video, "wb").close()
    notes, ok = [], True
    for flag, message in (("--frames=0", "error: --frames=0: must be >= 1"), ("--k=0", "error: --k=0: must be >= 1")):
        out = os.path.join(ctx.tmp, "cli_out")
        r = ctx.cli("-m", "launch.compress", f"--video={video}", f"--out={out}", flag, timeout=300)
        good = one_line_error(r, message) and not os.path.exists(out)
        ok &= good
        notes.append(f"{flag}: {outcome(r)}")
    return "; ".join(notes), ok


# ----------------------------------------------------------------------------- the table

PROBES = [
    (1, "eval: a file of the newest step truncated", "crash `OUT_OF_RANGE …`", probe_eval_truncated_file),
    (1, "eval: metadata of the newest step truncated", "`JSONDecodeError`", probe_eval_truncated_metadata),
    (1, "eval: 16 bytes overwritten in the newest step", "exit 0, different accuracy (0.820 vs 0.805)", probe_eval_flipped_bytes),
    (1, "eval: empty workdir", "spurious `RuntimeError: cannot schedule new futures…`", probe_eval_empty_workdir),
    (1, "eval: missing workdir", "creates `WORKDIR/checkpoints`", probe_eval_missing_workdir),
    (2, "compress: faststart mp4 cut to 60%", "exit 0, 16 of 32 frames, wrong frame_indices [0 10 20 31]", probe_truncated_video),
    (3, "token scale: core functions", "x·1e19 / x·1e-7 (f32, bf16): every token in one cluster", probe_scale_core),
    (3, "token scale: compressors' functional calls", "not in the issue; measured before this branch's compressor fix: x·1e-38 and x·3e38 wrong "
        "for base_only, dycoke, prune, tome, vidtome, visionzip", probe_scale_compressors),
    (4, "SIGTERM during the final save", "exit −15, `40.orbax-checkpoint-tmp` left, rerun redoes 20 steps", probe_sigterm_last_save),
    (4, "SIGTERM during start-up", "exit −15 without a word", probe_sigterm_startup),
    (5, "safetensors: hostile headers", "2^31 → +2.5 GB; 2^40 `MemoryError`; 2^63 `OverflowError`; past end 'cannot reshape'; "
        "[-4,16] garbage; list/missing offsets `AttributeError`/`KeyError`", probe_safetensors),
    (6, "padded batches through the registry", "no mask: padding takes a slot (counts [32,18,10,4]) marked real", probe_padded_batches),
    (7, "metrics.jsonl after a resume", "steps repeat (…,40,25,30,35,40); means over fewer steps unmarked", probe_metrics_resume),
    (8, "API mistakes", "integer base; eager rejects masked NaN; `ScopeCollectionNotFound`; 4.5 rounded; "
        "`ZeroDivisionError` / empty argmin / wrong N", probe_smaller_api),
    (8, "launch.compress --frames=0 / --k=0", "raw tracebacks", probe_smaller_cli),
]


def run_probes(only: set[int]) -> list[dict]:
    records = []
    with tempfile.TemporaryDirectory(prefix="probe_robustness_") as tmp:
        ctx = Ctx(tmp)
        for item, name, before, fn in PROBES:
            if only and item not in only:
                continue
            t0 = time.perf_counter()
            try:
                after, ok = fn(ctx)
            except Exception as e:                   # a probe that crashes is a failed probe, recorded as such
                after, ok = f"probe crashed: {type(e).__name__}: {short(e, 200)}", False
            after = after.replace(tmp, "$TMP")       # the temporary directory, named once in the header
            rec = {"item": item, "probe": name, "before": before, "after": after, "ok": bool(ok),
                   "seconds": round(time.perf_counter() - t0, 1)}
            print(json.dumps(rec), flush=True)
            records.append(rec)
    return records


def command(only: set[int]) -> str:
    return "python -m experiments.benchmarks.probe_robustness" + (f" --only={','.join(map(str, sorted(only)))}"
                                                                  if only else "")


def write(records: list[dict], out: str, cmd: str) -> None:
    import platform

    lines = ["# Issue 19 probes, re-measured\n", f"`{cmd}` — {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPUs; {sum(r['ok'] for r in records)}/{len(records)} ok.\n",
             "\"before\" is the issue's report; \"after\" is what the script measured in this run "
             "(`$TMP` is its temporary directory).\n",
             "| # | probe | before (from the issue) | after (measured now) | ok |", "|---|---|---|---|---|"]
    for r in records:
        cell = lambda s: str(s).replace("|", "\\|")
        lines.append(f"| {r['item']} | {cell(r['probe'])} | {cell(r['before'])} | {cell(r['after'])} | "
                     f"{'yes' if r['ok'] else '**no**'} |")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump({"command": cmd, "records": records}, f, indent=1)


def main(argv):
    del argv
    only = {int(v) for v in FLAGS.only.split(",") if v}
    records = run_probes(only)
    write(records, FLAGS.out, command(only))
    print(f"{sum(r['ok'] for r in records)}/{len(records)} probes ok; wrote {FLAGS.out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
