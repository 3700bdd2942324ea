r"""End-to-end efficiency at LLaVA-OneVision-0.5B sizes: Token Dynamics vs all tokens vs pooling.

    python -m experiments.benchmarks.e2e_bench [--frames=32 --budget=32 --text_tokens=64] \
        [--full_frames=2,4] [--vision_frames=2] [--repeats=3] [--dtype=float32] \
        [--out=results/e2e_bench.md]

Random weights at the real sizes (Qwen2-0.5B decoder, SigLIP-so400m tower as LLaVA-OV
runs it, mlp2x_gelu projector; ``td_jax.models.configs``).  One video of ``--frames``
frames, ``grid x grid`` tokens each (32 x 27 x 27 = 23,328).  Three paths into the LLM:

  full            all T*H*W visual tokens (+ 1 newline) + text, prefilled
  pool            LLaVA-OV's own 2x2 bilinear pooling (196 per frame) + prefill
  token_dynamics  k-means base of K tokens + cross-dynamics attention (the ``token_dynamics``
                  compressor) + prefill of K (+ 1 newline) + text

Stages, each jitted and compiled ahead of time (compile excluded), ``--warmup`` untimed
runs, then the median of ``--repeats`` timed runs:

  video decode   PyAV decode + resize of ``--frames`` frames of a synthetic 384 px clip
  vision         the tower on ``--vision_frames`` frames, scaled linearly to ``--frames``
                 (it runs per frame, so its cost is linear in the frame count)
  projector      mlp2x_gelu on all ``--frames`` frames' tokens
  compression    token dynamics or pooling on ``[1, T, H, W, D]`` projected-width tokens
                 (synthetic structured tokens: moving regions with drifting prototypes,
                 ``td_jax.synthetic``, so k-means sees video-like clusters)
  prefill        the decoder filling its KV cache with the whole prompt, logits of the
                 last position only
  generate       ``--new_tokens`` greedy decoding steps from a KV cache of the prompt's length

The full-token prefill at 32 frames needs the dense attention's S x S scores per layer
(XLA on CPU materialises them), far beyond this machine's memory; it is measured at
``--full_frames`` frames and **extrapolated by the analytic FLOP count only** (time x
FLOPs(32 frames) / FLOPs(measured frames)), which the output says in words.  The
32-frame full prefill is still compiled (no run) to report XLA's own FLOP count and
temporary memory for it.  Any other prefill longer than ``--max_prefill_tokens`` is
treated the same way.

FLOPs: analytic counts of the matmuls (1 multiply-add = 2 FLOPs), the LLM's from
``td_jax.eval.budget`` (causal: only the kept (q, k) pairs, the paper-style convention);
XLA's ``cost_analysis()`` of each compiled stage is printed next to it (the dense
implementation scores every pair, so for long prompts XLA's count is up to ~1.4x the
causal one).  XLA counts a loop body once, so for k-means the analytic GEMM count at the
maximum number of Lloyd steps is reported (an upper bound), plus XLA's count of the
cross-dynamics attention.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

from absl import app, flags

from experiments.benchmarks import load_sentence, shared_cores

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Define this script's absl flags (only when run as a script, so importing it
    next to another benchmark in one process does not clash)."""
    flags.DEFINE_integer("frames", 32, "Frames per video (LLaVA-OV / the paper: 32).")
    flags.DEFINE_integer("budget", 32, "Token Dynamics K (base tokens fed to the LLM).")
    flags.DEFINE_integer("text_tokens", 64, "Text prompt tokens after the video.")
    flags.DEFINE_integer("new_tokens", 8, "Answer tokens generated after the prefill (0 skips the stage).")
    flags.DEFINE_list("full_frames", ["2", "4"], "Frame counts at which the full-token prefill is measured "
                      "(the largest is extrapolated to --frames by FLOPs when --frames is not in the list).")
    flags.DEFINE_integer("vision_frames", 2, "Frames run through the vision tower; scaled linearly to --frames.")
    flags.DEFINE_integer("max_prefill_tokens", 8192, "Longer prefills are measured at fewer frames and "
                         "extrapolated by FLOPs (dense attention memory grows with the square).")
    flags.DEFINE_list("paths", ["full", "pool", "token_dynamics"], "Paths to compare (full is the reference).")
    flags.DEFINE_list("stages", ["decode", "vision", "projector", "compression", "prefill", "generate"],
                      "Stages to run; an omitted stage counts as 0 s in the totals (said in the output).")
    flags.DEFINE_bool("compile_full", True, "Compile (not run) the full-token prefill at --frames for XLA's "
                      "FLOP count and temporary memory.")
    flags.DEFINE_string("llm", "qwen2_0_5b", "td_jax.models.configs name of the decoder.")
    flags.DEFINE_string("vision", "siglip_so400m_llava", "td_jax.models.configs name of the vision tower.")
    flags.DEFINE_integer("select_layer", -1, "Tower hidden state fed to the projector (LLaVA-OV: -1 of 26 blocks).")
    flags.DEFINE_integer("pool_stride", 2, "LLaVA-OV pooling stride (2: 27x27 -> 14x14).")
    flags.DEFINE_string("td_cfg", "{}", 'JSON config of the token_dynamics compressor, e.g. {"iters": 20}.')
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute and parameter dtype of the models.")
    flags.DEFINE_integer("warmup", 0, "Untimed runs after compilation (compilation itself is always excluded: "
                         "stages are compiled ahead of time).")
    flags.DEFINE_integer("repeats", 3, "Timed runs per stage; the median is reported.")
    flags.DEFINE_integer("seed", 0, "Seed of the weights, inputs and compressor keys.")
    flags.DEFINE_string("out", "", "Write the markdown report here and the JSON beside it (.json).")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything one benchmark run depends on (built from the flags, or directly in tests)."""

    frames: int = 32
    budget: int = 32
    text_tokens: int = 64
    new_tokens: int = 8
    full_frames: tuple = (2, 4)
    vision_frames: int = 2
    max_prefill_tokens: int = 8192
    paths: tuple = ("full", "pool", "token_dynamics")
    stages: tuple = ("decode", "vision", "projector", "compression", "prefill", "generate")
    compile_full: bool = True
    llm: str = "qwen2_0_5b"
    vision: str = "siglip_so400m_llava"
    select_layer: int = -1
    pool_stride: int = 2
    td_cfg: tuple = ()
    dtype: str = "float32"
    warmup: int = 0
    repeats: int = 3
    seed: int = 0

    def __post_init__(self):
        ints = dict(frames=self.frames, budget=self.budget, vision_frames=self.vision_frames,
                    repeats=self.repeats, pool_stride=self.pool_stride, max_prefill_tokens=self.max_prefill_tokens)
        for name, v in ints.items():
            if int(v) < 1:
                raise ValueError(f"Settings.{name} must be >= 1, got {v}")
        for name, v in dict(text_tokens=self.text_tokens, new_tokens=self.new_tokens, warmup=self.warmup).items():
            if int(v) < 0:
                raise ValueError(f"Settings.{name} must be >= 0, got {v}")
        if not self.full_frames or any(int(f) < 1 or int(f) > self.frames for f in self.full_frames):
            raise ValueError(f"full_frames must be non-empty, each in [1, frames={self.frames}]; got {self.full_frames}")
        if self.vision_frames > self.frames:
            raise ValueError(f"vision_frames={self.vision_frames} exceeds frames={self.frames}")
        bad = sorted(set(self.paths) - set(PATHS))
        if bad or "full" not in self.paths:
            raise ValueError(f"paths must include 'full' (the reference) and come from {PATHS}; got {list(self.paths)}")
        bad = sorted(set(self.stages) - set(STAGES))
        if bad:
            raise ValueError(f"unknown stages {bad}; known: {list(STAGES)}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")


PATHS = ("full", "pool", "token_dynamics")
STAGES = ("decode", "vision", "projector", "compression", "prefill", "generate")
LLM_SIDE = ("compression", "prefill")


# ============================================================================ analytic FLOPs
def vision_flops(vcfg, frames: int, layers: int) -> int:
    """Matmul FLOPs of ``layers`` SigLIP blocks (+ patch embedding) on ``frames`` frames."""
    n, dv, mlp = vcfg.grid ** 2, vcfg.hidden_size, vcfg.intermediate_size
    patch = 2 * n * vcfg.patch_size ** 2 * vcfg.num_channels * dv
    per_layer = 2 * n * dv * 4 * dv + 2 * 2 * n * n * dv + 2 * 2 * n * dv * mlp
    return frames * (patch + layers * per_layer)


def projector_flops(tokens: int, dv: int, d: int, kind: str = "mlp2x_gelu") -> int:
    """Matmul FLOPs of the LLaVA projector on ``tokens`` rows."""
    if kind == "identity":
        return 0
    return 2 * tokens * (dv * d + (d * d if kind == "mlp2x_gelu" else 0))


def generate_flops(dec, context: int, new_tokens: int) -> int:
    """Matmul FLOPs of ``new_tokens`` single-token decoding steps after ``context`` cached
    tokens: per step the projections, MLP and LM head of one token plus attention over every
    earlier key and itself."""
    from td_jax.eval.budget import prefill_flops
    one = prefill_flops(dec, 1, causal=True, logit_tokens=1)
    fixed = one["projections"] + one["mlp"] + one["lm_head"]
    per_key = dec.layers * 2 * 2 * dec.heads * dec.dim_per_head
    keys = sum(context + i + 1 for i in range(new_tokens))
    return new_tokens * fixed + per_key * keys


def kmeans_flops(n: int, d: int, k: int, *, iters: int, n_init: int, refine_iters: int,
                 sample_size: int | None = None) -> int:
    """GEMM FLOPs of ``td_jax.kmeans`` / ``token_dynamics`` with ``iters`` Lloyd steps on the
    sample (its maximum gives an upper bound; it stops earlier once converged).

    Per initialisation: greedy k-means++ (one [S, D] x [D, trials] product per centre), the
    Lloyd steps (assignment + cluster sums, 4 S D K), one final assignment; then
    ``refine_iters`` passes over all rows (assignment + unit and raw sums, 6 N D K).  The
    base reuses the last pass's raw means (no further pass over the tokens).
    """
    from td_jax.cluster import default_sample_size
    s = min(n, default_sample_size(k) if sample_size is None else int(sample_size))
    trials = 2 + int(math.log(k))
    per_init = 2 * s * d + (k - 1) * 2 * s * d * trials + iters * 4 * s * d * k + 2 * s * d * k
    return n_init * per_init + refine_iters * 6 * n * d * k


def pool_flops(t: int, g: int, d: int, stride: int) -> int:
    """The two separable bilinear matmuls of LLaVA-OV pooling: [g'x g] then [g' x g] per frame."""
    gp = -(-g // stride)
    return 2 * t * d * (gp * g * g + gp * gp * g)


# ============================================================================ timing
def _rss_kib(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _xla_cost(compiled) -> tuple[float | None, int | None]:
    """(FLOPs, temporary bytes) XLA reports for a compiled function (None if unavailable)."""
    flops = temp = None
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost["flops"]) if cost and "flops" in cost else None
    except Exception:  # noqa: BLE001 - backends without cost analysis
        pass
    try:
        mem = compiled.memory_analysis()
        temp = int(mem.temp_size_in_bytes) if mem is not None else None
    except Exception:  # noqa: BLE001
        pass
    return flops, temp


def measure(fn: Callable, make_args: Callable[[], tuple], *, warmup: int, repeats: int,
            donate_argnums: tuple = ()) -> dict:
    """Compile ``fn`` ahead of time on ``make_args()``, then time it.

    ``make_args`` is called before every run (so donated buffers are fresh, outside the
    timed region).  Returns compile_s, times (s), median_s, xla_flops, xla_temp_bytes.
    """
    import jax
    args = make_args()
    t0 = time.perf_counter()
    compiled = jax.jit(fn, donate_argnums=donate_argnums).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    flops, temp = _xla_cost(compiled)
    for i in range(warmup):
        if i:
            args = make_args()
        jax.block_until_ready(compiled(*args))
        args = None
    times = []
    for _ in range(repeats):
        args = make_args() if (args is None or donate_argnums) else args
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return {"compile_s": compile_s, "times": times, "median_s": statistics.median(times),
            "xla_flops": flops, "xla_temp_bytes": temp}


def compile_only(fn: Callable, args: tuple) -> dict:
    """Compile ``fn`` on abstract ``args`` (jax.ShapeDtypeStruct leaves): XLA's FLOPs and memory."""
    import jax
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    flops, temp = _xla_cost(compiled)
    return {"compile_s": time.perf_counter() - t0, "xla_flops": flops, "xla_temp_bytes": temp}


