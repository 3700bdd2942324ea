"""Token and FLOP accounting: visual tokens in / out, % kept, analytic LLM prefill FLOPs.

Everything here is a function of plain numbers, so it answers for a Qwen2-0.5B-sized
decoder (or any other) without weights:

    dec = QWEN2_0_5B
    r = token_report(n_in=32 * 729, n_out=16, text_tokens=64, decoder=dec)
    r["flops_saved"], r["llm_speedup"]

FLOP convention: one multiply-add = 2 FLOPs; counted are the matmuls of a pre-norm
decoder (q/k/v/o projections, attention scores and the weighted sum, the MLP, and the LM
head on ``logit_tokens`` positions).  Norms, RoPE, softmax, activations and biases are
left out (they are O(S * D), below 1% at these widths).
"""
from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class DecoderShape:
    """The sizes of a decoder-only LLM that decide its FLOPs.

    layers, width (hidden size), heads, kv_heads (grouped-query attention), mlp_width
    (intermediate size), vocab; head_dim defaults to width // heads; gated_mlp: SwiGLU
    (three matrices) rather than a two-matrix MLP.
    """

    layers: int
    width: int
    heads: int
    kv_heads: int
    mlp_width: int
    vocab: int
    head_dim: int | None = None
    gated_mlp: bool = True

    def __post_init__(self):
        for f in ("layers", "width", "heads", "kv_heads", "mlp_width", "vocab"):
            if int(getattr(self, f)) < 1:
                raise ValueError(f"DecoderShape.{f} must be >= 1, got {getattr(self, f)}")
        if self.heads % self.kv_heads:
            raise ValueError(f"DecoderShape: heads={self.heads} not a multiple of kv_heads={self.kv_heads}")
        if self.head_dim is None and self.width % self.heads:
            raise ValueError(f"DecoderShape: width={self.width} not divisible by heads={self.heads}; give head_dim")

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.width // self.heads


# Qwen2-0.5B (the LLM of LLaVA-OneVision-0.5B): 24 layers, 896 wide, 14 heads, 2 KV heads,
# SwiGLU 4864, vocabulary 151,936.
QWEN2_0_5B = DecoderShape(layers=24, width=896, heads=14, kv_heads=2, mlp_width=4864, vocab=151936)


def decoder_from_config(cfg: Any) -> DecoderShape:
    """A DecoderShape from an object with td_jax LLMConfig-style fields."""
    try:
        return DecoderShape(layers=cfg.num_layers, width=cfg.hidden_size, heads=cfg.num_heads,
                            kv_heads=cfg.num_kv_heads, mlp_width=cfg.intermediate_size,
                            vocab=cfg.vocab_size, head_dim=getattr(cfg, "head_dim", None))
    except AttributeError as e:
        raise TypeError(f"decoder_from_config: {type(cfg).__name__} lacks an LLM config field ({e})") from None


def attention_pairs(seq_len: int, causal: bool = True) -> int:
    """(query, key) pairs scored in a prefill of ``seq_len`` tokens."""
    return seq_len * (seq_len + 1) // 2 if causal else seq_len * seq_len


def prefill_flops(dec: DecoderShape, seq_len: int, *, causal: bool = True, logit_tokens: int = 1) -> dict:
    """FLOPs of one prefill of ``seq_len`` tokens, by part (ints) and ``"total"``.

    causal: count only the (q, k) pairs a causal mask keeps (an ideal kernel's work);
      False counts the full S x S score matrix (what a dense masked implementation does).
    logit_tokens: positions the LM head runs on (1 when only the next token is sampled).
    """
    if seq_len < 0 or logit_tokens < 0:
        raise ValueError(f"prefill_flops: seq_len={seq_len} and logit_tokens={logit_tokens} must be >= 0")
    s, d, hd = int(seq_len), dec.width, dec.dim_per_head
    q_width, kv_width = dec.heads * hd, dec.kv_heads * hd
    per_layer_proj = 2 * s * d * (2 * q_width + 2 * kv_width)           # q, o and k, v
    per_layer_attn = 2 * 2 * dec.heads * hd * attention_pairs(s, causal)  # q k^T and p v
    per_layer_mlp = 2 * s * d * dec.mlp_width * (3 if dec.gated_mlp else 2)
    parts = {
        "projections": dec.layers * per_layer_proj,
        "attention": dec.layers * per_layer_attn,
        "mlp": dec.layers * per_layer_mlp,
        "lm_head": 2 * min(logit_tokens, s) * d * dec.vocab,
    }
    parts["total"] = sum(parts.values())
    return parts


def token_report(n_in: int, n_out: int, *, text_tokens: int = 0, decoder: DecoderShape | None = None,
                 causal: bool = True, logit_tokens: int = 1) -> dict:
    """Visual tokens in / out, % kept and (with a decoder) the prefill FLOPs saved.

    The LLM sequence is ``visual tokens + text_tokens`` with and without compression.
    Returns n_in, n_out, kept_pct, and with ``decoder``: flops_full, flops_compressed,
    flops_saved, llm_speedup (= flops_full / flops_compressed).
    """
    if n_in < 1 or n_out < 0 or text_tokens < 0:
        raise ValueError(f"token_report: need n_in >= 1, n_out >= 0, text_tokens >= 0; "
                         f"got n_in={n_in}, n_out={n_out}, text_tokens={text_tokens}")
    rep = {"n_in": int(n_in), "n_out": int(n_out), "kept_pct": 100.0 * n_out / n_in}
    if decoder is not None:
        full = prefill_flops(decoder, n_in + text_tokens, causal=causal, logit_tokens=logit_tokens)["total"]
        comp = prefill_flops(decoder, n_out + text_tokens, causal=causal, logit_tokens=logit_tokens)["total"]
        rep.update(flops_full=full, flops_compressed=comp, flops_saved=full - comp,
                   llm_speedup=full / comp if comp else float("inf"))
    return rep
