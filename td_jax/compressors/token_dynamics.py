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

import flax.linen as nn
import jax
import jax.numpy as jnp

from td_jax.attention import CrossDynamicsAttention
from td_jax.compressors.base import RNG_STREAM, Compressed, CompressorModule, check_tokens, register
from td_jax.dynamics import ADAPTIVE_METHODS, BASE_MODES, adaptive_token_dynamics, token_dynamics

VARIANTS = ("full", "base_only", "random_map", "random_base", "base_map")


def token_scale(tokens: jax.Array) -> jax.Array:
    """RMS token norm of each video: tokens [B, T, H, W, D] -> [B]."""
    return jnp.sqrt(jnp.mean(jnp.sum(jnp.square(tokens.astype(jnp.float32)), -1), axis=(1, 2, 3)))


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
    cluster ids ``[H·W·K]`` through a 2-layer MLP (the paper's ``MLP(Flatten(M))``)."""

    dim: int
    hidden: int = 0        # 0 = dim

    @nn.compact
    def __call__(self, dynamics_map: jax.Array, k: int) -> jax.Array:
        b, t, h, w = dynamics_map.shape
        onehot = (dynamics_map[..., None] == jnp.arange(k)).astype(jnp.float32).reshape(b, t, h * w * k)
        init = lambda axes: nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes)
        x = nn.Dense(self.hidden or self.dim, kernel_init=init((None, "mlp")), name="map_in")(onehot)
        return nn.Dense(self.dim, kernel_init=init(("mlp", "embed")), name="map_out")(nn.gelu(x))


class _TokenDynamicsBase(CompressorModule):
    """Fields: budget = K (or k_max when adaptive).

    adaptive: "" for fixed K, else one of "elbow" | "silhouette" | "threshold".
    k_min, threshold, elbow_tol: adaptive options (see td_jax.adaptive_token_dynamics).
    base: "raw" | "normalized" base means. iters, tol, refine_iters, sample_size, n_init:
    k-means options. num_heads, mlp_ratio, dropout: attention options.
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
    num_heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.0

    def _validate(self, tokens):
        check_tokens(tokens)
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.adaptive and self.adaptive not in ADAPTIVE_METHODS:
            raise ValueError(f"adaptive must be '' or one of {ADAPTIVE_METHODS}, got {self.adaptive!r}")
        if self.base not in BASE_MODES:
            raise ValueError(f"base must be one of {BASE_MODES}, got {self.base!r}")

    def _cluster(self, x, key, k):
        """x [T, H, W, D] -> TokenDynamics with K = k (k_max when adaptive) for one video."""
        common = dict(key=key, base=self.base, tol=self.tol, refine_iters=self.refine_iters,
                      sample_size=self.sample_size, n_init=self.n_init)
        if self.adaptive:
            return adaptive_token_dynamics(x, k, method=self.adaptive, k_min=self.k_min,
                                           threshold=self.threshold, elbow_tol=self.elbow_tol,
                                           iters=self.iters, **common)
        return token_dynamics(x, k, iters=self.iters, **common)

    @nn.compact
    def __call__(self, tokens: jax.Array, deterministic: bool = True) -> Compressed:
        """tokens [B, T, H, W, D] -> Compressed(tokens [B, K, D], mask [B, K], aux).
        base_map: the budget counts the T map tokens too, so K = budget - T."""
        self._validate(tokens)
        b, t = tokens.shape[:2]
        k = self.budget - t if self.variant == "base_map" else self.budget
        if k < 1:
            raise ValueError(f"base_map: budget {self.budget} leaves no clusters next to the {t} map tokens")
        key = self.make_rng(RNG_STREAM)
        k_cluster, k_ablate = jax.random.split(key)
        td = jax.vmap(lambda x, kk: self._cluster(x, kk, k))(tokens, jax.random.split(k_cluster, b))
        base, dmap, valid = td.base, td.dynamics_map, td.valid
        if self.variant == "random_map":
            dmap = random_map(k_ablate, dmap, valid)
        elif self.variant == "random_base":
            base = random_base(k_ablate, valid, base.shape[-1], token_scale(tokens)).astype(base.dtype)
        out, mask = base, valid
        if self.variant == "base_map":
            maps = MapTokens(base.shape[-1], name="map_tokens")(dmap, base.shape[1]).astype(base.dtype)
            out = jnp.concatenate([base, maps], axis=1)
            mask = jnp.concatenate([valid, jnp.ones(maps.shape[:2], bool)], axis=1)
        elif self.variant != "base_only":
            out = CrossDynamicsAttention(num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
                                         dropout=self.dropout, dtype=tokens.dtype,
                                         name="cross_dynamics")(base, dmap, valid, deterministic)
        return Compressed(tokens=out, mask=mask,
                          aux={"dynamics_map": dmap, "counts": td.counts, "inertia": td.inertia})


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
