"""A Qwen2-style decoder in flax.linen, with a KV cache and batched generation.

RMSNorm, rotary position embeddings (rotate-half convention, as Hugging Face), grouped-
query attention through ``jax.nn.dot_product_attention`` (fused GPU/TPU kernels apply),
SwiGLU MLP, optional tied embeddings.  Every parameter carries logical axis names.

Attention is driven by three arrays so that training, prefill and one-token decoding are
one code path:

* ``positions [B, S]`` — RoPE positions of the S new tokens;
* ``slots [B, S]`` — where each new token sits in the key/value sequence (its index in the
  sequence without a cache, its write index in the cache with one);
* ``kv_valid [B, S_kv]`` — which keys may be attended (text padding and masked visual
  slots are False).  A query at slot ``i`` sees key ``j`` iff ``kv_valid[j] and j <= i``.

Optional **memory** (``Memory(x [B, M, D], positions [B, M], slots [B, M])``): tokens that are
keys/values only.  Every layer projects them with its own input norm and ``k_proj``/``v_proj``
(RoPE at their positions) and writes them at their slots, but no layer computes a hidden
state for them, so they never attend to anything and cost ``O(M·D·kv)`` per layer instead of
``O(M²·D)``.  The video LLM uses it for ``visual_attention="kv_only"``.
"""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from td_jax.dense import Dense
from td_jax.models.configs import LLMConfig, as_dtype

Array = jax.Array


def _dense(features, names, *, use_bias, cfg_dtype, param_dtype, name, init_std=0.02):
    return Dense(
        features, use_bias=use_bias, dtype=cfg_dtype, param_dtype=param_dtype, name=name,
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(init_std), names),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[1:]))


class RMSNorm(nn.Module):
    """``x / rms(x) * scale`` computed in float32, as Qwen2RMSNorm.  x: [..., D]."""

    eps: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                           (x.shape[-1],), self.param_dtype)
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return (scale.astype(self.dtype) * y.astype(self.dtype))


