r"""The paper's claims in miniature, end to end: one command from an empty machine to results/.

    python -m launch.motion_qa --config=experiments/motion_qa.py --results_dir=results

Stages (progress is printed as it goes):

1. **Benchmark.** Builds the TFDS ``moving_shapes_qa`` config if it is not prepared yet.
2. **Frozen tokens, once.** Every video goes through the fixed patch embedding
   (``td_jax.data.patch_embed``): ``frames [T, R, R, 3] -> tokens [T, h, w, D]``.
3. **Compression, once per video.** The parameter-free stage of every arm runs once per
   video with a fixed key, through the library: ``td_jax.token_dynamics`` /
   ``td_jax.adaptive_token_dynamics`` (base [K, D], dynamics map [T, h, w], valid [K]) and
   the registered ``tome`` / ``prune`` / ``pool`` / ``frames`` compressors at budgets from
   ``td_jax.compressors.budget.plan``.  Arms therefore differ only in compression.
4. **Train + evaluate each arm** in-process: the tiny Qwen2-style decoder
   (``td_jax.models.llm.Qwen2LM``), a learned video newline, and the arm's trainable
   compressor part: ``CrossDynamicsAttention`` on the cached base + map (token_dynamics,
   random_map, random_base — the ablations transform the cached base/map exactly as the
   registered compressors do), ``MapTokens`` next to the base (base_map: the ladder's
   "base + map without the attention"), ``token_learner`` on all tokens, or nothing
   (base_only, tome, prune, pool, frames; ``none`` feeds all tokens).  The target is the
   option's words (``data.answer_format="text"``); the test scores each option's
   likelihood.  ``train.curriculum`` ("direction:600") draws only those families first.
   Compiled steps are shared across seeds (and across all slot-only arms of one shape).
   Adaptive-K arms evaluate the fixed-K arm's weights with K chosen per video (k_max =
   the budget).
5. **Report**: ``results/motion_qa.json`` (+ ``_meta.json``), ``motion_qa.md`` and the
   plots, through ``td_jax.eval.report``.

Caching differs from the library's in-model compressors in one way: the k-means / ToMe
key is fixed per video (the in-model compressors draw a fresh key each training step).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "experiments/motion_qa.py", "Experiment config (ml_collections).",
                                lock_config=True)
flags.DEFINE_string("results_dir", "results", "Where the JSON, markdown table and plots go.")
flags.DEFINE_string("readme", "", "Also write the results block into this README (between its motion_qa markers).")
flags.DEFINE_bool("report_only", False, "Train nothing: rewrite results_dir/motion_qa.md, the accuracy plot and "
                  "_meta.json's target checks from motion_qa.json (and the README block with --readme).")

SLOT_METHODS = ("tome", "prune", "pool", "frames")
DYNAMICS_METHODS = ("token_dynamics", "base_only", "random_map", "random_base", "base_map")


LOG_SECONDS = 60.0   # training also prints progress at least this often (the all-token arm is ~20 s per step)


def log(msg: str) -> None:
    print(f"[motion_qa {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- config


def effective(config) -> dict:
    """Plain-dict settings with ``config.full`` overrides applied."""
    c = config.to_dict()
    if c["full"]:
        o = c["full_overrides"]
        c["train"]["steps"], c["train"]["none_steps"] = o["train_steps"], o["none_steps"]
        c["data"]["train_examples"], c["data"]["eval_examples"] = o["train_examples"], o["eval_examples"]
    c["workdir"] = c["workdir"] or "/tmp/td_jax_motion_qa"
    c["data"]["data_dir"] = c["data"]["data_dir"] or os.path.join(c["workdir"], "tfds")
    if c["data"]["answer_format"] not in ("letter", "text"):
        raise ValueError(f"config.data.answer_format must be 'letter' or 'text', got {c['data']['answer_format']!r}")
    if c["data"]["answer_format"] == "letter" and not c["data"]["list_options"]:
        raise ValueError("config.data.answer_format='letter' needs config.data.list_options=True")
    if c["budget"] < 1:
        raise ValueError(f"config.budget must be >= 1, got {c['budget']}")
    for k in ("steps", "none_steps", "batch_size", "none_batch_size", "eval_batch_size", "log_every", "steps_per_call",
              "none_microbatches"):
        if c["train"][k] < 1:
            raise ValueError(f"config.train.{k} must be >= 1, got {c['train'][k]}")
    if c["train"]["none_batch_size"] % c["train"]["none_microbatches"]:
        raise ValueError(f"config.train.none_batch_size={c['train']['none_batch_size']} is not divisible by "
                         f"config.train.none_microbatches={c['train']['none_microbatches']}")
    if c["model"]["hidden_size"] % c["model"]["cross_heads"]:
        raise ValueError(f"config.model.hidden_size={c['model']['hidden_size']} is not divisible by "
                         f"config.model.cross_heads={c['model']['cross_heads']}")
    return c


# ----------------------------------------------------------------------------- stage 1-2: data


def prepare_benchmark(c: dict):
    """The TFDS builder of ``c['data']['tfds_name']``, built first if absent."""
    import tensorflow_datasets as tfds
    import td_jax.data.moving_shapes_qa  # noqa: F401  (registers the builder)

    builder = tfds.builder(c["data"]["tfds_name"], data_dir=c["data"]["data_dir"])
    if not builder.is_prepared():
        t0 = time.time()
        log(f"building {c['data']['tfds_name']} in {c['data']['data_dir']} (once)")
        builder.download_and_prepare()
        log(f"built in {time.time() - t0:.0f}s")
    return builder


def load_split(c: dict, split: str, limit: int, tok) -> dict[str, Any]:
    """Frames, text arrays and labels of the first ``limit`` examples of ``split`` (0 = all)."""
    from td_jax.data import pipeline
    from td_jax.data import tokenizer as tok_lib

    src = dict(source="tfds", tfds_name=c["data"]["tfds_name"], data_dir=c["data"]["data_dir"])
    fmt, max_len, listed = c["data"]["answer_format"], c["data"]["max_text_len"], c["data"]["list_options"]
    cols: dict[str, list] = {k: [] for k in ("frames", "input_ids", "attention_mask", "loss_mask", "answer",
                                             "family", "question", "options", "id")}
    if fmt == "text":
        cols.update({f"opt_{k}": [] for k in ("input_ids", "attention_mask", "loss_mask")})
    keep = {f.strip() for f in c["data"]["families"].split(",") if f.strip()}
    for meta, frames in pipeline.iter_examples(src, split):
        if keep and meta["family"] not in keep:
            continue
        text = tok_lib.encode_mc(tok, meta["question"], meta["options"], meta["answer"], max_len, fmt, listed)
        if fmt == "text":   # every option as a scored continuation: [n_options, L]
            text.update({f"opt_{k}": v for k, v in
                         tok_lib.encode_mc_options(tok, meta["question"], meta["options"], max_len, listed).items()})
        cols["frames"].append(frames)
        for k, v in text.items():
            cols[k].append(v)
        cols["answer"].append(meta["answer"])
        cols["family"].append(meta["family_id"])
        cols["question"].append(meta["question"])
        cols["options"].append(meta["options"])
        cols["id"].append(meta["id"])
        if limit and len(cols["id"]) >= limit:
            break
    if not cols["id"]:
        raise ValueError(f"split {split!r} of {c['data']['tfds_name']} has no examples")
    out = {k: np.stack(v) for k, v in cols.items() if k not in ("question", "options", "id")}
    out["answer"] = out["answer"].astype(np.int32)
    out["family"] = out["family"].astype(np.int32)
    out.update(question=cols["question"], options=cols["options"], id=cols["id"])
    return out


def embed_fn(c: dict):
    """The frozen tower: ``frames [B, T, R, R, 3] uint8 -> tokens [B, T, h, w, D]`` (jitted)."""
    import jax
    from td_jax.data.patch_embed import make_patch_embed

    return jax.jit(make_patch_embed(c["tokens"]["patch_size"], c["model"]["hidden_size"], c["tokens"]["seed"]))


# ----------------------------------------------------------------------------- stage 3: compression cache


@dataclasses.dataclass(frozen=True)
class CacheSpec:
    """One parameter-free compression to run once per video.

    kind: "kmeans" (fixed K), "adaptive" (method in cfg) or "slots" (a registered compressor).
    """

    kind: str
    method: str
    budget: int
    cfg: tuple = ()

    @property
    def key(self) -> str:
        extra = "".join(f"_{k}{v}" for k, v in self.cfg)
        return f"{self.kind}_{self.method}_{self.budget}{extra}"


def cache_spec(arm: dict) -> CacheSpec:
    m = arm["method"]
    if m in DYNAMICS_METHODS:
        if arm["cfg"].get("adaptive"):
            return CacheSpec("adaptive", arm["cfg"]["adaptive"], arm["budget"])
        return CacheSpec("kmeans", "kmeans", arm["budget"])
    if m in SLOT_METHODS:
        return CacheSpec("slots", m, arm["budget"], tuple(sorted(arm["cfg"].items())))
    return CacheSpec("none", m, arm["budget"])


def slot_plan(spec: CacheSpec, grid: tuple[int, int, int]):
    """The budget plan of a slot method; methods that cannot reach the budget (frames,
    pool below one frame / one token per frame) run at their smallest feasible budget."""
    from td_jax.compressors import budget as budget_lib

    t, h, w = grid
    try:
        return budget_lib.plan(spec.method, spec.budget, grid, **dict(spec.cfg)), ""
    except ValueError as e:
        floor = {"frames": h * w, "pool": t}.get(spec.method)
        if floor is None:
            raise
        return budget_lib.plan(spec.method, floor, grid, **dict(spec.cfg)), (
            f"cannot reach {spec.budget} tokens ({e}); run at its minimum of {floor}")


def make_cache_fn(spec: CacheSpec, c: dict, grid: tuple[int, int, int]):
    """``fn(tokens [B, T, h, w, D], keys [B]) -> dict of per-video arrays`` (jitted)."""
    import jax
    import jax.numpy as jnp
    from td_jax import adaptive_token_dynamics, token_dynamics
    from td_jax.compressors import token_dynamics as td_ablation

    km = dict(c["kmeans"])
    km["sample_size"] = km["sample_size"] or None

    def scale_of(x):   # the RMS token norm random_base scales its noise to: x [T, H, W, D] -> []
        return td_ablation.token_scale(x[None])[0]

    if spec.kind == "kmeans":
        def one(x, key):
            td = token_dynamics(x, spec.budget, key=key, **km)
            return {"base": td.base, "dmap": td.dynamics_map.astype(jnp.int16), "valid": td.valid,
                    "scale": scale_of(x)}
        return jax.jit(jax.vmap(one))
    if spec.kind == "adaptive":
        def one(x, key):
            td = adaptive_token_dynamics(x, spec.budget, key=key, method=spec.method, k_min=c["adaptive"]["k_min"],
                                         elbow_tol=c["adaptive"]["elbow_tol"], **km)
            return {"base": td.base, "dmap": td.dynamics_map.astype(jnp.int16), "valid": td.valid,
                    "scale": scale_of(x)}
        return jax.jit(jax.vmap(one))
    if spec.kind == "slots":
        plan, _ = slot_plan(spec, grid)
        comp = plan.compressor()

        def fn(x, keys):
            out = comp(x, key=keys[0], budget=plan.budget)
            return {"slots": out.tokens, "slot_mask": out.mask}
        return fn
    raise ValueError(f"no cache for kind {spec.kind!r}")


def build_caches(specs: list[CacheSpec], split_data: dict, c: dict, split: str, embed) -> tuple[dict, dict]:
    """Runs every spec over every video of a split once; returns ({spec.key: arrays}, {spec.key: seconds})."""
    import jax

    frames = split_data["frames"]
    n, bs = len(frames), c["tokens"]["batch_size"]
    grid = token_grid(c, frames.shape[1:])
    fns = {s.key: make_cache_fn(s, c, grid) for s in specs}
    parts: dict[str, list] = {s.key: [] for s in specs}
    secs = {s.key: 0.0 for s in specs}
    base_key = jax.random.fold_in(jax.random.key(c["cache_seed"]), {"train": 0, "validation": 1, "test": 2}.get(split, 3))
    t_embed = 0.0
    for start in range(0, n, bs):
        idx = np.arange(start, min(start + bs, n))
        pad = bs - len(idx)
        fb = frames[np.concatenate([idx, np.full(pad, idx[-1])])] if pad else frames[idx]
        t0 = time.time()
        tokens = jax.block_until_ready(embed(fb))
        t_embed += time.time() - t0
        keys = jax.vmap(lambda i: jax.random.fold_in(base_key, i))(np.concatenate([idx, np.full(pad, -1)]))
        for s in specs:
            t0 = time.time()
            out = jax.device_get(fns[s.key](tokens, keys))
            secs[s.key] += time.time() - t0
            parts[s.key].append({k: np.asarray(v)[: len(idx)] for k, v in out.items()})
        done = min(start + bs, n)
        if (start // bs) % 8 == 0 or done == n:
            log(f"  {split}: compressed {done}/{n} videos")
    secs["_embed"] = t_embed
    return ({k: {f: np.concatenate([p[f] for p in v]) for f in v[0]} for k, v in parts.items()}, secs)


def token_grid(c: dict, frame_shape: tuple) -> tuple[int, int, int]:
    t, r = frame_shape[0], frame_shape[1]
    p = c["tokens"]["patch_size"]
    if r % p:
        raise ValueError(f"frame size {r} px is not a multiple of config.tokens.patch_size={p}")
    return (int(t), r // p, r // p)


# ----------------------------------------------------------------------------- stage 4: model


def make_model_cls():
    """The arm model class (built lazily so importing this file does not import jax)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from td_jax import compressors
    from td_jax.compressors import token_dynamics as td_ablation
    from td_jax.attention import CrossDynamicsAttention
    from td_jax.data.patch_embed import patch_embed
    from td_jax.models.llm import Qwen2LM, init_cache
    from td_jax.models.vit import Projector
    from td_jax.models.vlm import splice, text_positions
    import td_jax.compressors.token_learner  # noqa: F401  (registers it)

    class MotionQAModel(nn.Module):
        """Visual slots of one arm spliced into a tiny Qwen2-style decoder.

        ``__call__(batch, deterministic) -> logits [B, L, V]`` (text-aligned, as VideoLLM).
        kind "slots": ``batch["slots"] [B, M, D]``, ``slot_mask [B, M]`` (cached compressor output);
        kind "dynamics": ``base [B, K, D]``, ``dmap [B, T, h, w]``, ``valid [B, K]``, ``scale [B]``
          → CrossDynamicsAttention (``variant`` "full" | "random_map" | "random_base"), or for
          ``variant`` "base_map" the projected base then T map tokens (no attention);
        kind "learner": ``frames [B, T, R, R, 3]`` → frozen patch embedding → TokenLearner;
        kind "full": ``frames`` → frozen patch embedding → all T·h·w tokens.
        """

        llm: Any
        kind: str
        variant: str = "full"
        budget: int = 8
        cross_heads: int = 4
        own_bias: float = 0.0
        learner_cfg: tuple = ()
        patch_size: int = 4
        patch_seed: int = 0
        video_newline: bool = True
        video_token_id: int = 4
        projector: str = "mlp2x_gelu"

        def project(self, x):
            """The trainable vision->LLM projector on compressed tokens [..., D] (LLaVA's kinds)."""
            return Projector(self.llm.hidden_size, kind=self.projector, name="projector")(x)

        def visual(self, batch, deterministic):
            d = self.llm.hidden_size
            if self.kind == "slots":
                return self.project(batch["slots"].astype(jnp.float32)), batch["slot_mask"].astype(bool)
            if self.kind == "dynamics":
                base, dmap, valid = batch["base"].astype(jnp.float32), batch["dmap"].astype(jnp.int32), batch["valid"]
                if self.variant == "random_map":      # the compressor's own ablation transforms
                    dmap = td_ablation.random_map(self.make_rng(compressors.RNG_STREAM), dmap, valid)
                elif self.variant == "random_base":
                    base = td_ablation.random_base(self.make_rng(compressors.RNG_STREAM), valid, base.shape[-1],
                                                   batch["scale"])
                elif self.variant not in ("full", "base_map"):
                    raise ValueError(f"unknown dynamics variant {self.variant!r}")
                base = jnp.where(valid[..., None], self.project(base), 0.0)
                if self.variant == "base_map":    # the ladder's "base + map without the attention"
                    maps = td_ablation.MapTokens(d, name="map_tokens")(dmap, base.shape[1])
                    return (jnp.concatenate([base, maps], axis=1),
                            jnp.concatenate([valid, jnp.ones(maps.shape[:2], bool)], axis=1))
                out = CrossDynamicsAttention(num_heads=self.cross_heads, own_bias=self.own_bias, name="cross_dynamics")(
                    base, dmap, valid, deterministic)
                return out, valid
            tokens = jax.lax.stop_gradient(patch_embed(batch["frames"], patch_size=self.patch_size, dim=d,
                                                       seed=self.patch_seed))
            if self.kind == "full":
                b = tokens.shape[0]
                return self.project(tokens.reshape(b, -1, d)), jnp.ones((b, tokens.shape[1] * tokens.shape[2] * tokens.shape[3]), bool)
            if self.kind == "learner":
                mod = compressors.get("token_learner", **dict(self.learner_cfg)).module(self.budget)
                out = mod.clone(parent=self, name="token_learner")(tokens, deterministic=deterministic)
                return jnp.where(out.mask[..., None], self.project(out.tokens), 0.0), out.mask
            raise ValueError(f"unknown model kind {self.kind!r}")

        def score_options(self, lm, slots, mask, batch):
            """Every option's answer log-likelihood ``[B, n]`` with the video + prompt run once.

            ``batch["opt_input_ids" / "opt_attention_mask" / "opt_loss_mask"] [B, n, L]`` are the
            options as "text" answers (``encode_mc_options``: the same prompt, then option i's
            words, loss 1.0 on them).  The prefix (prompt with the video spliced in) goes through
            the decoder once into a KV cache; each option's answer tokens then attend to it.
            Equal to ``sequence_logprob`` on the n full rows (tested), at 1/n of the prefix cost.
            """
            ids = batch["opt_input_ids"]
            b, n, L = ids.shape
            loss = batch["opt_loss_mask"] > 0
            prompt = batch["opt_attention_mask"].astype(bool)[:, 0] & ~loss[:, 0]      # [B, L]
            pids = ids[:, 0]
            placeholder = jnp.argmax(pids == self.video_token_id, axis=1)
            text = lm.embed(jnp.where(pids == self.video_token_id, 0, pids))
            emb, valid = splice(text, prompt, placeholder, slots, mask)                  # [B, E, D]
            e = emb.shape[1]
            kv_valid = jnp.concatenate([valid, jnp.zeros((b, L), bool)], axis=1)        # room for L answer tokens
            cache = init_cache(self.llm, b, e + L)
            positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
            h, layers = lm.decode(emb, positions, jnp.broadcast_to(jnp.arange(e), (b, e)), kv_valid, cache.layers)
            last = jnp.max(jnp.where(valid, jnp.arange(e)[None], -1), axis=1)
            first_logits = lm.logits(h[jnp.arange(b), last][:, None])                     # [B, 1, V]
            # each option's answer window: L tokens from its first target token
            start = jnp.argmax(loss, axis=-1)                                             # [B, n]
            idx = jnp.clip(start[..., None] + jnp.arange(L), 0, L - 1)                    # [B, n, L]
            ans = jnp.take_along_axis(ids, idx, axis=-1)
            ans_ok = jnp.take_along_axis(loss, idx, axis=-1) & (start[..., None] + jnp.arange(L) < L)
            rep = lambda x: jnp.repeat(x, n, axis=0)  # noqa: E731  [B, ...] -> [B*n, ...]
            layers = tuple((rep(k), rep(v)) for k, v in layers)
            ans, ans_ok = ans.reshape(b * n, L), ans_ok.reshape(b * n, L)
            n_prefix = rep(jnp.sum(valid, axis=1))
            kv_ans = jnp.concatenate([rep(valid), ans_ok], axis=1)
            h2, _ = lm.decode(lm.embed(ans), n_prefix[:, None] + jnp.arange(L), jnp.broadcast_to(e + jnp.arange(L), (b * n, L)),
                              kv_ans, layers)
            logits = jnp.concatenate([rep(first_logits), lm.logits(h2[:, :-1])], axis=1)  # predicts ans[:, t]
            lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
            tok = jnp.take_along_axis(lp, ans[..., None], axis=-1)[..., 0]
            return jnp.sum(jnp.where(ans_ok, tok, 0.0), axis=1).reshape(b, n)

        @nn.compact
        def __call__(self, batch, deterministic: bool = True):
            """Text-aligned logits ``[B, L, V]``; with ``opt_*`` option rows in ``batch``, the
            options' log-likelihoods ``[B, n]`` instead (:meth:`score_options`)."""
            slots, mask = self.visual(batch, deterministic)
            lm = Qwen2LM(self.llm, name="llm")
            b, _, d = slots.shape
            if self.video_newline:
                nl = self.param("image_newline", nn.with_logical_partitioning(nn.initializers.normal(d ** -0.5),
                                                                              ("embed",)), (d,), jnp.float32)
                slots = jnp.concatenate([slots, jnp.broadcast_to(nl, (b, 1, d))], axis=1)
                mask = jnp.concatenate([mask, jnp.ones((b, 1), bool)], axis=1)
            if "opt_input_ids" in batch:
                return self.score_options(lm, slots, mask, batch)
            ids = batch["input_ids"]
            L, S = ids.shape[1], slots.shape[1]
            placeholder = jnp.argmax(ids == self.video_token_id, axis=1)
            text = lm.embed(jnp.where(ids == self.video_token_id, 0, ids))
            emb, valid = splice(text, batch["attention_mask"].astype(bool), placeholder, slots, mask)
            e = emb.shape[1]
            positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
            h, _ = lm.decode(emb, positions, jnp.broadcast_to(jnp.arange(e), (b, e)), valid)
            h = jnp.take_along_axis(h, text_positions(placeholder, L, S)[..., None], axis=1)
            return lm.logits(h)

    return MotionQAModel


