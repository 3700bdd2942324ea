"""Token budgets: "keep 0.07% of the tokens" or "16 tokens" -> each method's own knob.

    M = resolve_budget("0.07%", n_tokens=32 * 27 * 27)       # -> 16
    p = plan("pool", "1%", (32, 27, 27))                     # BudgetPlan
    out = p.compressor()(tokens, key=key, budget=p.budget)   # M static slots, p.real_tokens real

Every method gets the same number of static output slots ``M``; :func:`plan` turns the
budget into the knob that decides how many of those slots a method fills (frames kept,
pooled grid, ToMe rounds, pruning k, learned tokens, clusters, dominant/contextual
split) and reports that count, so tables compare like with like.  Every method except
``frames`` (whole frames only) and the frame-wise modes reaches any budget down to one
token: ``pool`` area-pools over time once one token per frame is too many (8 tokens of 16
frames = 8 boxes of 2 frames), ``vidtome`` finishes with ToMe rounds, ``dycoke`` /
``fastvid`` / ``holitom`` / ``visionzip`` split the budget itself.  A method that cannot
reach a budget raises ValueError saying why.  A slot count must be a whole number
(:func:`check_budget`; fractions of the video go through :func:`resolve_budget`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from td_jax.compressors import base as _base
from td_jax.compressors import dycoke as _dycoke
from td_jax.compressors import pool as _pool
from td_jax.compressors import tome as _tome
from td_jax.compressors import vidtome as _vidtome
from td_jax.compressors import visionzip as _visionzip
from td_jax.compressors.base import check_budget  # noqa: F401  (re-exported: slot counts are whole numbers)


def resolve_budget(spec: int | float | str, n_tokens: int) -> int:
    """Number of output tokens M for a budget ``spec`` over ``n_tokens`` input tokens.

    spec: an ``int`` is a token count ("16 tokens"); a ``float`` in (0, 1] is a fraction of
      ``n_tokens``; a string is either ``"<p>%"`` (percent), an integer count ``"16"``, or a
      fraction ``"0.01"``.  Fractions round to the nearest integer, at least 1.
    """
    if n_tokens < 1:
        raise ValueError(f"resolve_budget: n_tokens must be >= 1, got {n_tokens}")
    if isinstance(spec, bool):
        raise TypeError(f"budget must be an int, float or string, got bool {spec!r}")
    if isinstance(spec, str):
        s = spec.strip()
        try:
            if s.endswith("%"):
                return _fraction(float(s[:-1]) / 100.0, n_tokens, spec)
            if s.lstrip("+").isdigit():
                return _count(int(s), spec)
            return _fraction(float(s), n_tokens, spec)
        except ValueError as e:
            if "budget" in str(e):
                raise
            raise ValueError(f"cannot parse budget {spec!r}: use '0.07%', '16' or '0.01'") from None
    if isinstance(spec, int):
        return _count(spec, spec)
    if isinstance(spec, float):
        return _fraction(spec, n_tokens, spec)
    raise TypeError(f"budget must be an int, float or string, got {type(spec).__name__} {spec!r}")


def _count(m: int, spec) -> int:
    if m < 1:
        raise ValueError(f"budget {spec!r} must be at least 1 token")
    return m


def _fraction(f: float, n: int, spec) -> int:
    if not (0.0 < f <= 1.0) or math.isnan(f):
        raise ValueError(f"budget {spec!r} must be a fraction in (0, 1] (or a percentage in (0%, 100%])")
    return max(1, int(math.floor(f * n + 0.5)))


@dataclasses.dataclass(frozen=True)
class BudgetPlan:
    """A method set up for a budget.

    budget: static output slots M (pass as ``budget=``).
    cfg: config for ``td_jax.compressors.get(method, **cfg)`` (the user's plus the knob).
    real_tokens: real (mask True) tokens the method yields; an upper bound for adaptive K.
    knobs: the derived knob values, for reports (e.g. ``{"num_frames": 2}``).
    """

    method: str
    budget: int
    cfg: dict
    real_tokens: int
    n_tokens: int
    knobs: dict

    @property
    def kept_fraction(self) -> float:
        """real_tokens / n_tokens."""
        return self.real_tokens / self.n_tokens

    def compressor(self) -> _base.Compressor:
        """The configured compressor."""
        return _base.get(self.method, **self.cfg)


Planner = Callable[[int, tuple[int, int, int], dict], tuple[dict, int, dict]]
_PLANNERS: dict[str, Planner] = {}


def planner(*names: str):
    """Register a budget planner ``(M, (T, H, W), cfg) -> (cfg, real_tokens, knobs)``."""

    def deco(fn):
        for n in names:
            _PLANNERS[n] = fn
        return fn

    return deco


@planner("none")
def _plan_none(m, shape, cfg):
    t, h, w = shape
    n = t * h * w
    if m < n:
        raise ValueError(f"none keeps all {n} tokens; budget {m} is smaller")
    return cfg, n, {}


@planner("frames")
def _plan_frames(m, shape, cfg):
    t, h, w = shape
    f = cfg.get("num_frames")
    f = min(t, m // (h * w)) if f is None else int(f)
    if f < 1:
        raise ValueError(f"frames: budget {m} is below one frame of {h}x{w}={h * w} tokens")
    if f * h * w > m:
        raise ValueError(f"frames: num_frames={f} gives {f * h * w} tokens > budget {m}")
    return {**cfg, "num_frames": int(f)}, f * h * w, {"num_frames": int(f)}


def pool_grid_for(m: int, shape: tuple[int, int, int], *, pool_time: bool = True) -> tuple[int, int, int]:
    """Pooled grid (t', h', w') for a budget: space first, time only where needed.

    The largest spatial grid (aspect ratio kept, ``w' = round(h' W / H)``) with
    ``T * h' * w' <= M``; when even one token per frame is too many (T > M) and
    ``pool_time``, time is pooled to ``t' = M`` boxes of the whole frame.
    """
    t, h, w = shape
    best = None
    for oh in range(1, h + 1):
        ow = min(w, max(1, round(oh * w / h)))
        if t * oh * ow <= m and (best is None or oh * ow > best[0] * best[1]):
            best = (oh, ow)
    if best is not None:
        return t, best[0], best[1]
    if not pool_time:
        raise ValueError(f"pool: budget {m} is below one token per frame for T={t} frames "
                         f"(kind='bilinear' pools space only; kind='area' also pools time)")
    return m, 1, 1


@planner("pool")
def _plan_pool(m, shape, cfg):
    t, h, w = shape
    cfg = {"kind": "area", **cfg}
    explicit = any(cfg.get(k) is not None for k in ("stride", "out_hw", "out_t"))
    if explicit:
        ot, oh, ow = _pool.Pool(budget=m, **cfg).grid(t, h, w)
        if ot * oh * ow > m:
            raise ValueError(f"pool: {ot} time boxes x {oh}x{ow} = {ot * oh * ow} tokens > budget {m}")
    else:
        ot, oh, ow = pool_grid_for(m, shape, pool_time=cfg["kind"] == "area")
        cfg = {**cfg, "out_hw": (oh, ow)}
        if ot != t:
            cfg["out_t"] = ot
    return cfg, ot * oh * ow, {"grid": (ot, oh, ow)}


def _per_frame(name, m, t):
    per = m // t
    if per < 1:
        raise ValueError(f"{name}(mode='frame'): budget {m} is below one token per frame for T={t}")
    return per


@planner("tome")
def _plan_tome(m, shape, cfg):
    t, h, w = shape
    r, max_rounds = cfg.get("r"), cfg.get("max_rounds", _tome.DEFAULT_MAX_ROUNDS)
    if cfg.get("mode", "video") == "frame":
        per = min(_per_frame("tome", m, t), h * w)
        sched = _tome.merge_schedule(h * w, per, r, max_rounds)
        return cfg, t * per, {"per_frame": per, "rounds": len(sched), "r": sched}
    target = min(m, t * h * w)
    sched = _tome.merge_schedule(t * h * w, target, r, max_rounds)
    return cfg, target, {"rounds": len(sched), "r": sched}


@planner("prune")
def _plan_prune(m, shape, cfg):
    t, h, w = shape
    if cfg.get("mode", "video") == "frame":
        per = min(_per_frame("prune", m, t), h * w)
        return cfg, t * per, {"k_per_frame": per}
    k = min(m, t * h * w)
    return cfg, k, {"k": k}


@planner("token_learner")
def _plan_token_learner(m, shape, cfg):
    t, h, w = shape
    if cfg.get("mode", "frame") == "frame":
        per = _per_frame("token_learner", m, t)
        return cfg, t * per, {"tokens_per_frame": per}
    return cfg, m, {"tokens": m}


@planner("token_dynamics", "base_only", "random_map", "random_base")
def _plan_token_dynamics(m, shape, cfg):
    t, h, w = shape
    k = min(m, t * h * w)
    if k < m:
        raise ValueError(f"token dynamics: K={m} clusters exceed the {t * h * w} input tokens")
    return cfg, k, {"k_max" if cfg.get("adaptive") else "k": k}


@planner("base_map")
def _plan_base_map(m, shape, cfg):
    t, h, w = shape
    if m <= t:
        raise ValueError(f"base_map: a budget of {m} tokens leaves no room for K clusters next to the "
                         f"{t} map tokens (one per frame); give more than {t}")
    k = min(m - t, t * h * w)
    return cfg, k + t, {"k": k, "map_tokens": t}


@planner("vidtome")
def _plan_vidtome(m, shape, cfg):
    t, h, w = shape
    sched = _vidtome.VidToMe(budget=m, **cfg).schedule(t, h * w)
    knobs = {"local_ratio": round(sched["local_ratio"], 4), "global_ratio": round(sched["global_ratio"], 4),
             "tome_rounds": sched["tome_rounds"]}
    return cfg, min(m, t * h * w), knobs


@planner("dycoke")
def _plan_dycoke(m, shape, cfg):
    t, h, w = shape
    rate = cfg.get("prune_rate", _dycoke.DyCoke.prune_rate)
    heads = int((_dycoke.reference_frames(t) < 0).sum())
    survivors = heads * h * w + (t - heads) * int((1.0 - rate) * h * w)
    return cfg, min(m, survivors), {"ttm_kept": survivors}


@planner("fastvid")
def _plan_fastvid(m, shape, cfg):
    t, h, w = shape
    k = min(m, t * h * w)
    ctx = int(k * cfg.get("context_ratio", 0.4))
    return cfg, k, {"salient": k - ctx, "contextual": ctx}


@planner("visionzip")
def _plan_visionzip(m, shape, cfg):
    t, h, w = shape
    ratio = cfg.get("dominant_ratio", _visionzip.DEFAULT_DOMINANT_RATIO)
    if cfg.get("mode", "video") == "frame":
        per = min(_per_frame("visionzip", m, t), h * w)
        dom, ctx = _visionzip.split_counts(per, ratio)
        return cfg, t * per, {"dominant_per_frame": dom, "contextual_per_frame": ctx}
    k = min(m, t * h * w)
    dom, ctx = _visionzip.split_counts(k, ratio)
    return cfg, k, {"dominant": dom, "contextual": ctx}


@planner("holitom")
def _plan_holitom(m, shape, cfg):
    t, h, w = shape
    # an upper bound: when temporal merging leaves fewer than M candidates, all are kept
    return cfg, min(m, t * h * w), {}


def plan(method: str, spec: int | float | str, shape: tuple[int, int, int], **cfg: Any) -> BudgetPlan:
    """Set up ``method`` for a budget over videos of ``shape = (T, H, W)`` tokens.

    ``cfg`` are the method's other options (e.g. ``mode="frame"``).  Registered methods
    without a planner are assumed to fill exactly M slots.
    """
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"plan: shape must be (T, H, W) with positive sizes, got {shape}")
    _base.get(method, **cfg)  # unknown names / config keys fail here, with the known ones listed
    t, h, w = (int(v) for v in shape)
    n = t * h * w
    m = resolve_budget(spec, n)
    fn = _PLANNERS.get(method)
    if fn is None:
        new_cfg, real, knobs = dict(cfg), m, {}
    else:
        new_cfg, real, knobs = fn(m, (t, h, w), dict(cfg))
    return BudgetPlan(method=method, budget=m, cfg=new_cfg, real_tokens=int(real), n_tokens=n, knobs=knobs)