def rope_cos_sin(positions: Array, head_dim: int, theta: float) -> tuple[Array, Array]:
    """cos, sin of shape [B, S, head_dim] for integer ``positions [B, S]`` (float32)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """x: [B, S, N, H]; cos/sin: [B, S, H].  Rotate-half RoPE."""
    half = x.shape[-1] // 2
    rot = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    c, s = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    return x * c + rot * s


def attention_mask(slots: Array, kv_valid: Array, key_slots: Array | None = None) -> Array:
    """[B, 1, S, N] bool: query at slot i sees the valid key at slot j iff j <= i.  Keys sit at
    slots 0..S_kv-1 in order (N = S_kv), or at ``key_slots [B, N]`` (``kv_valid`` read there)."""
    if key_slots is None:
        key_slots = jnp.broadcast_to(jnp.arange(kv_valid.shape[1]), kv_valid.shape)
    else:
        kv_valid = jnp.take_along_axis(kv_valid, key_slots, axis=1)
    return ((key_slots[:, None, :] <= slots[:, :, None]) & kv_valid[:, None, :])[:, None]


@flax.struct.dataclass
class Memory:
    """Key/value-only tokens for every layer (see the module docstring).

    x: [B, M, D] embeddings (the same for every layer); positions: [B, M] RoPE positions;
    slots: [B, M] their key/value slots (disjoint from the queries' slots).
    """

    x: Array
    positions: Array
    slots: Array


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE and an optional KV cache.

    x: [B, S, D] → [B, S, D]; ``cache`` is ``(k, v)`` each [B, S_max, KV, H] or None.
    ``memory``: a :class:`Memory` whose ``x`` is already normalised by the layer; its keys and
    values are written at ``memory.slots`` (into the cache, or into a buffer of
    ``kv_valid.shape[1]`` slots without one).
    """

    cfg: LLMConfig

    @nn.compact
    def __call__(self, x, positions, slots, kv_valid, cache=None, memory: Memory | None = None):
        cfg = self.cfg
        dt, pdt = as_dtype(cfg.dtype), as_dtype(cfg.param_dtype)
        B, S, _ = x.shape
        H, N, KV = cfg.dim_per_head, cfg.num_heads, cfg.num_kv_heads
        q_proj = _dense(N * H, ("embed", "heads"), use_bias=cfg.qkv_bias, cfg_dtype=dt, param_dtype=pdt, name="q_proj")
        k_proj = _dense(KV * H, ("embed", "kv"), use_bias=cfg.qkv_bias, cfg_dtype=dt, param_dtype=pdt, name="k_proj")
        v_proj = _dense(KV * H, ("embed", "kv"), use_bias=cfg.qkv_bias, cfg_dtype=dt, param_dtype=pdt, name="v_proj")
        q, k, v = q_proj(x), k_proj(x), v_proj(x)
        q, k, v = q.reshape(B, S, N, H), k.reshape(B, S, KV, H), v.reshape(B, S, KV, H)
        q = nn.with_logical_constraint(q, ("act_batch", "act_length", "act_heads", None))
        cos, sin = rope_cos_sin(positions, H, cfg.rope_theta)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        b_idx = jnp.arange(B)[:, None]
        writes = [(slots, k, v)]
        mask = None
        if memory is not None:
            M = memory.x.shape[1]
            km, vm = k_proj(memory.x).reshape(B, M, KV, H), v_proj(memory.x).reshape(B, M, KV, H)
            cm, sm = rope_cos_sin(memory.positions, H, cfg.rope_theta)
            writes.append((memory.slots, apply_rope(km, cm, sm), vm))
        if cache is not None:
            ck, cv = cache
            for sl, kk, vv in writes:
                ck = ck.at[b_idx, sl].set(kk.astype(ck.dtype))
                cv = cv.at[b_idx, sl].set(vv.astype(cv.dtype))
            k, v, cache = ck.astype(dt), cv.astype(dt), (ck, cv)
        elif memory is not None and kv_valid.shape[1] == S + writes[1][0].shape[1]:
            # Memory and queries fill the slots: keys in [memory; queries] order, the mask read
            # at each key's slot — the same attention as the buffer below (softmax does not
            # care about key order) without scattering M rows into it in every layer.
            mem_slots, mem_k, mem_v = writes[1]
            k, v = jnp.concatenate([mem_k.astype(dt), k], 1), jnp.concatenate([mem_v.astype(dt), v], 1)
            mask = attention_mask(slots, kv_valid, jnp.concatenate([mem_slots, slots], 1))   # keys [B, M + S]
        elif memory is not None:       # queries and memory laid out in one buffer of slots
            buf = jnp.zeros((B, kv_valid.shape[1], KV, H), dt)
            kb, vb = buf, buf
            for sl, kk, vv in writes:
                kb, vb = kb.at[b_idx, sl].set(kk.astype(dt)), vb.at[b_idx, sl].set(vv.astype(dt))
            k, v = kb, vb
        if mask is None:
            mask = attention_mask(slots, kv_valid)
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=cfg.attention_impl)
        out = out.reshape(B, S, N * H)
        out = _dense(cfg.hidden_size, ("heads", "embed"), use_bias=False, cfg_dtype=dt, param_dtype=pdt,
                     name="o_proj")(out)
        return out, cache


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)).  x: [B, S, D]."""

    cfg: LLMConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        dt, pdt = as_dtype(cfg.dtype), as_dtype(cfg.param_dtype)
        g = _dense(cfg.intermediate_size, ("embed", "mlp"), use_bias=False, cfg_dtype=dt, param_dtype=pdt, name="gate_proj")(x)
        u = _dense(cfg.intermediate_size, ("embed", "mlp"), use_bias=False, cfg_dtype=dt, param_dtype=pdt, name="up_proj")(x)
        h = nn.with_logical_constraint(jax.nn.silu(g) * u, ("act_batch", "act_length", "act_mlp"))
        return _dense(cfg.hidden_size, ("mlp", "embed"), use_bias=False, cfg_dtype=dt, param_dtype=pdt, name="down_proj")(h)


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)); x + mlp(norm(x))."""

    cfg: LLMConfig

    @nn.compact
    def __call__(self, x, positions, slots, kv_valid, cache=None, memory: Memory | None = None):
        cfg = self.cfg
        dt, pdt = as_dtype(cfg.dtype), as_dtype(cfg.param_dtype)
        norm = RMSNorm(cfg.rms_eps, dt, pdt, name="input_layernorm")
        if memory is not None:
            memory = memory.replace(x=norm(memory.x))
        h, cache = Attention(cfg, name="self_attn")(norm(x), positions, slots, kv_valid, cache, memory)
        x = x + h
        x = x + MLP(cfg, name="mlp")(RMSNorm(cfg.rms_eps, dt, pdt, name="post_attention_layernorm")(x))
        x = nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))
        return x, cache


