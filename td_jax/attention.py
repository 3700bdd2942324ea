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
* At large K a query reads only its partners' trajectories: its own cluster's and those of
  its ``neighbours`` nearest clusters (``nearest_clusters``), so cost and memory grow as
  K·(neighbours+1)·T rather than K²·T; at K <= neighbours + 1 that is the dense attention.
* Everything is computed from the map through per-cluster sums, so permuting the
  base rows and the map ids together permutes the output rows the same way
  (equivariance to relabelling; tested).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from td_jax.dense import Dense

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
    # Per-(video, cluster, frame) sums over cells as segment sums: O(T·H·W), not O(T·H·W·K).
    ids = dynamics_map.astype(jnp.int32)
    seg = ((jnp.arange(b)[:, None, None, None] * k + ids) * t + jnp.arange(t)[None, :, None, None])
    seg = jnp.where((ids >= 0) & (ids < k), seg, b * k * t).reshape(-1)     # masked cells: dropped
    cy = jnp.broadcast_to(ys[:, None], (h, w))
    cx = jnp.broadcast_to(xs[None, :], (h, w))
    cell = jnp.stack([jnp.ones((h, w)), cy, cx, cy * cy, cx * cx], -1)       # [H, W, 5]
    cell = jnp.broadcast_to(cell, (b, t, h, w, 5)).reshape(-1, 5)
    sums = jax.ops.segment_sum(cell, seg, num_segments=b * k * t).reshape(b, k, t, 5)
    cnt = sums[..., 0]
    safe = jnp.maximum(cnt, 1.0)
    my, mx = sums[..., 1] / safe, sums[..., 2] / safe
    vy = sums[..., 3] / safe - my ** 2
    vx = sums[..., 4] / safe - mx ** 2
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
    return Dense(features, name=name, dtype=dtype, param_dtype=param_dtype,
                 kernel_init=nn.with_logical_partitioning(init, axes),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[-1],)))


def _masked_softmax(logits, kv_mask, axes):
    """Softmax of ``logits`` over ``axes`` where ``kv_mask`` (broadcast to logits) is True."""
    logits = jnp.where(kv_mask, logits, jnp.finfo(logits.dtype).min)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=axes)


def _residual_ffn(base, ctx, valid, dropout, mlp_ratio, deterministic, kw):
    """The block both attentions end with (call inside a compact method): the attention
    context ``ctx [B, K, D]`` through a zero-initialised output projection added to
    ``base [B, K, D]``, then a pre-norm FFN whose last layer is zero-initialised too (an
    untrained block returns the base); rows where ``valid [B, K]`` is False come out as zeros."""
    d = base.shape[-1]
    x = base.astype(kw["dtype"]) + _dense(d, ("heads", "embed"), "out", zero=True, **kw)(ctx)
    y = nn.LayerNorm(name="mlp_norm", **kw)(x)
    y = _dense(int(d * mlp_ratio), ("embed", "mlp"), "mlp_in", **kw)(y)
    y = nn.Dropout(dropout)(nn.gelu(y), deterministic=deterministic)
    x = x + _dense(d, ("mlp", "embed"), "mlp_out", zero=True, **kw)(y)
    return jnp.where(valid[..., None], x, 0.0).astype(base.dtype)


def _attend_residual_ffn(base, logits, kv_mask, val, valid, dropout, mlp_ratio, deterministic, dtype, kw):
    """Dense attention then :func:`_residual_ffn`: masked softmax of ``logits [B, heads, K,
    Nk]`` (``kv_mask [B, Nk]``) over ``val [B, Nk, heads, hd]``."""
    b, k, d = base.shape
    attn = _masked_softmax(logits, kv_mask[:, None, None, :], -1).astype(dtype)
    attn = nn.Dropout(dropout)(attn, deterministic=deterministic)
    ctx = jnp.einsum("bhqk,bkhd->bqhd", attn, val).reshape(b, k, d)
    return _residual_ffn(base, ctx, valid, dropout, mlp_ratio, deterministic, kw)