# ============================================================================ model pieces
def _configs(s: Settings):
    from td_jax.models.configs import as_dtype, get_config, LLMConfig, VisionConfig
    llm_cfg, vcfg = get_config(s.llm), get_config(s.vision)
    if not isinstance(llm_cfg, LLMConfig):
        raise ValueError(f"--llm={s.llm!r} is not a decoder config ({type(llm_cfg).__name__})")
    if not isinstance(vcfg, VisionConfig):
        raise ValueError(f"--vision={s.vision!r} is not a vision config ({type(vcfg).__name__})")
    llm_cfg = dataclasses.replace(llm_cfg, dtype=s.dtype, param_dtype=s.dtype)
    vcfg = dataclasses.replace(vcfg, dtype=s.dtype, param_dtype=s.dtype)
    as_dtype(s.dtype)
    return llm_cfg, vcfg


def vision_layers_run(vcfg, select_layer: int) -> int:
    """Blocks the tower runs to produce hidden state ``select_layer`` (LLaVA indexing)."""
    n = vcfg.num_layers
    upto = select_layer if select_layer >= 0 else n + 1 + select_layer
    if not 0 <= upto <= n:
        raise ValueError(f"select_layer={select_layer} out of range for {n} layers")
    return upto


def _init_params(module, key, *args, **kw):
    """Random parameters at full size without running the forward pass (jit drops it)."""
    import flax.linen as nn
    import jax
    return jax.jit(lambda k: nn.unbox(module.init(k, *args, **kw)["params"]))(key)