@flax.struct.dataclass
class KVCache:
    """Per-layer keys/values plus bookkeeping, all per batch row.

    layers:   tuple of (k, v), each [B, S_max, KV, H]
    kv_valid: [B, S_max] bool, keys that may be attended
    length:   [B] int32, next write slot
    position: [B] int32, next RoPE position
    """

    layers: tuple
    kv_valid: Array
    length: Array
    position: Array


class Qwen2LM(nn.Module):
    """Qwen2-style causal LM.

    ``__call__(input_ids [B, L], attention_mask [B, L] | None) -> logits [B, L, V]``.
    Lower-level methods (``embed``, ``decode``, ``logits``) let the video LLM feed
    embeddings and drive the KV cache.
    """

    cfg: LLMConfig

    def setup(self):
        cfg = self.cfg
        dt, pdt = as_dtype(cfg.dtype), as_dtype(cfg.param_dtype)
        self.embed_tokens = nn.Embed(
            cfg.vocab_size, cfg.hidden_size, dtype=dt, param_dtype=pdt,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")))
        layer_cls = nn.remat(DecoderLayer) if cfg.remat else DecoderLayer
        self.layers = [layer_cls(cfg, name=f"layers_{i}") for i in range(cfg.num_layers)]
        self.norm = RMSNorm(cfg.rms_eps, dt, pdt)
        if not cfg.tie_embeddings:
            self.lm_head = _dense(cfg.vocab_size, ("embed", "vocab"), use_bias=False, cfg_dtype=dt,
                                  param_dtype=pdt, name="lm_head")

    def embed(self, input_ids: Array) -> Array:
        """[B, L] int → [B, L, D]."""
        return self.embed_tokens(input_ids)

    def decode(self, x: Array, positions: Array, slots: Array, kv_valid: Array,
               cache_layers: tuple | None = None, memory: Memory | None = None) -> tuple[Array, tuple | None]:
        """Run the blocks and the final norm.  x: [B, S, D] → hidden [B, S, D].

        ``memory``: key/value-only tokens (:class:`Memory`) every layer may attend to."""
        x = nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))
        new_layers = []
        for i, layer in enumerate(self.layers):
            x, c = layer(x, positions, slots, kv_valid, None if cache_layers is None else cache_layers[i], memory)
            new_layers.append(c)
        return self.norm(x), (tuple(new_layers) if cache_layers is not None else None)

    def logits(self, hidden: Array) -> Array:
        """[B, S, D] → [B, S, V] float32."""
        if self.cfg.tie_embeddings:
            out = self.embed_tokens.attend(hidden)
        else:
            out = self.lm_head(hidden)
        out = nn.with_logical_constraint(out, ("act_batch", "act_length", "act_vocab"))
        return out.astype(jnp.float32)

    def __call__(self, input_ids: Array, attention_mask: Array | None = None) -> Array:
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
        B, L = input_ids.shape
        valid = jnp.ones((B, L), bool) if attention_mask is None else attention_mask.astype(bool)
        positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
        slots = jnp.broadcast_to(jnp.arange(L), (B, L))
        h, _ = self.decode(self.embed(input_ids), positions, slots, valid)
        return self.logits(h)


