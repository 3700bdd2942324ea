"""Token Dynamics as a compressor module, with the paper's ablations one name away.

    tokens [B, T, H, W, D] ──k-means (no params, RNG "compress")──▶ base [B, K, D], map [B, T, H, W]
                           ──CrossDynamicsAttention (params)──────▶ Compressed(tokens [B, K, D], mask = valid)

Registered names:
  token_dynamics  the full method (fixed K = budget, or adaptive with ``adaptive=...``)
  base_only       the base without the attention (the released code's default inference)
  random_map      the attention fed a map of random cluster ids
  random_base     the base replaced by Gaussian noise of the same scale, true map kept
  base_map        the paper's "base + map without the attention" rung: the K base tokens
                  followed by T map tokens, ``MLP(flatten(one-hot(map[t])))`` per frame
                  (K + T tokens, no cross-dynamics attention)
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from td_jax.attention import CrossDynamicsAttention, MapValueAttention
from td_jax.compressors.base import RNG_STREAM, Compressed, CompressorModule, check_tokens, register
from td_jax.dense import Dense
from td_jax.dynamics import ADAPTIVE_METHODS, BASE_MODES, adaptive_token_dynamics, token_dynamics

VARIANTS = ("full", "base_only", "random_map", "random_base", "base_map")


def token_scale(tokens: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """RMS token norm of each video over its real tokens: tokens [B, T, H, W, D], mask
    [B, T, H, W] bool or None -> [B] (0 for a video with no real token)."""
    sq = jnp.sum(jnp.square(tokens.astype(jnp.float32)), -1)
    if mask is None:
        return jnp.sqrt(jnp.mean(sq, axis=(1, 2, 3)))
    n = jnp.sum(mask, axis=(1, 2, 3))
    return jnp.sqrt(jnp.sum(jnp.where(mask, sq, 0.0), axis=(1, 2, 3)) / jnp.maximum(n, 1))


def random_map(key: jax.Array, dynamics_map: jax.Array, valid: jax.Array) -> jax.Array:
    """The ``random_map`` ablation: every unmasked cell of [B, T, H, W] gets a uniform random
    id among the video's valid clusters (valid [B, K]); masked cells stay -1."""
    n_valid = jnp.maximum(jnp.sum(valid, axis=-1), 1)                                  # [B]
    u = jax.random.uniform(key, dynamics_map.shape)
    ids = jnp.floor(u * n_valid[:, None, None, None]).astype(jnp.int32)
    return jnp.where(dynamics_map >= 0, ids, -1)


def random_base(key: jax.Array, valid: jax.Array, dim: int, scale: jax.Array) -> jax.Array:
    """The ``random_base`` ablation: Gaussian base [B, K, dim] whose rows have norm ~scale [B]
    (zero rows where valid [B, K] is False)."""
    noise = jax.random.normal(key, valid.shape + (dim,), jnp.float32) / jnp.sqrt(dim)
    return jnp.where(valid[..., None], noise * scale[:, None, None], 0.0)


class MapTokens(nn.Module):
    """The dynamics map fed to the LLM directly, one token per frame (no attention):
    ``dynamics_map [B, T, H, W] int32 (-1 = masked), K -> [B, T, D]``, each frame's one-hot
    cluster ids ``[H·W·K]`` through a 2-layer MLP (the paper's ``MLP(Flatten(M))``).  Its first
    kernel is ``[H·W·K, hidden]``: at LLaVA-OV size (27×27 cells, D = 896) 0.5 GB at K = 201
    (1% of 32 frames) but 6 GB at 10% and 15 GB at 25%, so the ablation is for small K."""

    dim: int
    hidden: int = 0        # 0 = dim

    @nn.compact
    def __call__(self, dynamics_map: jax.Array, k: int) -> jax.Array:
        b, t, h, w = dynamics_map.shape
        onehot = (dynamics_map[..., None] == jnp.arange(k)).astype(jnp.float32).reshape(b, t, h * w * k)
        init = lambda axes: nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes)
        x = Dense(self.hidden or self.dim, kernel_init=init((None, "mlp")), name="map_in")(onehot)
        return Dense(self.dim, kernel_init=init(("mlp", "embed")), name="map_out")(nn.gelu(x))


ATTENTIONS = ("trajectory", "paper")
ATTENTION_FIELDS = ("attention", "num_heads", "mlp_ratio", "dropout", "own_bias", "neighbours")
TRAJECTORY_FIELDS = ("own_bias", "neighbours")            # CrossDynamicsAttention only
ADAPTIVE_FIELDS = {"": (), "elbow": ("k_min", "elbow_tol"), "silhouette": ("k_min",),
                   "threshold": ("k_min", "threshold")}  # the adaptive options each method reads
VARIANT_NAMES = {"full": "token_dynamics"}               # registered name of a variant, when it differs