def _normal(key, shape, dtype, scale=1.0):
    import jax
    return (jax.random.normal(key, shape) * scale).astype(dtype)


def llm_fns(llm_cfg):
    """(module, prefill_fn, generate_fn) for the decoder.

    prefill_fn(params, vis [1, Sv, D], ids [1, L]) -> (last logits [1, V], KVCache of Sv + L)
    make_generate(n) -> generate_fn(params, cache, token [1]) -> (ids [1, n], cache): n greedy steps
    """
    import jax
    import jax.numpy as jnp
    from td_jax.models import llm as llm_lib

    model = llm_lib.Qwen2LM(llm_cfg)

    def prefill_fn(params, vis, ids):
        def body(mod):
            text = mod.embed(ids)
            emb = jnp.concatenate([vis.astype(text.dtype), text], axis=1)
            cache = llm_lib.init_cache(llm_cfg, emb.shape[0], emb.shape[1])
            valid = jnp.ones(emb.shape[:2], bool)
            return llm_lib.prefill(mod, emb, valid, cache)
        return nn_apply(model, params, body)

    def make_generate(n):
        def generate_fn(params, cache, tok):
            def step(carry, _):
                tok, cache = carry
                logits, cache = model.apply({"params": params}, tok, cache, method=llm_lib.decode_step)
                nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
                return (nxt, cache), nxt
            (_, cache), toks = jax.lax.scan(step, (tok, cache), None, length=n)
            return toks.T, cache
        return generate_fn

    return model, prefill_fn, make_generate


def nn_apply(model, params, body):
    """Run ``body(module)`` bound to ``params`` (for code that calls module methods)."""
    return model.apply({"params": params}, method=lambda mod: body(mod))


def synthetic_cache(llm_cfg, context: int, new_tokens: int, key):
    """A KV cache holding ``context`` valid positions (random keys/values) with room for
    ``new_tokens`` more: what a prefill of ``context`` tokens leaves (decode cost does not
    depend on the values)."""
    import jax
    import jax.numpy as jnp
    from td_jax.models import llm as llm_lib
    from td_jax.models.configs import as_dtype
    cache = llm_lib.init_cache(llm_cfg, 1, context + new_tokens)
    dt = as_dtype(llm_cfg.dtype)
    keys = jax.random.split(key, 2 * llm_cfg.num_layers)
    shape = cache.layers[0][0].shape
    layers = tuple((_normal(keys[2 * i], shape, dt), _normal(keys[2 * i + 1], shape, dt))
                   for i in range(llm_cfg.num_layers))
    valid = jnp.zeros((1, context + new_tokens), bool).at[:, :context].set(True)
    return llm_lib.KVCache(layers=layers, kv_valid=valid, length=jnp.full((1,), context, jnp.int32),
                           position=jnp.full((1,), context, jnp.int32))


# ============================================================================ stages
def _log(msg: str) -> None:
    print(msg, flush=True)


