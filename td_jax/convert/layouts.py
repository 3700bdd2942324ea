"""Key layouts: Hugging Face parameter names → our linen parameter paths.

Each layout function returns a list of :class:`Entry` ``(hf_key, path, transform)``;
``transform`` maps the torch-layout array to ours (``T``: Linear weight → Dense kernel,
``conv``: Conv2d OIHW → HWIO, ``rows(i, n)``: the i-th of n row blocks, transposed — for
``nn.MultiheadAttention``'s packed ``in_proj``).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Entry:
    hf_key: str
    path: tuple
    transform: Callable[[np.ndarray], np.ndarray] | None = None


def T(a):
    return np.ascontiguousarray(a.T)


def conv(a):
    return np.ascontiguousarray(np.transpose(a, (2, 3, 1, 0)))


def rows(i: int, n: int, transpose: bool = True):
    def f(a):
        blk = a.shape[0] // n
        part = a[i * blk:(i + 1) * blk]
        return np.ascontiguousarray(part.T) if transpose else np.ascontiguousarray(part)
    return f


def linear(hf: str, path: tuple, bias: bool = True) -> list[Entry]:
    out = [Entry(f"{hf}.weight", path + ("kernel",), T)]
    if bias:
        out.append(Entry(f"{hf}.bias", path + ("bias",)))
    return out


def layernorm(hf: str, path: tuple, bias: bool = True) -> list[Entry]:
    out = [Entry(f"{hf}.weight", path + ("scale",))]
    if bias:
        out.append(Entry(f"{hf}.bias", path + ("bias",)))
    return out


def packed_mha(hf: str, path: tuple) -> list[Entry]:
    """torch.nn.MultiheadAttention: in_proj_weight [3D, D], in_proj_bias [3D], out_proj."""
    out = []
    for i, n in enumerate(("q_proj", "k_proj", "v_proj")):
        out.append(Entry(f"{hf}.in_proj_weight", path + (n, "kernel"), rows(i, 3)))
        out.append(Entry(f"{hf}.in_proj_bias", path + (n, "bias"), rows(i, 3, transpose=False)))
    return out + linear(f"{hf}.out_proj", path + ("out_proj",))


def qwen2(prefix: str, path: tuple, num_layers: int, lm_head_key: str | None) -> list[Entry]:
    """Qwen2 decoder under ``prefix`` (e.g. ``"model."``); lm_head_key None when tied."""
    out = [Entry(f"{prefix}embed_tokens.weight", path + ("embed_tokens", "embedding"))]
    for i in range(num_layers):
        p, q = f"{prefix}layers.{i}.", path + (f"layers_{i}",)
        for n in ("q_proj", "k_proj", "v_proj"):
            out += linear(p + f"self_attn.{n}", q + ("self_attn", n))
        out += linear(p + "self_attn.o_proj", q + ("self_attn", "o_proj"), bias=False)
        for n in ("gate_proj", "up_proj", "down_proj"):
            out += linear(p + f"mlp.{n}", q + ("mlp", n), bias=False)
        out += layernorm(p + "input_layernorm", q + ("input_layernorm",), bias=False)
        out += layernorm(p + "post_attention_layernorm", q + ("post_attention_layernorm",), bias=False)
    out += layernorm(f"{prefix}norm", path + ("norm",), bias=False)
    if lm_head_key is not None:
        out.append(Entry(lm_head_key, path + ("lm_head", "kernel"), T))
    return out


def siglip_vision(prefix: str, path: tuple, num_layers: int, use_head: bool) -> list[Entry]:
    """SigLIP vision model under ``prefix`` (e.g. ``"vision_model."``)."""
    out = [Entry(f"{prefix}embeddings.patch_embedding.weight", path + ("patch_embedding", "kernel"), conv),
           Entry(f"{prefix}embeddings.patch_embedding.bias", path + ("patch_embedding", "bias")),
           Entry(f"{prefix}embeddings.position_embedding.weight", path + ("position_embedding",))]
    for i in range(num_layers):
        p, q = f"{prefix}encoder.layers.{i}.", path + (f"layers_{i}",)
        out += layernorm(p + "layer_norm1", q + ("layer_norm1",))
        out += layernorm(p + "layer_norm2", q + ("layer_norm2",))
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out += linear(p + f"self_attn.{n}", q + ("self_attn", n))
        out += linear(p + "mlp.fc1", q + ("mlp", "fc1"))
        out += linear(p + "mlp.fc2", q + ("mlp", "fc2"))
    out += layernorm(f"{prefix}post_layernorm", path + ("post_layernorm",))
    if use_head:
        h, q = f"{prefix}head.", path + ("head",)
        out.append(Entry(h + "probe", q + ("probe",)))
        out += packed_mha(h + "attention", q)
        out += layernorm(h + "layernorm", q + ("layernorm",))
        out += linear(h + "mlp.fc1", q + ("mlp", "fc1"))
        out += linear(h + "mlp.fc2", q + ("mlp", "fc2"))
    return out


def projector(names: tuple[str, str], path: tuple, bias: bool = True) -> list[Entry]:
    """Two linears of the mlp2x_gelu projector (``names`` are their HF module names)."""
    return linear(names[0], path + ("linear_1",), bias) + linear(names[1], path + ("linear_2",), bias)


def td_compat(prefix: str, path: tuple, num_layers: int) -> list[Entry]:
    """The released ``VQAttn``: ``to_q_proj`` + ``transformer_decoder.layers.{i}``."""
    out = linear(f"{prefix}to_q_proj", path + ("to_q_proj",))
    for i in range(num_layers):
        p, q = f"{prefix}transformer_decoder.layers.{i}.", path + (f"layers_{i}",)
        out += packed_mha(p + "self_attn", q + ("self_attn",))
        out += packed_mha(p + "multihead_attn", q + ("multihead_attn",))
        out += linear(p + "linear1", q + ("linear1",)) + linear(p + "linear2", q + ("linear2",))
        for n in ("norm1", "norm2", "norm3"):
            out += layernorm(p + n, q + (n,))
    return out