class _TokenDynamicsBase(CompressorModule):
    """Fields: budget = K (or k_max when adaptive).

    adaptive: "" for fixed K, else one of "elbow" | "silhouette" | "threshold".
    k_min, threshold, elbow_tol: adaptive options (see td_jax.adaptive_token_dynamics).
    base: "raw" | "normalized" base means. iters, tol, refine_iters, sample_size, n_init:
    k-means options. attention: "trajectory" (``CrossDynamicsAttention``: per-cluster
    trajectory tokens read off the map) or "paper" (``MapValueAttention``: values from a
    learned MLP of the map). num_heads, mlp_ratio, dropout, own_bias, neighbours: attention
    options (``neighbours``: a base token reads its own and its nearest clusters' trajectories,
    see ``CrossDynamicsAttention``).  An option the configuration never reads must keep its
    default (ValueError otherwise): base_only / base_map read no attention option,
    attention="paper" no own_bias / neighbours, fixed K no adaptive option, and each adaptive
    method only its own (elbow: k_min, elbow_tol; silhouette: k_min; threshold: k_min, threshold).

    Stages: :meth:`precompute` = k-means (+ the ablations' random map / random base, drawn
    there, so a stored stage holds one fixed draw per video) →
    ``{"base" [B,K,D], "dynamics_map" [B,T,H,W] int32, "valid" [B,K], "counts" [B,K],
    "inertia" [B]}``; the learned stage is the attention (or base_map's MapTokens).
    """

    variant: str = "full"
    adaptive: str = ""
    k_min: int = 2
    threshold: float = 0.15
    elbow_tol: float = 0.05
    base: str = "raw"
    iters: int = 50
    tol: float = 1e-4
    refine_iters: int = 1
    sample_size: int | None = None
    n_init: int = 2
    attention: str = "trajectory"
    num_heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    own_bias: float = 0.0
    neighbours: int = 15

    def _validate(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.adaptive and self.adaptive not in ADAPTIVE_METHODS:
            raise ValueError(f"adaptive must be '' or one of {ADAPTIVE_METHODS}, got {self.adaptive!r}")
        if self.base not in BASE_MODES:
            raise ValueError(f"base must be one of {BASE_MODES}, got {self.base!r}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        self._check_unused()

    def _unused(self) -> dict[str, str]:
        """The fields this configuration never reads -> the mode that leaves them unread."""
        name = VARIANT_NAMES.get(self.variant, self.variant)
        unused = {}
        if self.variant in ("base_only", "base_map"):
            unused.update(dict.fromkeys(ATTENTION_FIELDS, f"{name} (it has no attention)"))
        elif self.attention == "paper":
            unused.update(dict.fromkeys(TRAJECTORY_FIELDS, f"{name} with attention='paper'"))
        mode = f"adaptive={self.adaptive!r}" if self.adaptive else "fixed K (adaptive='')"
        for f in sorted({f for fs in ADAPTIVE_FIELDS.values() for f in fs} - set(ADAPTIVE_FIELDS[self.adaptive])):
            unused[f] = f"{name} with {mode}"
        return unused

    def _check_unused(self):
        """An option the configuration never reads must keep its default: never silently ignored."""
        skip = ("budget", "variant", "parent", "name")
        fields = [f for f in dataclasses.fields(_TokenDynamicsBase) if f.name not in skip]
        unused = self._unused()
        used = ", ".join(f.name for f in fields if f.name not in unused)
        for f in fields:
            if f.name in unused and getattr(self, f.name) != f.default:
                raise ValueError(f"{f.name}={getattr(self, f.name)!r} is not used by {unused[f.name]}; "
                                 f"leave it at its default {f.default!r} (this configuration uses: {used})")

    def scale_equivariant(self, inputs: frozenset = frozenset()) -> bool:
        """The raw-mean base (and base_only's / random_base's output) scales with the tokens; the
        normalized base does not."""
        del inputs
        return self.base == "raw"

    def _k(self, t: int) -> int:
        """Clusters: the budget, less base_map's T map tokens."""
        k = self.budget - t if self.variant == "base_map" else self.budget
        if k < 1:
            raise ValueError(f"base_map: budget {self.budget} leaves no clusters next to the {t} map tokens")
        return k

    def _cluster(self, x, key, k, mask):
        """x [T, H, W, D] -> TokenDynamics with K = k (k_max when adaptive) for one video."""
        common = dict(key=key, base=self.base, tol=self.tol, refine_iters=self.refine_iters,
                      sample_size=self.sample_size, n_init=self.n_init, mask=mask)
        if self.adaptive:
            return adaptive_token_dynamics(x, k, method=self.adaptive, k_min=self.k_min,
                                           threshold=self.threshold, elbow_tol=self.elbow_tol,
                                           iters=self.iters, **common)
        return token_dynamics(x, k, iters=self.iters, **common)

    def precompute(self, tokens: jax.Array, mask: jax.Array | None = None) -> dict[str, jax.Array]:
        """The parameter-free stage (see the class docstring); ``mask [B,T,H,W]`` or ``[B,T]``
        bool marks real tokens (padded cells get map id -1 and never reach a cluster)."""
        self._validate()
        check_tokens(tokens)
        b, t, h, w = tokens.shape[:4]
        if mask is not None:
            mask = jnp.asarray(mask).astype(bool)
            if mask.shape == (b, t):
                mask = jnp.broadcast_to(mask[:, :, None, None], (b, t, h, w))
            if mask.shape != (b, t, h, w):
                raise ValueError(f"mask must be [B, T, H, W] = {(b, t, h, w)} or [B, T], got {tuple(mask.shape)}")
        k = self._k(t)
        key = self.make_rng(RNG_STREAM)
        k_cluster, k_ablate = jax.random.split(key)
        keys = jax.random.split(k_cluster, b)
        if mask is None:
            td = jax.vmap(lambda x, kk: self._cluster(x, kk, k, None))(tokens, keys)
        else:
            td = jax.vmap(lambda x, kk, m: self._cluster(x, kk, k, m))(tokens, keys, mask)
        base, dmap, valid = td.base, td.dynamics_map, td.valid
        if self.variant == "random_map":
            dmap = random_map(k_ablate, dmap, valid)
        elif self.variant == "random_base":
            base = random_base(k_ablate, valid, base.shape[-1], token_scale(tokens, mask)).astype(base.dtype)
        return {"base": base, "dynamics_map": dmap.astype(jnp.int32), "valid": valid, "counts": td.counts,
                "inertia": td.inertia}

    def stage_spec(self, num_frames: int) -> dict:
        """The k-means (and ablation draw) settings: the variants with the same clustering share
        a stage (token_dynamics, base_only, base_map and either attention at the same K)."""
        keep = ("adaptive", "k_min", "threshold", "elbow_tol", "base", "iters", "tol", "refine_iters", "sample_size",
                "n_init")
        spec = {"stage": "kmeans", "k": self._k(num_frames), **{f: getattr(self, f) for f in keep}}
        if self.variant in ("random_map", "random_base"):
            spec["ablation"] = self.variant
        return spec

    def apply_precomputed(self, precomputed: dict[str, jax.Array], deterministic: bool = True) -> Compressed:
        """The learned stage (attention / MapTokens) on :meth:`precompute`'s arrays."""
        return self(None, deterministic, precomputed=precomputed)

    @nn.compact
    def __call__(self, tokens: jax.Array | None = None, deterministic: bool = True, mask: jax.Array | None = None,
                 *, precomputed: dict[str, jax.Array] | None = None) -> Compressed:
        """tokens [B, T, H, W, D] (or ``precomputed`` stage arrays) -> Compressed(tokens [B, M, D],
        mask [B, M], aux).  M = budget; base_map: the budget counts the T map tokens, K = budget - T."""
        self._validate()
        if precomputed is None:
            precomputed = self.precompute(tokens, mask)
        missing = sorted({"base", "dynamics_map", "valid"} - set(precomputed))
        if missing:
            raise ValueError(f"precomputed token-dynamics arrays lack {missing} (have {sorted(precomputed)})")
        base = precomputed["base"]
        dmap = precomputed["dynamics_map"].astype(jnp.int32)
        valid = precomputed["valid"].astype(bool)
        aux = {"dynamics_map": dmap, **{n: precomputed[n] for n in ("counts", "inertia") if n in precomputed}}
        out, out_mask = base, valid
        if self.variant == "base_map":
            maps = MapTokens(base.shape[-1], name="map_tokens")(dmap, base.shape[1]).astype(base.dtype)
            out = jnp.concatenate([base, maps], axis=1)
            # a frame's map token is real when the frame has a clustered (real) cell
            out_mask = jnp.concatenate([valid, jnp.any(dmap >= 0, axis=(2, 3))], axis=1)
        elif self.variant != "base_only":
            if self.attention == "paper":
                out = MapValueAttention(num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, dropout=self.dropout,
                                        dtype=base.dtype, name="map_value_attention")(base, dmap, valid, deterministic)
            else:
                out = CrossDynamicsAttention(num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
                                             dropout=self.dropout, own_bias=self.own_bias, neighbours=self.neighbours,
                                             dtype=base.dtype,
                                             name="cross_dynamics")(base, dmap, valid, deterministic)
        return Compressed(tokens=out, mask=out_mask, aux=aux)


@register("token_dynamics")
class TokenDynamicsCompressor(_TokenDynamicsBase):
    variant: str = "full"


@register("base_only")
class BaseOnlyCompressor(_TokenDynamicsBase):
    variant: str = "base_only"


@register("random_map")
class RandomMapCompressor(_TokenDynamicsBase):
    variant: str = "random_map"


@register("random_base")
class RandomBaseCompressor(_TokenDynamicsBase):
    variant: str = "random_base"


@register("base_map")
class BaseMapCompressor(_TokenDynamicsBase):
    variant: str = "base_map"