def stage_decode(s: Settings, vcfg) -> dict:
    """PyAV decode of ``frames`` frames at the tower's resolution from a synthetic clip of
    2 x frames source frames (moving squares, H.264 yuv420p) — the video-file stage."""
    import numpy as np
    from td_jax.data.video import decode_video, encode_video
    r = vcfg.image_size + (vcfg.image_size % 2)          # yuv420p needs even sides
    n_src = 2 * s.frames
    rng = np.random.default_rng(s.seed)
    yy, xx = np.mgrid[0:r, 0:r]
    frames = np.empty((n_src, r, r, 3), np.uint8)
    base = rng.integers(0, 256, (3,), dtype=np.uint8)
    for t in range(n_src):
        img = np.broadcast_to(base, (r, r, 3)).copy()
        for j in range(4):
            cy, cx = (r * (0.2 + 0.2 * j) + 3 * t) % r, (r * (0.8 - 0.2 * j) + 2 * t * (j + 1)) % r
            sq = (np.abs(yy - cy) < r / 10) & (np.abs(xx - cx) < r / 10)
            img[sq] = (64 * j + 40, 255 - 50 * j, (80 * j + 120) % 256)
        frames[t] = img
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "clip.mp4")
        encode_video(path, frames, lossless=False)
        decode_video(path, s.frames, vcfg.image_size)    # warm-up (codec init)
        times = []
        for _ in range(s.repeats):
            t0 = time.perf_counter()
            out = decode_video(path, s.frames, vcfg.image_size)
            times.append(time.perf_counter() - t0)
    if out.shape != (s.frames, vcfg.image_size, vcfg.image_size, 3):
        raise RuntimeError(f"decode_video returned {out.shape}")
    return {"times": times, "median_s": statistics.median(times), "frames": s.frames, "resolution": vcfg.image_size}


def stage_vision(s: Settings, vcfg, key) -> dict:
    """The tower on ``vision_frames`` frames; scaled by frames / vision_frames."""
    import jax
    import jax.numpy as jnp
    from td_jax.models.configs import as_dtype
    from td_jax.models.vit import VisionTower
    tower = VisionTower(vcfg)
    dt = as_dtype(vcfg.dtype)
    shape = (s.vision_frames, vcfg.image_size, vcfg.image_size, vcfg.num_channels)
    k_p, k_x = jax.random.split(key)
    params = _init_params(tower, k_p, jnp.zeros((1,) + shape[1:], dt), select_layer=s.select_layer)
    pixels = _normal(k_x, shape, dt)
    fn = lambda p, x: tower.apply({"params": p}, x, select_layer=s.select_layer)
    m = measure(fn, lambda: (params, pixels), warmup=s.warmup, repeats=s.repeats)
    layers = vision_layers_run(vcfg, s.select_layer)
    scale = s.frames / s.vision_frames
    m.update(frames_measured=s.vision_frames, scale=scale, layers=layers,
             analytic_flops_measured=vision_flops(vcfg, s.vision_frames, layers),
             analytic_flops=vision_flops(vcfg, s.frames, layers),
             est_s=m["median_s"] * scale)
    del params, pixels
    return m


def stage_projector(s: Settings, vcfg, llm_cfg, key) -> dict:
    """mlp2x_gelu on every token of ``frames`` frames: [1, T*g*g, Dv] -> [1, T*g*g, D]."""
    import jax
    import jax.numpy as jnp
    from td_jax.models.configs import as_dtype
    from td_jax.models.vit import Projector
    dt = as_dtype(s.dtype)
    n = s.frames * vcfg.grid ** 2
    proj = Projector(llm_cfg.hidden_size, kind="mlp2x_gelu", dtype=s.dtype, param_dtype=s.dtype)
    k_p, k_x = jax.random.split(key)
    params = _init_params(proj, k_p, jnp.zeros((1, 1, vcfg.hidden_size), dt))
    x = _normal(k_x, (1, n, vcfg.hidden_size), dt)
    m = measure(lambda p, x: proj.apply({"params": p}, x), lambda: (params, x), warmup=s.warmup, repeats=s.repeats)
    m.update(tokens=n, analytic_flops=projector_flops(n, vcfg.hidden_size, llm_cfg.hidden_size), est_s=m["median_s"])
    return m


def compression_tokens(s: Settings, g: int, d: int):
    """[1, T, g, g, D] structured synthetic tokens (video-like clusters) in the run dtype."""
    import jax.numpy as jnp
    from td_jax.models.configs import as_dtype
    from td_jax.synthetic import structured_tokens
    x, _ = structured_tokens(s.seed, s.frames, g, g, d, n_objects=24, n_background=8)
    return jnp.asarray(x[None], as_dtype(s.dtype))


def td_config(s: Settings) -> dict:
    return dict(s.td_cfg)


def stage_compress_td(s: Settings, tokens, key) -> dict:
    """The ``token_dynamics`` compressor (k-means + CrossDynamicsAttention) at K = budget."""
    import jax
    import td_jax.compressors as C
    from td_jax.attention import CrossDynamicsAttention
    comp = C.get("token_dynamics", **td_config(s))
    k_p, k_c = jax.random.split(key)
    params = comp.init(k_p, tokens, budget=s.budget)
    module = comp.module(s.budget)
    fn = lambda p, x, k: module.apply({"params": p}, x, rngs={C.RNG_STREAM: k})
    keys = iter(jax.random.split(k_c, s.warmup + s.repeats + 1))
    m = measure(fn, lambda: (params, tokens, next(keys)), warmup=s.warmup, repeats=s.repeats)
    out = jax.jit(fn)(params, tokens, jax.random.key(s.seed))
    n_real = int(out.mask.sum())
    # Cross-dynamics attention alone (no loops inside): XLA's exact count.
    cda = CrossDynamicsAttention(num_heads=module.num_heads, mlp_ratio=module.mlp_ratio,
                                 dropout=module.dropout, neighbours=module.neighbours, dtype=tokens.dtype)
    base = out.tokens
    cda_fn = lambda p, b, mp, v: cda.apply({"params": p}, b, mp, v)
    cda_m = compile_only(cda_fn, (params["cross_dynamics"], base, out.aux["dynamics_map"], out.mask))
    _, t, h, w, d = tokens.shape
    km = kmeans_flops(t * h * w, d, s.budget, iters=module.iters, n_init=module.n_init,
                      refine_iters=module.refine_iters, sample_size=module.sample_size)
    m.update(out_tokens=s.budget, real_tokens=n_real, kmeans_flops_max=km, cda_xla_flops=cda_m["xla_flops"],
             analytic_flops=km + (cda_m["xla_flops"] or 0.0), est_s=m["median_s"],
             config={f: getattr(module, f) for f in ("iters", "tol", "n_init", "refine_iters", "sample_size",
                                                       "base", "num_heads", "mlp_ratio")})
    return m


