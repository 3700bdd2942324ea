"""Cross-dynamics attention: motion from the dynamics map into the K base tokens.

Design (why it differs from the official code, see docs/ARCHITECTURE.md):

* The official layer feeds raw cluster ids (``map.float()``) through a Linear layer as
  queries. Cluster ids are arbitrary labels — renumbering the clusters changes the output
  — and the layer emits max(T, K) tokens.
* Here, the map is turned into **trajectory tokens**: for every cluster k and frame t,
  where the cluster is (occupancy, centroid, spread, velocity of its cells), plus a
  temporal position encoding, plus a projection of the cluster's own base token (so a
  trajectory knows *whose* it is by content, not by id). Queries are the K base tokens;
  keys/values are the K·T trajectory tokens (masked where the cluster is absent or
  invalid). The output is exactly K tokens, residual on the base, with zero-initialised
  output projections so an untrained layer returns the base unchanged.
* Everything is computed from the map through per-cluster one-hot sums, so permuting the
  base rows and the map ids together permutes the output rows the same way
  (equivariance to relabelling; tested).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

N_MOTION_FEATURES = 8


def trajectory_features(dynamics_map: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Where each cluster is, frame by frame.

    dynamics_map: [B, T, H, W] int32 (-1 = masked cell).
    Returns features [B, K, T, 8] = (present, area, centre y, centre x, spread y, spread x,
    velocity y, velocity x) with coordinates in [-1, 1], and present [B, K, T] bool.
    """
    b, t, h, w = dynamics_map.shape
    ys = jnp.linspace(-1.0, 1.0, h) if h > 1 else jnp.zeros((1,))
    xs = jnp.linspace(-1.0, 1.0, w) if w > 1 else jnp.zeros((1,))
    onehot = (dynamics_map[..., None] == jnp.arange(k)).astype(jnp.float32)      # [B,T,H,W,K]
    cnt = jnp.einsum("bthwk->bkt", onehot)
    safe = jnp.maximum(cnt, 1.0)
    my = jnp.einsum("bthwk,h->bkt", onehot, ys) / safe
    mx = jnp.einsum("bthwk,w->bkt", onehot, xs) / safe
    vy = jnp.einsum("bthwk,h->bkt", onehot, ys * ys) / safe - my ** 2
    vx = jnp.einsum("bthwk,w->bkt", onehot, xs * xs) / safe - mx ** 2
    present = cnt > 0
    # Velocity: centre shift from the previous frame where the cluster is in both.
    # (The first frame, and a single-frame video's only frame, has zero velocity.)
    both = present[..., 1:] & present[..., :-1]
    first = jnp.zeros(my.shape[:-1] + (1,), my.dtype)
    dy = jnp.concatenate([first, jnp.where(both, my[..., 1:] - my[..., :-1], 0.0)], -1)
    dx = jnp.concatenate([first, jnp.where(both, mx[..., 1:] - mx[..., :-1], 0.0)], -1)
    area = cnt / float(h * w)
    feats = jnp.stack([present.astype(jnp.float32), jnp.sqrt(area), my, mx,
                       jnp.sqrt(jnp.maximum(vy, 0.0)), jnp.sqrt(jnp.maximum(vx, 0.0)),
                       dy * max(t, 1) / 2.0, dx * max(t, 1) / 2.0], axis=-1)
    return feats, present


def sinusoid(positions: jax.Array, dim: int) -> jax.Array:
    """Sinusoidal encoding of float positions [...] -> [..., dim]."""
    half = dim // 2
    freq = jnp.exp(-math.log(10000.0) * jnp.arange(half) / max(half, 1))
    ang = positions[..., None] * freq
    enc = jnp.concatenate([jnp.sin(ang), jnp.cos(ang)], -1)
    return jnp.pad(enc, [(0, 0)] * (enc.ndim - 1) + [(0, dim - 2 * half)])