def nearest_clusters(feats: jax.Array, present: jax.Array, valid: jax.Array, m: int) -> jax.Array:
    """Each cluster's ``m`` attention partners: itself first, then the clusters whose
    trajectory centre (mean centre y, x and frame position over the frames where the cluster
    is present, in [-1, 1]) is nearest.

    feats [B, K, T, F] and present [B, K, T] from :func:`trajectory_features`, valid [B, K]
    -> idx [B, K, m] int32.  Absent or invalid clusters come last (their keys are masked).
    Ties are broken by index, so relabelling the clusters permutes the partners the same way
    unless two centres are exactly as far from a query at the m-th place.
    """
    t = present.shape[-1]
    pf = present.astype(jnp.float32)
    n = jnp.maximum(pf.sum(-1), 1.0)
    tpos = jnp.linspace(-1.0, 1.0, t) if t > 1 else jnp.zeros((1,))
    centre = jnp.stack([(feats[..., 2] * pf).sum(-1) / n, (feats[..., 3] * pf).sum(-1) / n,
                        (tpos * pf).sum(-1) / n], -1)                                  # [B, K, 3]
    d2 = jnp.sum((centre[:, :, None] - centre[:, None, :]) ** 2, -1)                   # [B, K, K]
    usable = valid & jnp.any(present, -1)
    d2 = jnp.where(usable[:, None, :], d2, jnp.inf)
    k = d2.shape[-1]
    d2 = jnp.where(jnp.eye(k, dtype=bool)[None], -1.0, d2)
    return jax.lax.top_k(-d2, m)[1].astype(jnp.int32)


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
    # Each base token reads the trajectories of its own cluster and of its ``neighbours``
    # nearest clusters (``nearest_clusters``): with K <= neighbours + 1 that is every cluster
    # (dense attention over all K·T trajectory tokens, as before); above, cost and memory grow
    # as K·(neighbours + 1)·T instead of K²·T (at 25% of a 32-frame LLaVA-OV video, K = 5,832,
    # dense logits alone would take 35 GB). -1 = always every cluster.
    neighbours: int = 15
    query_block: int = 128     # queries per step of the neighbour path (memory ~ block·(neighbours+1)·T·D)
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, base: jax.Array, dynamics_map: jax.Array, valid: jax.Array | None = None,
                 deterministic: bool = True) -> jax.Array:
        if self.neighbours < -1 or self.query_block < 1:
            raise ValueError(f"CrossDynamicsAttention: neighbours must be >= 0 (or -1 = all) and query_block >= 1, "
                             f"got neighbours={self.neighbours}, query_block={self.query_block}")
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
        bias = None
        if self.own_bias:
            bias = self.param("own_bias", nn.with_logical_partitioning(
                nn.initializers.constant(self.own_bias), ("heads",)), (self.num_heads,), self.param_dtype)
        if self.neighbours >= 0 and k > self.neighbours + 1:
            idx = nearest_clusters(feats, present, valid, self.neighbours + 1)           # [B, K, m]
            rng = None if deterministic or not self.dropout else self.make_rng("dropout")
            ctx = self._neighbour_context(q, key_.reshape(b, k, t, self.num_heads, hd),
                                          val.reshape(b, k, t, self.num_heads, hd), kv_mask.reshape(b, k, t),
                                          idx, bias, rng)
            x = _residual_ffn(base, ctx.reshape(b, k, d).astype(self.dtype), valid, self.dropout, self.mlp_ratio,
                              deterministic, kw)
            return x[0] if unbatched else x
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, key_) / math.sqrt(hd)
        if bias is not None:
            # Bonus for the query's own cluster's trajectory tokens (key index k'·T + t, own iff k' = q).
            own = (jnp.arange(k)[:, None] == jnp.repeat(jnp.arange(k), t)[None, :])      # [K, K*T]
            logits = logits + bias[None, :, None, None] * own[None, None].astype(logits.dtype)
        x = _attend_residual_ffn(base, logits, kv_mask, val, valid, self.dropout, self.mlp_ratio, deterministic,
                                 self.dtype, kw)
        return x[0] if unbatched else x

    def _neighbour_context(self, q, key_, val, kv_mask, idx, bias, rng):
        """Attention of each query over its partners' trajectory tokens only.

        q [B, K, heads, hd]; key_, val [B, K, T, heads, hd]; kv_mask [B, K, T]; idx [B, K, m]
        -> context [B, K, heads, hd].  Per video, the queries run ``query_block`` at a time
        (``lax.map``), so the gathered keys/values take block·m·T·D, never K·m·T·D.
        """
        b, k, t, heads, hd = key_.shape
        scale = 1.0 / math.sqrt(hd)
        keep = 1.0 - self.dropout

        def one_video(qv, kv, vv, mv, iv, vkey):
            def one_query(args):
                qi, qq, nb = args                                      # scalar, [heads, hd], [m]
                lg = jnp.einsum("hd,jthd->hjt", qq, kv[nb]) * scale   # [heads, m, T]
                if bias is not None:
                    lg = lg + bias[:, None, None].astype(lg.dtype) * (nb == qi)[None, :, None].astype(lg.dtype)
                attn = _masked_softmax(lg.reshape(heads, -1), mv[nb].reshape(1, -1), -1).reshape(lg.shape)
                if vkey is not None:
                    drop = jax.random.bernoulli(jax.random.fold_in(vkey, qi), keep, attn.shape)
                    attn = jnp.where(drop, attn / keep, 0.0)
                return jnp.einsum("hjt,jthd->hd", attn.astype(vv.dtype), vv[nb])
            return jax.lax.map(one_query, (jnp.arange(k), qv, iv), batch_size=min(self.query_block, k))

        if rng is None:
            return jax.vmap(lambda *a: one_video(*a, None))(q, key_, val, kv_mask, idx)
        return jax.vmap(one_video)(q, key_, val, kv_mask, idx, jax.random.split(rng, b))


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