def stage_compress_pool(s: Settings, tokens) -> dict:
    """The ``pool`` compressor (LLaVA-OV bilinear, stride ``pool_stride``)."""
    import jax
    import td_jax.compressors as C
    from td_jax.compressors import pool as pool_mod
    _, t, h, w, d = tokens.shape
    oh, ow = pool_mod.pooled_size(h, s.pool_stride), pool_mod.pooled_size(w, s.pool_stride)
    budget = t * oh * ow
    comp = C.get("pool", stride=s.pool_stride)
    module = comp.module(budget)
    fn = lambda x: module.apply({}, x)
    m = measure(fn, lambda: (tokens,), warmup=s.warmup, repeats=s.repeats)
    m.update(out_tokens=budget, analytic_flops=pool_flops(t, h, d, s.pool_stride), est_s=m["median_s"])
    del jax
    return m


def prefill_frames(s: Settings, path: str, per_frame: int) -> list[int]:
    """Frame counts at which a path's prefill is measured: ``full``: each of ``full_frames``
    (plus ``frames`` itself) whose prompt fits ``max_prefill_tokens``; ``pool``: ``frames``.
    When none fits, the largest frame count that does (the result is then extrapolated)."""
    fits = lambda f: seq_len(f * per_frame, s) <= s.max_prefill_tokens
    wanted = sorted({int(f) for f in s.full_frames} | {s.frames}) if path == "full" else [s.frames]
    ok = [f for f in wanted if fits(f)]
    if ok:
        return ok
    largest = max((f for f in range(1, s.frames + 1) if fits(f)), default=None)
    if largest is None:
        raise ValueError(f"prefill of even one frame ({seq_len(per_frame, s):,} tokens) exceeds "
                         f"max_prefill_tokens={s.max_prefill_tokens}")
    return [largest]


def seq_len(visual: int, s: Settings, newline: int = 1) -> int:
    """LLM prompt length: visual tokens + the video newline + text."""
    return visual + newline + s.text_tokens


def stage_prefill(s: Settings, llm_cfg, params, prefill_fn, visual_per_frame: int, fixed_visual: int | None,
                  frames_list: list[int], key) -> dict:
    """Prefill at each frame count in ``frames_list`` (or once for a fixed visual count);
    extrapolate to ``s.frames`` by the dense analytic FLOPs when it was not measured."""
    import jax
    import jax.numpy as jnp
    from td_jax.eval.budget import decoder_from_config, prefill_flops
    from td_jax.models.configs import as_dtype
    dec = decoder_from_config(llm_cfg)
    dt = as_dtype(llm_cfg.dtype)
    runs = []
    for f in frames_list:
        visual = fixed_visual if fixed_visual is not None else f * visual_per_frame
        sv = visual + 1
        k1, k2 = jax.random.split(jax.random.fold_in(key, f))
        vis = _normal(k1, (1, sv, llm_cfg.hidden_size), dt)
        ids = jax.random.randint(k2, (1, s.text_tokens), 0, llm_cfg.vocab_size, jnp.int32)
        _log(f"    prefill of {sv + s.text_tokens:,} tokens ({f} frames) ...")
        m = measure(prefill_fn, lambda: (params, vis, ids), warmup=s.warmup, repeats=s.repeats)
        S = sv + s.text_tokens
        m.update(frames=f, seq_len=S, dense_flops=prefill_flops(dec, S, causal=False)["total"],
                 analytic_flops=prefill_flops(dec, S, causal=True)["total"])
        runs.append(m)
        del vis, ids
        gc.collect()
    visual = fixed_visual if fixed_visual is not None else s.frames * visual_per_frame
    S = seq_len(visual, s)
    out = {"runs": runs, "seq_len": S, "visual_tokens": visual,
           "analytic_flops": prefill_flops(dec, S, causal=True)["total"],
           "dense_flops": prefill_flops(dec, S, causal=False)["total"]}
    exact = [r for r in runs if r["seq_len"] == S]
    if exact:
        out.update(est_s=exact[0]["median_s"], extrapolated=False, xla_flops=exact[0]["xla_flops"])
    else:
        ref = max(runs, key=lambda r: r["seq_len"])
        factor = out["dense_flops"] / ref["dense_flops"]
        out.update(est_s=ref["median_s"] * factor, extrapolated=True, extrapolated_from_frames=ref["frames"],
                   extrapolated_from_seq=ref["seq_len"], extrapolation_factor=factor)
    # Check of the FLOP extrapolation itself: predict each longer run from the shortest.
    if len(runs) > 1:
        lo = min(runs, key=lambda r: r["seq_len"])
        out["extrapolation_check"] = [
            {"from_seq": lo["seq_len"], "to_seq": r["seq_len"],
             "predicted_s": lo["median_s"] * r["dense_flops"] / lo["dense_flops"], "measured_s": r["median_s"]}
            for r in runs if r is not lo]
    return out


def stage_generate(s: Settings, llm_cfg, params, make_generate, context: int, key) -> dict:
    """``new_tokens`` greedy steps from a cache of ``context`` tokens (the cache is donated)."""
    import jax.numpy as jnp
    from td_jax.eval.budget import decoder_from_config
    fn = make_generate(s.new_tokens)
    tok = jnp.zeros((1,), jnp.int32)
    make = lambda: (params, synthetic_cache(llm_cfg, context, s.new_tokens, key), tok)
    m = measure(fn, make, warmup=s.warmup, repeats=s.repeats, donate_argnums=(1,))
    m.update(context=context, analytic_flops=generate_flops(decoder_from_config(llm_cfg), context, s.new_tokens),
             est_s=m["median_s"])
    return m