def model_inputs(kind: str) -> tuple[str, ...]:
    text = ("input_ids", "attention_mask", "loss_mask")
    return text + {"slots": ("slots", "slot_mask"), "dynamics": ("base", "dmap", "valid", "scale"),
                   "learner": ("frames",), "full": ("frames",)}[kind]


def arm_kind(arm: dict) -> tuple[str, str]:
    """(model kind, dynamics variant) of an arm."""
    m = arm["method"]
    if m == "base_only" or m in SLOT_METHODS:
        return "slots", "full"
    if m in DYNAMICS_METHODS:
        return "dynamics", {"token_dynamics": "full"}.get(m, m)
    if m == "token_learner":
        return "learner", "full"
    if m == "none":
        return "full", "full"
    raise ValueError(f"arm {arm['name']!r}: unsupported method {m!r}")


def llm_config(c: dict, vocab_size: int):
    from td_jax.models.configs import LLMConfig

    m = c["model"]
    return LLMConfig(vocab_size=int(vocab_size), hidden_size=m["hidden_size"], intermediate_size=m["intermediate_size"],
                     num_layers=m["num_layers"], num_heads=m["num_heads"], num_kv_heads=m["num_kv_heads"],
                     rope_theta=m["rope_theta"], tie_embeddings=bool(m["tie_embeddings"]))