def _dense(features, axes, name, zero=False, dtype=jnp.float32, param_dtype=jnp.float32):
    init = nn.initializers.zeros_init() if zero else nn.initializers.lecun_normal()
    return nn.Dense(features, name=name, dtype=dtype, param_dtype=param_dtype,
                    kernel_init=nn.with_logical_partitioning(init, axes),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[-1],)))


def _attend_residual_ffn(base, logits, kv_mask, val, valid, dropout, mlp_ratio, deterministic, dtype, kw):
    """The block both attentions end with (call inside a compact method): masked softmax of
    ``logits [B, heads, K, Nk]`` over ``val [B, Nk, heads, hd]``, a zero-initialised output
    projection added to ``base [B, K, D]``, then a pre-norm FFN whose last layer is
    zero-initialised too (an untrained block returns the base); rows where ``valid [B, K]``
    is False come out as zeros."""
    b, k, d = base.shape
    logits = jnp.where(kv_mask[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
    attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(dtype)
    attn = nn.Dropout(dropout)(attn, deterministic=deterministic)
    ctx = jnp.einsum("bhqk,bkhd->bqhd", attn, val).reshape(b, k, d)
    x = base.astype(dtype) + _dense(d, ("heads", "embed"), "out", zero=True, **kw)(ctx)
    y = nn.LayerNorm(name="mlp_norm", **kw)(x)
    y = _dense(int(d * mlp_ratio), ("embed", "mlp"), "mlp_in", **kw)(y)
    y = nn.Dropout(dropout)(nn.gelu(y), deterministic=deterministic)
    x = x + _dense(d, ("mlp", "embed"), "mlp_out", zero=True, **kw)(y)
    return jnp.where(valid[..., None], x, 0.0).astype(base.dtype)


class CrossDynamicsAttention(nn.Module):
    """Queries from the base, keys/values from the map's trajectory tokens; K tokens out.

    Call: ``(base [B, K, D], dynamics_map [B, T, H, W] int32, valid [B, K] bool,
    deterministic=True) -> [B, K, D]``. Unbatched inputs ([K, D], [T, H, W], [K]) work too.
    Rows where ``valid`` is False come out as zeros.
    """

    num_heads: int = 8
    own_bias: float = 0.0      # initial per-head logit bonus for a query's own trajectory (learned)
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, base: jax.Array, dynamics_map: jax.Array, valid: jax.Array | None = None,
                 deterministic: bool = True) -> jax.Array:
        unbatched = base.ndim == 2
        if unbatched:
            base, dynamics_map = base[None], dynamics_map[None]
            valid = None if valid is None else valid[None]
        if base.ndim != 3 or dynamics_map.ndim != 4 or base.shape[0] != dynamics_map.shape[0]:
            raise ValueError(f"CrossDynamicsAttention expects base [B, K, D] and dynamics_map [B, T, H, W], "
                             f"got {tuple(base.shape)} and {tuple(dynamics_map.shape)}")
        b, k, d = base.shape
        t = dynamics_map.shape[1]
        if d % self.num_heads:
            raise ValueError(f"width D={d} is not divisible by num_heads={self.num_heads}")
        if valid is None:
            valid = jnp.ones((b, k), bool)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        hd = d // self.num_heads

        feats, present = trajectory_features(dynamics_map, k)                   # [B,K,T,F]
        tpos = sinusoid(jnp.arange(t, dtype=jnp.float32) / max(t - 1, 1) * 64.0, d)   # [T, D]
        h = _dense(d, (None, "mlp"), "motion_in", **kw)(feats.astype(self.dtype))
        h = _dense(d, ("mlp", "embed"), "motion_out", **kw)(nn.gelu(h))
        who = _dense(d, ("embed", "mlp"), "identity", **kw)(base.astype(self.dtype))  # [B,K,D]
        motion = h + who[:, :, None, :] + tpos.astype(self.dtype)[None, None]
        motion = nn.LayerNorm(name="motion_norm", **kw)(motion).reshape(b, k * t, d)
        kv_mask = (present & valid[:, :, None]).reshape(b, k * t)                # [B, K*T]

        q_in = nn.LayerNorm(name="query_norm", **kw)(base.astype(self.dtype))
        q = _dense(d, ("embed", "heads"), "query", **kw)(q_in).reshape(b, k, self.num_heads, hd)
        key_ = _dense(d, ("embed", "heads"), "key", **kw)(motion).reshape(b, k * t, self.num_heads, hd)
        val = _dense(d, ("embed", "heads"), "value", **kw)(motion).reshape(b, k * t, self.num_heads, hd)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, key_) / math.sqrt(hd)
        if self.own_bias:
            # Bonus for the query's own cluster's trajectory tokens (key index k'·T + t, own iff k' = q).
            own = (jnp.arange(k)[:, None] == jnp.repeat(jnp.arange(k), t)[None, :])      # [K, K*T]
            bias = self.param("own_bias", nn.with_logical_partitioning(
                nn.initializers.constant(self.own_bias), ("heads",)), (self.num_heads,), self.param_dtype)
            logits = logits + bias[None, :, None, None] * own[None, None].astype(logits.dtype)
        x = _attend_residual_ffn(base, logits, kv_mask, val, valid, self.dropout, self.mlp_ratio, deterministic,
                                 self.dtype, kw)
        return x[0] if unbatched else x