# ============================================================================ the run
def run(s: Settings) -> dict:
    """All stages of all paths; returns the raw measurements (see :func:`summarize`)."""
    import jax
    import td_jax.compressors  # noqa: F401  (registers token_dynamics)
    from td_jax.compressors import pool as _pool  # noqa: F401  (registers pool)
    from td_jax.compressors.pool import pooled_size
    llm_cfg, vcfg = _configs(s)
    g, d = vcfg.grid, llm_cfg.hidden_size
    per_frame = g * g
    pooled_per_frame = pooled_size(g, s.pool_stride) ** 2
    key = jax.random.key(s.seed)
    k_vis, k_proj, k_comp, k_llm, k_pre, k_gen = jax.random.split(key, 6)
    res: dict[str, Any] = {"stages": {}, "prefill": {}, "generate": {}, "compression": {}}
    st = set(s.stages)
    t_start = time.perf_counter()

    if "decode" in st:
        _log("  video decode ...")
        res["stages"]["decode"] = stage_decode(s, vcfg)
    if "vision" in st:
        _log(f"  vision tower on {s.vision_frames} frames ...")
        res["stages"]["vision"] = stage_vision(s, vcfg, k_vis)
        gc.collect()
    if "projector" in st:
        _log(f"  projector on {s.frames * per_frame:,} tokens ...")
        res["stages"]["projector"] = stage_projector(s, vcfg, llm_cfg, k_proj)
        gc.collect()

    td_out_tokens = s.budget
    if "compression" in st and {"token_dynamics", "pool"} & set(s.paths):
        tokens = compression_tokens(s, g, d)
        if "token_dynamics" in s.paths:
            _log(f"  token dynamics (K={s.budget}) on {tuple(tokens.shape)} ...")
            res["compression"]["token_dynamics"] = stage_compress_td(s, tokens, k_comp)
        if "pool" in s.paths:
            _log(f"  pooling (stride {s.pool_stride}) on {tuple(tokens.shape)} ...")
            res["compression"]["pool"] = stage_compress_pool(s, tokens)
        del tokens
        gc.collect()

    visual = {"full": s.frames * per_frame, "pool": s.frames * pooled_per_frame, "token_dynamics": td_out_tokens}
    if {"prefill", "generate"} & st or s.compile_full:
        model, prefill_fn, make_generate = llm_fns(llm_cfg)
        import jax.numpy as jnp
        params = _init_params(model, k_llm, jnp.zeros((1, 1), jnp.int32))
        if "prefill" in st:
            for path in s.paths:
                _log(f"  prefill: {path} ...")
                if path == "token_dynamics":
                    res["prefill"][path] = stage_prefill(s, llm_cfg, params, prefill_fn, 0, td_out_tokens,
                                                         [s.frames], k_pre)
                else:
                    ppf = per_frame if path == "full" else pooled_per_frame
                    res["prefill"][path] = stage_prefill(s, llm_cfg, params, prefill_fn, ppf, None,
                                                         prefill_frames(s, path, ppf), k_pre)
                gc.collect()
        if s.compile_full and res["prefill"].get("full", {}).get("extrapolated", True):
            S = seq_len(visual["full"], s)
            _log(f"  compiling (not running) the full prefill of {S:,} tokens for XLA's counts ...")
            abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
            vis = jax.ShapeDtypeStruct((1, visual["full"] + 1, d), params["embed_tokens"]["embedding"].dtype)
            ids = jax.ShapeDtypeStruct((1, s.text_tokens), jnp.int32)
            res["full_compile"] = compile_only(prefill_fn, (abstract, vis, ids))
            res["full_compile"]["seq_len"] = S
        if "generate" in st and s.new_tokens:
            for path in s.paths:
                ctx = seq_len(visual[path], s)
                _log(f"  generate {s.new_tokens} tokens after {ctx:,}: {path} ...")
                res["generate"][path] = stage_generate(s, llm_cfg, params, make_generate, ctx, k_gen)
                gc.collect()
        del params
        gc.collect()
    res["visual_tokens"] = visual
    res["wall_s"] = time.perf_counter() - t_start
    res["peak_rss_gib"] = _rss_kib("VmHWM:") / 2 ** 20
    return res


# ============================================================================ summary
def summarize(s: Settings, res: dict) -> dict:
    """Per-path stage times / FLOPs, LLM-side and end-to-end totals, ratios to ``full``,
    and whether the targets were met."""
    stage_s, stage_f = {}, {}
    for path in s.paths:
        t, f = {}, {}
        for name in ("decode", "vision", "projector"):
            if name in res["stages"]:
                t[name] = res["stages"][name].get("est_s", res["stages"][name]["median_s"])
                f[name] = res["stages"][name].get("analytic_flops", 0)
        if path != "full" and path in res["compression"]:
            t["compression"], f["compression"] = res["compression"][path]["est_s"], res["compression"][path]["analytic_flops"]
        elif path == "full":
            t["compression"], f["compression"] = 0.0, 0
        if path in res["prefill"]:
            t["prefill"], f["prefill"] = res["prefill"][path]["est_s"], res["prefill"][path]["analytic_flops"]
        if path in res["generate"]:
            t["generate"], f["generate"] = res["generate"][path]["est_s"], res["generate"][path]["analytic_flops"]
        stage_s[path], stage_f[path] = t, f
    rows = []
    for path in s.paths:
        t, f = stage_s[path], stage_f[path]
        llm_t = sum(t.get(k, 0.0) for k in LLM_SIDE)
        llm_f = sum(f.get(k, 0) for k in LLM_SIDE)
        rows.append({"path": path, "visual_tokens": res["visual_tokens"][path],
                     "llm_seq": res["prefill"].get(path, {}).get("seq_len"),
                     "stage_s": t, "stage_flops": f,
                     "llm_side_s": llm_t, "llm_side_flops": llm_f,
                     "e2e_s": sum(t.values()), "e2e_flops": sum(f.values()),
                     "prefill_extrapolated": res["prefill"].get(path, {}).get("extrapolated", False)})
    ref = rows[0] if rows[0]["path"] == "full" else next(r for r in rows if r["path"] == "full")
    for r in rows:
        for what in ("llm_side_s", "llm_side_flops", "e2e_s", "e2e_flops"):
            r[f"speedup_{what}"] = (ref[what] / r[what]) if r[what] else None
    targets = {}
    td = next((r for r in rows if r["path"] == "token_dynamics"), None)
    complete_llm = all(k in s.stages for k in LLM_SIDE)
    complete_e2e = all(k in s.stages for k in ("vision", "projector", "compression", "prefill"))
    if td is not None and complete_llm:
        targets["llm_side_100x"] = {"target": 100.0, "time": td["speedup_llm_side_s"],
                                    "flops": td["speedup_llm_side_flops"],
                                    "met": bool(td["speedup_llm_side_s"] and td["speedup_llm_side_s"] >= 100)}
    if td is not None and complete_e2e:
        targets["e2e_2x"] = {"target": 2.0, "time": td["speedup_e2e_s"], "flops": td["speedup_e2e_flops"],
                             "met": bool(td["speedup_e2e_s"] and td["speedup_e2e_s"] >= 2.0)}
    return {"rows": rows, "targets": targets}