def init_cache(cfg: LLMConfig, batch: int, max_len: int, dtype=None) -> KVCache:
    """An empty cache for ``batch`` rows of up to ``max_len`` tokens."""
    dtype = as_dtype(cfg.dtype) if dtype is None else dtype
    shape = (batch, max_len, cfg.num_kv_heads, cfg.dim_per_head)
    layers = tuple((jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(cfg.num_layers))
    return KVCache(layers=layers, kv_valid=jnp.zeros((batch, max_len), bool),
                   length=jnp.zeros((batch,), jnp.int32), position=jnp.zeros((batch,), jnp.int32))


def _lm(module):
    """The Qwen2LM inside ``module`` (itself, or ``module.llm`` for the video LLM)."""
    return module if isinstance(module, Qwen2LM) else module.llm


def prefill(module, embeds: Array, valid: Array, cache: KVCache, layout: tuple | None = None,
            memory: Memory | None = None) -> tuple[Array, KVCache]:
    """Feed a right-padded prompt of embeddings ``[B, S, D]`` (``valid [B, S]``) into ``cache``.

    Returns the logits ``[B, V]`` at each row's last valid token and the updated cache.
    ``layout = (positions [B, S], slots [B, S], kv_valid [B, C])`` places the prompt in the
    first C cache slots when it is not simply slots ``0..S-1`` (e.g. around key/value-only
    ``memory``, whose slots are among the C).  Call inside ``module.apply(..., method=...)``.
    """
    lm = _lm(module)
    B, S, _ = embeds.shape
    if layout is None:
        positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
        slots = jnp.broadcast_to(jnp.arange(S), (B, S))
        prompt_valid = valid
    else:
        positions, slots, prompt_valid = layout
    kv_valid = jax.lax.dynamic_update_slice(cache.kv_valid, prompt_valid, (0, 0))
    h, layers = lm.decode(embeds, positions, slots, kv_valid, cache.layers, memory)
    # the last valid token per row: with right padding, the highest index whose valid is True
    last = jnp.max(jnp.where(valid, jnp.arange(S)[None], -1), axis=1)
    b = jnp.arange(B)
    logits = lm.logits(h[b, last][:, None])[:, 0]
    length = (slots[b, last] + 1).astype(jnp.int32)
    position = (positions[b, last] + 1).astype(jnp.int32)
    return logits, KVCache(layers=layers, kv_valid=kv_valid, length=length, position=position)


def decode_step(module, token_ids: Array, cache: KVCache) -> tuple[Array, KVCache]:
    """One token per row ``[B]`` → logits ``[B, V]`` and the cache advanced by one."""
    lm = _lm(module)
    B = token_ids.shape[0]
    slots = cache.length[:, None]
    kv_valid = cache.kv_valid.at[jnp.arange(B), cache.length].set(True)
    h, layers = lm.decode(lm.embed(token_ids[:, None]), cache.position[:, None], slots, kv_valid, cache.layers)
    logits = lm.logits(h)[:, 0]
    return logits, KVCache(layers=layers, kv_valid=kv_valid, length=cache.length + 1, position=cache.position + 1)


def sample(logits: Array, key: Array, temperature: float) -> Array:
    """Greedy (temperature == 0) or temperature sampling.  logits [B, V] → ids [B] int32."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, logits / temperature, axis=-1).astype(jnp.int32)


def generate_from_embeds(module, variables, embeds: Array, valid: Array, *, max_new_tokens: int,
                         key: Array | None = None, temperature: float = 0.0, eos_id: int | None = None,
                         pad_id: int = 0, layout: tuple | None = None,
                         memory: Memory | None = None) -> dict[str, Array]:
    """Batched generation from right-padded prompt embeddings ``[B, S, D]``.

    Returns ``{"ids": [B, max_new_tokens] int32, "lengths": [B] int32}``; after a row
    emits ``eos_id`` the rest of its ids are ``pad_id`` (the eos itself is kept and counted).
    ``layout`` / ``memory``: a prompt around key/value-only memory (see :func:`prefill`).
    Pure function of arrays: wrap in ``jax.jit`` with the static keyword args.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature > 0 and key is None:
        raise ValueError("sampling with temperature > 0 needs a PRNG key")
    lm_cfg = (module.cfg if isinstance(module, Qwen2LM) else module.cfg.llm)
    B, S, _ = embeds.shape
    key = jax.random.PRNGKey(0) if key is None else key      # unused by greedy decoding
    prompt_slots = S if layout is None else layout[2].shape[1]
    cache = init_cache(lm_cfg, B, prompt_slots + max_new_tokens)
    logits, cache = module.apply(variables, embeds, valid, cache, layout, memory, method=prefill)

    def step(carry, k):
        logits, cache, done = carry
        tok = sample(logits, k, temperature)
        tok = jnp.where(done, pad_id, tok)
        emitted = ~done
        if eos_id is not None:
            done = done | (tok == eos_id)
        logits, cache = module.apply(variables, tok, cache, method=decode_step)
        return (logits, cache, done), (tok, emitted)

    keys = jax.random.split(key, max_new_tokens)
    _, (toks, emitted) = jax.lax.scan(step, (logits, cache, jnp.zeros((B,), bool)), keys)
    return {"ids": toks.T, "lengths": jnp.sum(emitted, axis=0).astype(jnp.int32)}


def generate(module: Qwen2LM, variables, input_ids: Array, attention_mask: Array | None = None, **kw) -> dict:
    """Text-only generation from right-padded ``input_ids [B, L]``; see ``generate_from_embeds``."""
    valid = jnp.ones(input_ids.shape, bool) if attention_mask is None else attention_mask.astype(bool)
    embeds = module.apply(variables, input_ids, method=Qwen2LM.embed)
    return generate_from_embeds(module, variables, embeds, valid, **kw)