# ----------------------------------------------------------------------------- training


class Runner:
    """Jitted init / train / eval functions, shared by every arm (and seed) with the same
    model and schedule."""

    def __init__(self, c: dict, tok):
        self.c, self.tok = c, tok
        self.model_cls = make_model_cls()
        self._fns: dict = {}
        self.option_ids = np.asarray(tok.option_ids, np.int32)

    def model(self, arm: dict, grid):
        kind, variant = arm_kind(arm)
        cfg = tuple(sorted(arm["cfg"].items())) if kind == "learner" else ()
        return self.model_cls(llm=llm_config(self.c, self.tok.vocab_size), kind=kind, variant=variant,
                              budget=arm["budget"], cross_heads=self.c["model"]["cross_heads"], learner_cfg=cfg,
                              own_bias=float(self.c["model"]["own_bias"]),
                              patch_size=self.c["tokens"]["patch_size"], patch_seed=self.c["tokens"]["seed"],
                              video_newline=self.c["model"]["video_newline"],
                              video_token_id=int(self.tok.video_token_id), projector=self.c["model"]["projector"])

    def optimizer(self, steps: int):
        import optax
        from td_jax.train import optim as optim_lib

        t = self.c["train"]

        def adamw(lr):
            sched = optim_lib.schedule(lr, steps, warmup_frac=t["warmup_frac"])
            return optax.adamw(sched, weight_decay=t["weight_decay"], mask=lambda p: _ndim_mask(p))

        def labels(params):
            return {k: _label_tree(v, "llm" if k in ("llm", "image_newline", "projector") else "compressor") for k, v in params.items()}

        return optax.chain(optax.clip_by_global_norm(t["clip_norm"]) if t["clip_norm"] else optax.identity(),
                           optax.multi_transform({"llm": adamw(t["lr"]), "compressor": adamw(t["compressor_lr"])},
                                                 labels))

    def microbatches(self, model) -> int:
        """Micro-batches per optimizer step: ``train.none_microbatches`` for the all-token
        model (its attention maps for a whole batch do not fit in memory), else 1."""
        return int(self.c["train"]["none_microbatches"]) if model.kind == "full" else 1

    def fns(self, model, steps: int):
        """(init, train_step, eval_step) for ``model`` trained ``steps`` steps (cached)."""
        key = (model, steps)
        if key in self._fns:
            return self._fns[key]
        import flax.linen as nn
        import jax
        import jax.numpy as jnp
        import optax
        from td_jax import compressors
        from td_jax.models.vlm import mc_logits, next_token_loss

        tx = self.optimizer(steps)
        option_ids = jnp.asarray(self.option_ids)

        @jax.jit
        def init(rng, batch):
            k1, k2 = jax.random.split(rng)
            params = nn.unbox(model.init({"params": k1, compressors.RNG_STREAM: k2}, batch)["params"])
            return params, tx.init(params)

        micro = self.microbatches(model)

        def forward_loss(p, batch, rng):
            """(mean next-token NLL, its metrics) of one (micro-)batch."""
            logits = model.apply({"params": p}, batch, deterministic=False, rngs={compressors.RNG_STREAM: rng})
            return next_token_loss(logits, batch["input_ids"], batch["loss_mask"])

        def nll_sum(p, batch, rng):
            """(summed next-token NLL, target-token count) of one micro-batch."""
            loss, m = forward_loss(p, batch, rng)
            return loss * m["num_target_tokens"], m["num_target_tokens"]

        def loss_and_grads(params, batch, rng):
            """The batch's mean next-token loss and its gradient; with ``micro`` > 1 summed over
            micro-batches (a ``lax.scan``), so only one micro-batch's activations are live —
            the same mean over all target tokens as one big batch."""
            if micro == 1:
                return jax.value_and_grad(lambda p: forward_loss(p, batch, rng)[0])(params)
            grad_fn = jax.value_and_grad(nll_sum, has_aux=True)
            parts = jax.tree.map(lambda x: x.reshape((micro, x.shape[0] // micro) + x.shape[1:]), batch)

            def acc(carry, inp):
                g_sum, l_sum, n_sum = carry
                part, i = inp
                (l, n), g = grad_fn(params, part, jax.random.fold_in(rng, i))
                return (jax.tree.map(jnp.add, g_sum, g), l_sum + l, n_sum + n), None
            zero = (jax.tree.map(jnp.zeros_like, params), jnp.zeros(()), jnp.zeros(()))
            (grads, total, n), _ = jax.lax.scan(acc, zero, (parts, jnp.arange(micro)))
            n = jnp.maximum(n, 1.0)
            return total / n, jax.tree.map(lambda g: g / n, grads)

        def one_step(carry, inp):
            params, opt_state = carry
            batch, rng = inp
            loss, grads = loss_and_grads(params, batch, rng)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        @functools.partial(jax.jit, donate_argnums=(0, 1))
        def train_step(params, opt_state, batches, rngs):
            """``batches``: arrays [S, B, ...] of S consecutive steps; ``rngs`` [S]; returns losses [S]."""
            (params, opt_state), losses = jax.lax.scan(one_step, (params, opt_state), (batches, rngs))
            return params, opt_state, losses

        @jax.jit
        def eval_step(params, batch, rng):
            """Option scores [B, n_options]: the letters' logits ("letter" format) or each
            option's sequence log-likelihood ("text" format; batch holds opt_* [B, n, L])."""
            if "opt_input_ids" not in batch:
                logits = model.apply({"params": params}, batch, rngs={compressors.RNG_STREAM: rng})
                return mc_logits(logits, batch["loss_mask"], option_ids)
            return model.apply({"params": params}, batch, rngs={compressors.RNG_STREAM: rng})

        self._fns[key] = (init, train_step, eval_step, jax.jit(tx.init))
        return self._fns[key]


def check_same_tree(params, init_params, label: str) -> None:
    """Raises ValueError unless ``init_params`` has the paths and shapes of ``params``."""
    import jax

    want = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in jax.tree_util.tree_leaves_with_path(params)}
    have = {jax.tree_util.keystr(k): tuple(np.shape(v)) for k, v in jax.tree_util.tree_leaves_with_path(init_params)}
    if want != have:
        diff = sorted((set(want.items()) ^ set(have.items())))[:6]
        raise ValueError(f"{label}: the warm-start weights do not fit this model (first differences, "
                         f"(path, shape): {diff})")


def _ndim_mask(params):
    import jax
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def _label_tree(tree, label):
    import jax
    return jax.tree.map(lambda _: label, tree)


def gather(arrays: dict, names: tuple[str, ...], idx: np.ndarray) -> dict:
    missing = [n for n in names if n not in arrays]
    if missing:
        raise KeyError(f"batch arrays {missing} are not available (have {sorted(arrays)})")
    return {n: arrays[n][idx] for n in names}


def parse_curriculum(spec: str, families: dict[str, int]) -> tuple[list[int], int]:
    """``"direction,order:600"`` -> (family ids [2 ints], 600 steps); "" -> ([], 0)."""
    if not spec:
        return [], 0
    fams, sep, n = spec.rpartition(":")
    names = [f.strip() for f in fams.split(",") if f.strip()]
    bad = [f for f in names if f not in families]
    if not sep or not names or not n.strip().isdigit() or bad:
        raise ValueError(f"config.train.curriculum {spec!r}: expected 'family[,family...]:steps' with families "
                         f"from {sorted(families)}" + (f" (unknown: {bad})" if bad else ""))
    return [families[f] for f in names], int(n)


def batch_order(n: int, batch_size: int, seed: int, *, family: np.ndarray | None = None,
                curriculum: tuple[list[int], int] = ([], 0), label: str = ""):
    """Endless example indices ``[batch_size]`` per step: seeded epochs without replacement;
    with ``curriculum = (family ids, N)`` the first N batches come only from those
    families (``family [n]``), then from every example."""
    first_fams, first_steps = curriculum
    pools = [np.arange(n)]
    if first_steps:
        sub = np.flatnonzero(np.isin(family, first_fams))
        if len(sub) < batch_size:
            raise ValueError(f"{label}: the curriculum's families have {len(sub)} training examples, "
                             f"fewer than the batch size {batch_size}")
        pools.insert(0, sub)
    rng = np.random.default_rng([seed, 7])
    pool = pools[0]
    order, pos, drawn = rng.permutation(pool), 0, 0
    while True:
        if first_steps and drawn == first_steps:      # curriculum over: every family from here on
            pool = pools[-1]
            order, pos = rng.permutation(pool), 0
        if pos + batch_size > len(order):
            order, pos = rng.permutation(pool), 0
        pos += batch_size
        drawn += 1
        yield order[pos - batch_size:pos]


def train_arm(runner: Runner, model, arrays: dict, *, steps: int, batch_size: int, seed: int, label: str,
              family: np.ndarray | None = None, curriculum: tuple[list[int], int] = ([], 0),
              init_params: Any = None) -> dict:
    """Trains one (arm, seed); returns params, losses and timings.  ``curriculum`` = (family
    ids, steps): the first steps draw only examples of those families (``family [N]``).
    ``init_params``: start from these weights (a warm start; fresh optimizer state) instead of
    a random init; their tree must match the model's (ValueError naming the difference)."""
    import jax

    init, train_step, _, _ = runner.fns(model, steps)
    names = model_inputs(model.kind)
    n = len(arrays["input_ids"])
    if n < batch_size:
        raise ValueError(f"{label}: {n} training examples, fewer than the batch size {batch_size}")
    batches_idx = batch_order(n, batch_size, seed, family=family, curriculum=curriculum, label=label)
    next_idx = lambda: next(batches_idx)  # noqa: E731

    t0 = time.time()
    params, opt_state = init(jax.random.key(seed), gather(arrays, names, np.arange(batch_size)))
    if init_params is not None:
        check_same_tree(params, init_params, label)
        params = jax.tree.map(lambda p: jax.numpy.array(p, copy=True), init_params)
        opt_state = runner.fns(model, steps)[3](params)
    step_key = jax.random.fold_in(jax.random.key(seed), 1)
    losses, first_step_s, log_every = [], None, runner.c["train"]["log_every"]
    chunk = 1 if model.kind in ("full", "learner") else max(1, runner.c["train"]["steps_per_call"])
    step, next_log, last_log = 0, log_every, time.time()
    while step < steps:
        s_n = min(chunk, steps - step)
        ts = time.time()
        idx = np.stack([next_idx() for _ in range(s_n)])
        batches = {k: v.reshape((s_n, batch_size) + v.shape[1:]) for k, v in gather(arrays, names, idx.reshape(-1)).items()}
        rngs = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(np.arange(step, step + s_n))
        params, opt_state, m = train_step(params, opt_state, batches, rngs)
        if first_step_s is None:
            jax.block_until_ready(m)
            first_step_s = time.time() - ts
        losses.append(m)
        step += s_n
        if step >= next_log or step == steps or time.time() - last_log > LOG_SECONDS:   # slow arms: by time too
            recent = float(np.mean(np.concatenate(jax.device_get(losses))[-log_every:]))
            log(f"  {label} step {step}/{steps} loss {recent:.4f} ({time.time() - t0:.0f}s)")
            next_log = step + log_every if step >= next_log else next_log
            last_log = time.time()
    losses = [float(x) for x in np.concatenate(jax.device_get(losses))]
    return {"params": params, "loss_first": float(np.mean(losses[: max(1, steps // 10)])),
            "loss_last": float(np.mean(losses[-max(1, steps // 10):])), "train_time_s": time.time() - t0,
            "first_step_s": first_step_s}


def evaluate_arm(runner: Runner, model, params, arrays: dict, *, seed: int) -> tuple[np.ndarray, float]:
    """(predicted option per example [N], seconds).  The all-token model evaluates in batches
    of ``train.none_batch_size`` (its attention over T·h·w tokens does not fit 128 at a time)."""
    import jax

    eval_step = _eval_fn_any(runner, model)[2]
    names = model_inputs(model.kind)
    if "opt_input_ids" in arrays:   # "text" answers: score every option's continuation
        names = tuple(n for n in names if n not in ("input_ids", "attention_mask", "loss_mask")) + (
            "opt_input_ids", "opt_attention_mask", "opt_loss_mask")
    bs = runner.c["train"]["none_batch_size"] if model.kind == "full" else runner.c["train"]["eval_batch_size"]
    n = len(arrays["input_ids"])
    key = jax.random.key(10_000 + seed)
    preds, t0 = [], time.time()
    for start in range(0, n, bs):
        idx = np.arange(start, start + bs)
        idx = np.minimum(idx, n - 1)
        scores = eval_step(params, gather(arrays, names, idx), key)
        preds.append(np.argmax(np.asarray(scores), -1)[: min(bs, n - start)])
    return np.concatenate(preds).astype(np.int32), time.time() - t0


def _eval_fn_any(runner: Runner, model):
    for (m, _), fns in runner._fns.items():
        if m == model:
            return fns
    return runner.fns(model, 1)


# ----------------------------------------------------------------------------- orchestration


def arm_arrays(arm: dict, split_data: dict, caches: dict) -> dict:
    """The arrays an arm's model reads, for one split."""
    kind, _ = arm_kind(arm)
    out = {k: split_data[k] for k in ("input_ids", "attention_mask", "loss_mask", "opt_input_ids",
                                      "opt_attention_mask", "opt_loss_mask") if k in split_data}
    if kind == "learner" or kind == "full":
        out["frames"] = split_data["frames"]
        return out
    cache = caches[cache_spec(arm).key]
    if arm["method"] == "base_only":
        out.update(slots=cache["base"], slot_mask=cache["valid"])
    elif kind == "dynamics":
        out.update(base=cache["base"], dmap=cache["dmap"], valid=cache["valid"], scale=cache["scale"])
    else:
        out.update(slots=cache["slots"], slot_mask=cache["slot_mask"])
    return out


def visual_tokens(arm: dict, arrays: dict, n_tokens: int) -> np.ndarray:
    """Real visual tokens per eval video fed to the LLM (the newline not counted)."""
    kind, _ = arm_kind(arm)
    n = len(arrays["input_ids"])
    if kind == "full":
        return np.full(n, n_tokens)
    if kind == "learner":
        return np.full(n, arm["budget"])
    mask = arrays["valid"] if kind == "dynamics" else arrays["slot_mask"]
    if arm["method"] == "base_map":       # K base tokens + one map token per frame
        return mask.sum(-1) + arrays["dmap"].shape[1]
    return mask.sum(-1)


def family_accuracy(preds: np.ndarray, answer: np.ndarray, family: np.ndarray, ids: dict[str, int]) -> dict:
    """Accuracy per family name; ``ids`` maps each reported name to its ``family_id``."""
    hit = preds == answer
    return {name: float(hit[family == i].mean()) if np.any(family == i) else float("nan")
            for name, i in ids.items()}


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summarise(arm: dict, runs: list[dict], tokens: np.ndarray, n_tokens: int, families: list[str], extra: dict) -> dict:
    acc_mean, acc_std = _mean_std([r["accuracy"] for r in runs])
    fam = {f: _mean_std([r["accuracy_by_family"][f] for r in runs]) for f in families}
    vt = float(tokens.mean())
    return {
        "name": arm["name"], "method": arm["method"], "cfg": arm["cfg"], "budget": arm["budget"],
        "visual_tokens": vt, "percent_tokens": 100.0 * vt / n_tokens, "n_tokens_full": n_tokens,
        "accuracy": acc_mean, "accuracy_std": acc_std,
        "accuracy_by_family": {f: m for f, (m, _) in fam.items()},
        "accuracy_by_family_std": {f: s for f, (_, s) in fam.items()},
        "seeds": [r["seed"] for r in runs],
        "tokdense": 100.0 * acc_mean / vt if vt else float("nan"),
        "per_seed": [{k: v for k, v in r.items() if k != "preds"} for r in runs],
        "train_time_s": float(np.sum([r["train_time_s"] for r in runs])),
        "eval_time_s": float(np.sum([r["eval_time_s"] for r in runs])),
        **extra,
    }


def run(config, results_dir: str) -> list[dict]:
    """The whole experiment; returns the arm summaries written to ``results_dir/motion_qa.json``."""
    import jax
    from experiments.motion_qa import get_arms
    from td_jax.data import tokenizer as tok_lib
    from td_jax.eval import report

    t_start = time.time()
    c = effective(config)
    arms = get_arms(config)
    log(f"{len(arms)} arms: {', '.join(a['name'] for a in arms)}")
    builder = prepare_benchmark(c)
    all_families = list(builder.info.metadata["families"])
    asked = list(builder.info.metadata.get("asked", all_families))
    keep = [f.strip() for f in c["data"]["families"].split(",") if f.strip()]
    bad = [f for f in keep if f not in asked]
    if bad:
        raise ValueError(f"config.data.families: {bad} not asked in {c['data']['tfds_name']} (it asks {asked})")
    families = [f for f in asked if not keep or f in keep]     # the reported columns
    family_ids = {f: all_families.index(f) for f in families}
    tok = tok_lib.make_tokenizer("word", 4)
    t0 = time.time()
    train = load_split(c, "train", c["data"]["train_examples"], tok)
    ev = load_split(c, c["data"]["eval_split"], c["data"]["eval_examples"], tok)
    grid = token_grid(c, train["frames"].shape[1:])
    n_tokens = int(np.prod(grid))
    log(f"loaded {len(train['id'])} train / {len(ev['id'])} {c['data']['eval_split']} videos "
        f"({time.time() - t0:.0f}s); tokens per video {grid[0]}x{grid[1]}x{grid[2]} = {n_tokens}, "
        f"budget {c['budget']} = {100 * c['budget'] / n_tokens:.3f}%")

    embed = embed_fn(c)
    train_specs = sorted({cache_spec(a) for a in arms if not a["eval_only_of"]} - {None}, key=lambda s: s.key)
    train_specs = [s for s in train_specs if s.kind != "none"]
    eval_specs = sorted({cache_spec(a) for a in arms} - {None}, key=lambda s: s.key)
    eval_specs = [s for s in eval_specs if s.kind != "none"]
    log(f"compressing every video once: {', '.join(s.key for s in eval_specs) or '(nothing to cache)'}")
    caches_train, secs_train = build_caches(train_specs, train, c, "train", embed)
    caches_eval, secs_eval = build_caches(eval_specs, ev, c, c["data"]["eval_split"], embed)
    notes = {s.key: slot_plan(s, grid)[1] for s in eval_specs if s.kind == "slots"}

    runner = Runner(c, tok)
    curriculum = parse_curriculum(c["train"]["curriculum"], family_ids)
    warm = warm_start_source(arms, c)
    summaries, params_by, preds_by, preds_all = [], {}, {}, {}
    for arm in sorted(arms, key=lambda a: (bool(a["eval_only_of"]), a["method"] == "none")):
        spec = cache_spec(arm)
        kind, _ = arm_kind(arm)
        model = runner.model(arm, grid)
        ev_arrays = arm_arrays(arm, ev, caches_eval)
        is_none = arm["method"] == "none"
        n_ev = len(ev["answer"])
        if is_none and c["train"]["none_eval_examples"]:   # its 4k-token prefill is ~1 s per option row
            n_ev = min(n_ev, c["train"]["none_eval_examples"])
            ev_arrays = {k: v[:n_ev] for k, v in ev_arrays.items()}
        ev_answer, ev_family = ev["answer"][:n_ev], ev["family"][:n_ev]
        steps = c["train"]["none_steps"] if is_none else c["train"]["steps"]
        bs = c["train"]["none_batch_size"] if is_none else c["train"]["batch_size"]
        runs = []
        for seed in arm["seeds"]:
            label = f"{arm['name']} seed {seed}"
            if arm["eval_only_of"]:
                src = params_by.get((arm["eval_only_of"], seed))
                if src is None:
                    raise ValueError(f"arm {arm['name']!r}: no trained weights of {arm['eval_only_of']!r} for seed {seed}")
                tr = {"params": src["params"], "train_time_s": 0.0, "first_step_s": 0.0,
                      "loss_first": src["loss_first"], "loss_last": src["loss_last"]}
            else:
                src = params_by[(warm, seed)] if is_none and warm else None
                log(f"training {label}: {steps} steps x {bs}" + (f", starting from {warm!r} seed {seed}" if src else ""))
                tr = train_arm(runner, model, arm_arrays(arm, train, caches_train), steps=steps, batch_size=bs,
                               family=train["family"], curriculum=([], 0) if src else curriculum,
                               seed=seed, label=label, init_params=src["params"] if src else None)
                params_by[(arm["name"], seed)] = tr
            preds, et = evaluate_arm(runner, model, tr["params"], ev_arrays, seed=seed)
            fam = family_accuracy(preds, ev_answer, ev_family, family_ids)
            acc = float(np.mean(preds == ev_answer))
            log(f"  {label}: accuracy {100 * acc:.1f}% (eval {et:.0f}s)")
            runs.append({"seed": int(seed), "accuracy": acc, "accuracy_by_family": fam, "train_time_s": tr["train_time_s"],
                         "first_step_s": tr["first_step_s"], "eval_time_s": et, "loss_first": tr["loss_first"],
                         "loss_last": tr["loss_last"], "preds": preds})
        preds_by[arm["name"]] = runs[0]["preds"]
        preds_all[arm["name"]] = [r["preds"] for r in runs]
        tokens = visual_tokens(arm, ev_arrays, n_tokens)
        extra = {"steps": steps, "batch_size": bs, "kind": kind, "eval_examples": n_ev,
                 "init_from": warm if is_none and warm else "",
                 "init_examples": (c["train"]["steps"] * c["train"]["batch_size"]) if is_none and warm else 0,
                 "eval_only_of": arm["eval_only_of"],
                 "cache_time_s": float(secs_train.get(spec.key, 0.0) + secs_eval.get(spec.key, 0.0)),
                 "note": notes.get(spec.key, "")}
        if spec.kind == "adaptive":
            extra["k_chosen"] = np.bincount(tokens.astype(int), minlength=arm["budget"] + 1).tolist()
        summaries.append(summarise(arm, runs, tokens, n_tokens, families, extra))
        os.makedirs(c["workdir"], exist_ok=True)
        with open(os.path.join(c["workdir"], "motion_qa_partial.json"), "w") as f:   # survives a crash later on
            json.dump(report._jsonable(summaries), f, indent=1)
    order = {a["name"]: i for i, a in enumerate(arms)}
    summaries.sort(key=lambda s: order[s["name"]])
    add_subset_accuracy(summaries, preds_all, ev["answer"])

    meta = {
        "dataset": c["data"]["tfds_name"], "train_examples": len(train["id"]), "eval_split": c["data"]["eval_split"],
        "eval_examples": len(ev["id"]), "token_grid": list(grid), "n_tokens": n_tokens, "budget": c["budget"],
        "budget_percent": 100.0 * c["budget"] / n_tokens, "families": families, "full": bool(c["full"]),
        "model": c["model"], "train": c["train"], "data": c["data"], "tokens": c["tokens"], "kmeans": c["kmeans"],
        "adaptive": c["adaptive"], "embed_time_s": secs_train.get("_embed", 0.0) + secs_eval.get("_embed", 0.0),
        "total_time_s": time.time() - t_start, "devices": [str(d) for d in jax.devices()[:1]],
        "cpu_count": os.cpu_count(),
    }
    os.makedirs(results_dir, exist_ok=True)
    meta["e2e_targets"] = e2e_targets(results_dir)
    meta["reference"] = reference_run(results_dir)
    example = pick_example(ev, caches_eval, arms, families)
    report.write_all(results_dir, summaries, meta, example=_example_payload(example, ev, caches_eval, preds_by, arms, c),
                     adaptive_k={s["name"]: s["k_chosen"] for s in summaries if "k_chosen" in s})
    log(f"done in {time.time() - t_start:.0f}s -> {results_dir}")
    return summaries


def warm_start_source(arms: list[dict], c: dict) -> str:
    """The arm whose trained weights the all-token arm starts from (``train.none_init_from``),
    or "" (a random init); ValueError if that arm does not train in this run for the
    all-token arm's seeds."""
    src = c["train"]["none_init_from"]
    none = [a for a in arms if a["method"] == "none"]
    if not src or not none:
        return ""
    by = {a["name"]: a for a in arms}
    if src not in by or by[src]["eval_only_of"] or by[src]["method"] == "none":
        raise ValueError(f"config.train.none_init_from={src!r}: the all-token arm starts from that arm's trained "
                         f"weights, so it must be a trained arm of this run (config.arms); trained arms here: "
                         f"{[a['name'] for a in arms if not a['eval_only_of'] and a['method'] != 'none']}")
    if arm_kind(by[src])[0] != "slots":
        raise ValueError(f"config.train.none_init_from={src!r}: only a slot arm (base_only, tome, prune, pool, "
                         f"frames) has the all-token model's weights (projector + decoder + newline)")
    missing = sorted(set(none[0]["seeds"]) - set(by[src]["seeds"]))
    if missing:
        raise ValueError(f"config.train.none_init_from={src!r}: it has no seed(s) {missing} of the all-token arm")
    return src


def add_subset_accuracy(summaries: list[dict], preds_all: dict, answer: np.ndarray) -> None:
    """When an arm (the all-token one) was scored on the first n < N eval videos only, give
    every arm ``accuracy_subset`` (mean over seeds) on those same n videos, and
    ``subset_examples = n``, so that comparisons with it are on the same questions."""
    n_sub = min((s["eval_examples"] for s in summaries), default=0)
    if not summaries or n_sub >= len(answer):
        return
    for s in summaries:
        s["subset_examples"] = int(n_sub)
        s["accuracy_subset"] = float(np.mean([np.mean(p[:n_sub] == answer[:n_sub]) for p in preds_all[s["name"]]]))


REFERENCE_DIR = "reference"


def reference_run(results_dir: str) -> dict | None:
    """The all-token reference from a separate run in ``results_dir/reference`` (its
    ``motion_qa.json`` and target check), or None when there is none."""
    from td_jax.eval import report

    paths = report.result_paths(os.path.join(results_dir, REFERENCE_DIR))
    if not (os.path.exists(paths["json"]) and os.path.exists(paths["meta"])):
        return None
    with open(paths["json"]) as f:
        arms = json.load(f)
    with open(paths["meta"]) as f:
        meta = json.load(f)
    none = next((a for a in arms if a["method"] == "none"), None)
    if none is None:
        return None
    check = next((r for r in report.target_checks(arms, meta) if r["target"].startswith(report.FULL_TARGET)), None)
    return {"dir": REFERENCE_DIR, "none": none, "check": check,
            "arms": {a["name"]: {k: a.get(k) for k in ("accuracy", "accuracy_subset", "seeds")} for a in arms},
            "total_time_s": meta.get("total_time_s")}


def pick_example(ev: dict, caches: dict, arms: list[dict], families: list[str]) -> int:
    """Index of the first eval video of the 'direction' family (else the first video)."""
    from td_jax.data.moving_shapes import FAMILIES

    hits = np.nonzero(ev["family"] == FAMILIES.index("direction"))[0] if "direction" in families else []
    return int(hits[0]) if len(hits) else 0


def _example_payload(i: int, ev: dict, caches: dict, preds_by: dict, arms: list[dict], c: dict) -> dict:
    dmap, k = None, None
    for a in arms:
        spec = cache_spec(a)
        if spec.kind == "kmeans" and spec.key in caches:
            dmap, k = caches[spec.key]["dmap"][i], spec.budget
            if spec.budget == c["budget"]:
                break
    return {"frames": ev["frames"][i], "dynamics_map": dmap, "k": k, "question": ev["question"][i],
            "options": ev["options"][i], "answer": int(ev["answer"][i]), "id": ev["id"][i],
            "predictions": {name: int(p[i]) for name, p in preds_by.items() if i < len(p)}}


def e2e_targets(results_dir: str) -> dict | None:
    """The efficiency targets of ``results_dir/e2e_bench.json`` (written by
    ``experiments/benchmarks/e2e_bench.py``), or None when it is absent."""
    path = os.path.join(results_dir, "e2e_bench.json")
    if not os.path.exists(path):
        return None
    from experiments.benchmarks import e2e_bench

    with open(path) as f:
        d = json.load(f)
    return e2e_bench.summarize(e2e_bench.Settings(**d["settings"]), d["results"])["targets"]


def rewrite_report(results_dir: str, readme: str = "") -> None:
    """Re-renders ``motion_qa.md`` and the target checks of ``motion_qa_meta.json`` from
    ``motion_qa.json`` with the current report code, and the README block if ``readme``."""
    from td_jax.eval import report

    paths = report.result_paths(results_dir)
    missing = [paths[k] for k in ("json", "meta") if not os.path.exists(paths[k])]
    if missing:
        raise FileNotFoundError(f"--report_only needs a finished run's results: missing {missing}")
    with open(paths["json"]) as f:
        arms = json.load(f)
    with open(paths["meta"]) as f:
        meta = json.load(f)
    meta["e2e_targets"] = e2e_targets(results_dir)
    meta["reference"] = reference_run(results_dir)
    report.write_report(results_dir, arms, meta)
    log(f"rewrote {paths['md']}, {paths['meta']} and {paths['plot']}")
    if readme:
        report.update_readme(readme, results_dir)
        log(f"updated {readme} from {paths['json']}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.report_only:
        run(FLAGS.config, FLAGS.results_dir)
    if FLAGS.report_only or FLAGS.readme:
        rewrite_report(FLAGS.results_dir, FLAGS.readme)


if __name__ == "__main__":
    app.run(main)