def _fmt_s(x):
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def _fmt_f(x):
    """FLOPs as GFLOP / TFLOP text."""
    if x is None:
        return "-"
    if x == 0:
        return "0"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}" if unit == "T" else f"{x / scale:.1f} {unit}"
    return f"{x:.0f} "


def _rate(flops, seconds):
    return "-" if not flops or not seconds else f"{flops / seconds / 1e9:.0f} GFLOP/s"


def _fmt_x(x):
    return "-" if x is None else f"{x:,.1f}x"


def format_report(s: Settings, res: dict, summ: dict, env: dict) -> str:
    """Markdown: LLM-side table, end-to-end stage breakdown, targets, measurement notes."""
    L = []
    L.append(f"# End-to-end efficiency: {s.llm} + {s.vision}, {s.frames} frames, random weights\n")
    L.append(f"Command: `{env['command']}`  ")
    load = (env["load_start"][0], env["load_end"][0], env["cpus"])
    busy = shared_cores(*load)
    L.append(f"Machine: {env['cpus']} CPU cores, {env['platform']}; jax {env['jax']}; dtype {s.dtype}; "
             + load_sentence(*load))
    L.append(f"Median of {s.repeats} timed runs after {s.warmup} warm-up run(s); compilation excluded. "
             f"Whole run {res['wall_s']:.0f} s, peak resident memory {res['peak_rss_gib']:.1f} GiB.\n")

    L.append("## LLM side: compression module + prefill\n")
    L.append("| path | visual tokens | % of full | LLM prompt | module FLOPs | prefill FLOPs | module s | prefill s "
             "| LLM-side s | speed-up (time) | speed-up (FLOPs) |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|")
    full_vis = res["visual_tokens"]["full"]
    for r in summ["rows"]:
        t, f = r["stage_s"], r["stage_flops"]
        star = " *" if r["prefill_extrapolated"] else ""
        L.append(f"| {r['path']} | {r['visual_tokens']:,} | {100 * r['visual_tokens'] / full_vis:.3g}% | "
                 f"{(r['llm_seq'] or 0):,} | {_fmt_f(f.get('compression'))} | {_fmt_f(f.get('prefill'))} | "
                 f"{_fmt_s(t.get('compression'))} | {_fmt_s(t.get('prefill'))}{star} | {_fmt_s(r['llm_side_s'])}{star} | "
                 f"{_fmt_x(r['speedup_llm_side_s'])} | {_fmt_x(r['speedup_llm_side_flops'])} |")
    L.append("")
    names = [n for n in STAGES if any(n in r["stage_s"] for r in summ["rows"])]
    L.append("## End to end (vision tower included): seconds by stage\n")
    L.append("| path | " + " | ".join(names) + " | total s | speed-up (time) | total FLOPs | speed-up (FLOPs) |")
    L.append("|---|" + "---|" * (len(names) + 4))
    for r in summ["rows"]:
        cells = [_fmt_s(r["stage_s"].get(n)) + (" *" if n == "prefill" and r["prefill_extrapolated"] else "")
                 for n in names]
        L.append(f"| {r['path']} | " + " | ".join(cells) + f" | {_fmt_s(r['e2e_s'])} | {_fmt_x(r['speedup_e2e_s'])} | "
                 f"{_fmt_f(r['e2e_flops'])} | {_fmt_x(r['speedup_e2e_flops'])} |")
    L.append("")
    for r in summ["rows"]:
        if r["e2e_s"]:
            share = ", ".join(f"{n} {100 * r['stage_s'][n] / r['e2e_s']:.0f}%" for n in names if n in r["stage_s"])
            L.append(f"- {r['path']}: {share}")
    L.append("")
    if summ["targets"]:
        L.append("## Targets\n")
        for name, tg in summ["targets"].items():
            label = "LLM-side speed-up >= 100x" if name == "llm_side_100x" else "end-to-end speed-up >= 2x"
            L.append(f"- {label}: **{'met' if tg['met'] else 'missed'}** — {_fmt_x(tg['time'])} by measured time, "
                     f"{_fmt_x(tg['flops'])} by analytic FLOPs.")
        L.append("- The paper (16 frames, its Table 1): 8.2 s -> 4.2 s and 21.9 -> 10.5 TFLOPs end to end (~2x).\n")

    L.append("## How each number was obtained\n")
    st = res["stages"]
    if "vision" in st:
        v = st["vision"]
        L.append(f"- vision: the {v['layers']}-block tower measured on {v['frames_measured']} frames "
                 f"({_fmt_s(v['median_s'])} s), **scaled linearly x{v['scale']:g}** to {s.frames} frames "
                 f"(the tower runs per frame). Analytic {_fmt_f(v['analytic_flops_measured'])}FLOPs vs XLA "
                 f"{_fmt_f(v['xla_flops'])}FLOPs on the measured frames.")
    if "projector" in st:
        p = st["projector"]
        L.append(f"- projector: measured on all {p['tokens']:,} tokens; analytic {_fmt_f(p['analytic_flops'])}FLOPs, "
                 f"XLA {_fmt_f(p['xla_flops'])}FLOPs.")
    if "decode" in st:
        L.append(f"- video decode: PyAV, {s.frames} frames sampled from a synthetic {2 * s.frames}-frame "
                 f"H.264 clip at the tower's resolution ({st['decode']['resolution']} px).")
    if "token_dynamics" in res["compression"]:
        c = res["compression"]["token_dynamics"]
        L.append(f"- token dynamics: the `token_dynamics` compressor (k-means + cross-dynamics attention, "
                 f"config {c['config']}) on synthetic structured tokens [1, {s.frames}, ..., D]; "
                 f"{c['real_tokens']} real tokens out. FLOPs = k-means GEMMs at the maximum "
                 f"{c['config']['iters']} Lloyd steps ({_fmt_f(c['kmeans_flops_max'])}FLOPs, an upper bound: "
                 f"it stops when converged) + XLA's count of the attention ({_fmt_f(c['cda_xla_flops'])}FLOPs).")
    for path, p in res["prefill"].items():
        runs = "; ".join(f"{r['seq_len']:,} tokens ({r['frames']} frames): {_fmt_s(r['median_s'])} s "
                         f"({_rate(r['xla_flops'], r['median_s'])} by XLA's count), "
                         f"analytic {_fmt_f(r['analytic_flops'])}FLOPs causal / {_fmt_f(r['dense_flops'])}FLOPs dense, "
                         f"XLA {_fmt_f(r['xla_flops'])}FLOPs" for r in p["runs"])
        L.append(f"- prefill {path}: measured {runs}.")
        if p.get("extrapolated"):
            L.append(f"  - **{s.frames}-frame time extrapolated by FLOPs only**: measured {p['extrapolated_from_seq']:,}-token "
                     f"time x {p['extrapolation_factor']:.2f} (dense FLOPs ratio, {p['seq_len']:,} vs "
                     f"{p['extrapolated_from_seq']:,} tokens) = {_fmt_s(p['est_s'])} s.")
        for c in p.get("extrapolation_check", []):
            L.append(f"  - check of FLOP extrapolation: {c['from_seq']:,} -> {c['to_seq']:,} tokens predicted "
                     f"{_fmt_s(c['predicted_s'])} s, measured {_fmt_s(c['measured_s'])} s "
                     f"({100 * (c['measured_s'] / c['predicted_s'] - 1):+.0f}%).")
    if "full_compile" in res:
        fc = res["full_compile"]
        L.append(f"- full prefill of {fc['seq_len']:,} tokens compiled, not run: XLA counts {_fmt_f(fc['xla_flops'])}FLOPs "
                 f"and {((fc['xla_temp_bytes'] or 0) / 2 ** 30):.1f} GiB of temporaries (dense attention scores), "
                 f"which is why it is extrapolated here.")
    for path, gm in res["generate"].items():
        L.append(f"- generate {path}: {s.new_tokens} greedy steps after {gm['context']:,} cached tokens "
                 f"(random cache contents), {_fmt_s(gm['median_s'])} s; analytic {_fmt_f(gm['analytic_flops'])}FLOPs.")
    missing = [n for n in STAGES if n not in s.stages]
    if missing:
        L.append(f"- stages not run (0 s in the totals): {', '.join(missing)}.")
    L.append("- Prefill FLOPs in the tables are the causal analytic count (`td_jax.eval.budget.prefill_flops`); "
             "the implementation runs dense masked attention (XLA's count above).")
    L.append("\n`*` = extrapolated by FLOPs from a shorter measured prefill (see above).")
    if busy:
        L.append(f"\nRe-run on a quiet machine: `{env['command']}`")
    return "\n".join(L) + "\n"