class MapValueAttention(nn.Module):
    """The paper's own cross-dynamics ("VQ-") attention: queries and keys from the base,
    values from a learned MLP of the map — no hand-made geometry.

    ``(base [B, K, D], dynamics_map [B, T, H, W] int32, valid [B, K] bool, deterministic)
    -> [B, K, D]``.  The paper writes ``M~ = MLP(Flatten(M))``, ``B' = MHA(Q = B·W_Q,
    K = B·W_K, V = M~·W_V)`` and leaves open how a ``[T, H, W]`` map becomes K value rows;
    here value row k is the MLP of cluster k's flattened occupancy ``(map == k) [T·H·W]``,
    which keeps the output equivariant to relabelling the clusters.  The MLP's input width
    is T·H·W, so a module is tied to one map size (as the released code's ``Linear(729, D)``).
    Pre-norm queries/keys, zero-initialised output and FFN (an untrained layer returns the
    base); rows where ``valid`` is False come out as zeros.
    """

    num_heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, base: jax.Array, dynamics_map: jax.Array, valid: jax.Array | None = None,
                 deterministic: bool = True) -> jax.Array:
        if base.ndim != 3 or dynamics_map.ndim != 4 or base.shape[0] != dynamics_map.shape[0]:
            raise ValueError(f"MapValueAttention expects base [B, K, D] and dynamics_map [B, T, H, W], "
                             f"got {tuple(base.shape)} and {tuple(dynamics_map.shape)}")
        b, k, d = base.shape
        if d % self.num_heads:
            raise ValueError(f"width D={d} is not divisible by num_heads={self.num_heads}")
        if valid is None:
            valid = jnp.ones((b, k), bool)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        hd = d // self.num_heads
        cells = dynamics_map.reshape(b, 1, -1)
        occupancy = (cells == jnp.arange(k)[None, :, None]).astype(self.dtype)           # [B, K, T*H*W]
        m = _dense(d, (None, "mlp"), "map_in", **kw)(occupancy)
        m = _dense(d, ("mlp", "embed"), "map_out", **kw)(nn.gelu(m))                      # [B, K, D]
        x_in = nn.LayerNorm(name="query_norm", **kw)(base.astype(self.dtype))
        q = _dense(d, ("embed", "heads"), "query", **kw)(x_in).reshape(b, k, self.num_heads, hd)
        key_ = _dense(d, ("embed", "heads"), "key", **kw)(x_in).reshape(b, k, self.num_heads, hd)
        val = _dense(d, ("embed", "heads"), "value", **kw)(m).reshape(b, k, self.num_heads, hd)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, key_) / math.sqrt(hd)
        return _attend_residual_ffn(base, logits, valid, val, valid, self.dropout, self.mlp_ratio, deterministic,
                                    self.dtype, kw)