def environment(command: str, load_start) -> dict:
    import jax
    return {"command": command, "cpus": os.cpu_count(), "platform": platform.platform(terse=True),
            "jax": jax.__version__, "load_start": [round(x, 1) for x in load_start],
            "load_end": [round(x, 1) for x in os.getloadavg()]}


def settings_from_flags() -> Settings:
    from td_jax.compressors import cfg_from_json
    td_cfg = cfg_from_json(FLAGS.td_cfg, "--td_cfg")
    return Settings(frames=FLAGS.frames, budget=FLAGS.budget, text_tokens=FLAGS.text_tokens,
                    new_tokens=FLAGS.new_tokens, full_frames=tuple(int(f) for f in FLAGS.full_frames),
                    vision_frames=FLAGS.vision_frames, max_prefill_tokens=FLAGS.max_prefill_tokens,
                    paths=tuple(FLAGS.paths), stages=tuple(FLAGS.stages), compile_full=FLAGS.compile_full,
                    llm=FLAGS.llm, vision=FLAGS.vision, select_layer=FLAGS.select_layer,
                    pool_stride=FLAGS.pool_stride, td_cfg=tuple(sorted(td_cfg.items())), dtype=FLAGS.dtype,
                    warmup=FLAGS.warmup, repeats=FLAGS.repeats, seed=FLAGS.seed)


def main(argv):
    del argv
    s = settings_from_flags()
    load_start = os.getloadavg()
    command = "python -m experiments.benchmarks.e2e_bench " + " ".join(sys.argv[1:])
    _log(f"e2e benchmark: {s.llm} + {s.vision}, {s.frames} frames, K={s.budget}, dtype {s.dtype}")
    res = run(s)
    summ = summarize(s, res)
    report = format_report(s, res, summ, environment(command.strip(), load_start))
    print(report)
    if FLAGS.out:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
        with open(FLAGS.out, "w") as f:
            f.write(report)
        with open(os.path.splitext(FLAGS.out)[0] + ".json", "w") as f:
            json.dump({"settings": dataclasses.asdict(s), "results": res, "summary": summ,
                       "environment": environment(command.strip(), load_start)}, f, indent=2, default=str)


if __name__ == "__main__":
    define_flags()
    app.run(main)
