"""Hugging Face checkpoints → (linen module, params), without torch.

``load_hf(path, dtype)`` reads ``config.json`` and safetensors (single or sharded) from a
model directory and returns ``(module, params)`` for:

* ``Qwen2ForCausalLM`` → :class:`~td_jax.models.llm.Qwen2LM`
  (``module.apply({"params": params}, input_ids) -> logits [B, L, V]``);
* ``SiglipVisionModel`` → :class:`~td_jax.models.vit.VisionTower`
  (``module.apply({"params": params}, pixel_values) -> last hidden state [B, N, D]``,
  pixels NHWC float already normalised);
* ``LlavaOnevisionForConditionalGeneration`` (llava-hf layout, both the transformers 4.x
  key names ``language_model.model.*`` and 5.x ``model.language_model.*``) and
* the original LLaVA-NeXT / OneVision layout (``model.layers.*``, ``model.mm_projector.*``,
  ``model.vision_tower.vision_tower.vision_model.*``, ``lm_head.weight``) that the released
  Token Dynamics checkpoint uses, with its cross-attention under ``cross_attention_prefix``
  (default ``"model.cross_attention."``, the attribute name in the official code)
  → :class:`~td_jax.models.vlm.VideoLLM`.

Unknown keys, missing parameters and shape mismatches raise one ValueError listing them.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from td_jax.convert import layouts
from td_jax.convert.checkpoint import load_converted, save_converted
from td_jax.convert.safetensors_io import read_checkpoint, read_safetensors
from td_jax.models import configs as C
from td_jax.models.llm import Qwen2LM
from td_jax.models.td_compat import TDCompatAttention, TDCompatConfig
from td_jax.models.vit import VisionTower
from td_jax.models.vlm import VideoLLM

__all__ = ["load_hf", "load_converted", "save_converted", "read_checkpoint", "read_safetensors", "assemble", "qwen2_config", "siglip_config",
           "KNOWN_VISION_TOWERS"]

# Vision towers named by the original LLaVA layout (``mm_vision_tower``) → full-depth configs.
KNOWN_VISION_TOWERS = {"google/siglip-so400m-patch14-384": C.SIGLIP_SO400M}


# ----------------------------------------------------------------------------- configs
def _rope_theta(d: dict) -> float:
    rp = d.get("rope_parameters") or d.get("rope_scaling") or {}
    if rp and rp.get("rope_type", rp.get("type", "default")) != "default":
        raise ValueError(f"unsupported rope type {rp.get('rope_type', rp.get('type'))!r} (only default RoPE)")
    return float(rp.get("rope_theta", d.get("rope_theta", 10000.0)))


def qwen2_config(d: dict, dtype: str) -> C.LLMConfig:
    """An LLMConfig from a Qwen2 ``config.json`` dict."""
    if d.get("use_sliding_window", False):
        raise ValueError("Qwen2 config with use_sliding_window=True is not supported")
    if d.get("hidden_act", "silu") != "silu":
        raise ValueError(f"Qwen2 hidden_act must be silu, got {d.get('hidden_act')!r}")
    return C.LLMConfig(
        vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
        num_layers=d["num_hidden_layers"], num_heads=d["num_attention_heads"],
        num_kv_heads=d.get("num_key_value_heads") or d["num_attention_heads"], head_dim=d.get("head_dim"),
        rope_theta=_rope_theta(d), rms_eps=d.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(d.get("tie_word_embeddings", False)), dtype=dtype, param_dtype=dtype)


def siglip_config(d: dict, dtype: str, *, num_layers: int | None = None, use_head: bool | None = None) -> C.VisionConfig:
    """A VisionConfig from a SigLIP vision ``config.json`` dict."""
    size = lambda v: v if isinstance(v, int) else (v[0] if v[0] == v[1] else None)
    image_size, patch = size(d.get("image_size", 224)), size(d.get("patch_size", 16))
    if image_size is None or patch is None:
        raise ValueError(f"only square image/patch sizes are supported, got {d.get('image_size')}, {d.get('patch_size')}")
    return C.VisionConfig(
        image_size=image_size, patch_size=patch, hidden_size=d.get("hidden_size", 768),
        intermediate_size=d.get("intermediate_size", 3072),
        num_layers=d.get("num_hidden_layers", 12) if num_layers is None else num_layers,
        num_heads=d.get("num_attention_heads", 12), layer_norm_eps=d.get("layer_norm_eps", 1e-6),
        hidden_act=d.get("hidden_act", "gelu_pytorch_tanh"), num_channels=d.get("num_channels", 3),
        use_head=bool(d.get("vision_use_head", True)) if use_head is None else use_head,
        dtype=dtype, param_dtype=dtype)


def _count_layers(tensors: dict, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    ids = {int(m.group(1)) for k in tensors for m in [pat.match(k)] if m}
    return (max(ids) + 1) if ids else 0


# ----------------------------------------------------------------------------- assembly
def _flat_abstract(abstract) -> dict[tuple, Any]:
    return {tuple(k): v for k, v in flax.traverse_util.flatten_dict(abstract).items()}


def assemble(entries: list[layouts.Entry], tensors: dict[str, np.ndarray], abstract: dict, dtype,
             *, source: str, ignore: tuple[str, ...] = (), fresh: dict | None = None,
             fresh_prefixes: tuple[str, ...] = ()) -> dict:
    """Params tree from checkpoint ``tensors`` through layout ``entries``.

    ``abstract`` is the module's (unboxed) parameter shape tree.  Keys in ``ignore`` may be
    in the file without a target; params whose path starts with one of ``fresh_prefixes``
    may be absent from the file and are taken from ``fresh`` (freshly initialised).
    Everything else that does not line up raises one ValueError listing all problems.
    """
    want = _flat_abstract(abstract)
    used = {e.hf_key for e in entries}
    unknown = sorted(k for k in tensors if k not in used and k not in ignore)
    missing_keys = sorted({e.hf_key for e in entries if e.hf_key not in tensors})
    out, mismatch, no_target = {}, [], []
    for e in entries:
        if e.hf_key not in tensors:
            continue
        if e.path not in want:
            no_target.append(f"{e.hf_key} -> {'/'.join(e.path)}")
            continue
        arr = np.asarray(tensors[e.hf_key])
        arr = e.transform(arr) if e.transform is not None else arr
        if tuple(arr.shape) != tuple(want[e.path].shape):
            mismatch.append(f"{e.hf_key}: checkpoint {tuple(tensors[e.hf_key].shape)} -> {tuple(arr.shape)}, "
                            f"model {'/'.join(e.path)} expects {tuple(want[e.path].shape)}")
            continue
        out[e.path] = arr
    fresh_flat = _flat_abstract(fresh) if fresh is not None else {}
    not_filled = []
    for path in want:
        if path in out:
            continue
        if path[:1] and path[0] in fresh_prefixes and path in fresh_flat:
            out[path] = np.asarray(fresh_flat[path])
        else:
            not_filled.append("/".join(path))
    problems = []
    if unknown:
        problems.append(f"unknown checkpoint keys ({len(unknown)}): {unknown[:20]}")
    if missing_keys:
        problems.append(f"keys missing from the checkpoint ({len(missing_keys)}): {missing_keys[:20]}")
    if mismatch:
        problems.append(f"shape mismatches ({len(mismatch)}): {mismatch[:20]}")
    if no_target:
        problems.append(f"layout targets absent from the model ({len(no_target)}): {no_target[:20]}")
    if not_filled and not missing_keys:
        problems.append(f"model parameters not filled ({len(not_filled)}): {not_filled[:20]}")
    if problems:
        raise ValueError(f"cannot load {source}:\n  " + "\n  ".join(problems))
    tree = flax.traverse_util.unflatten_dict({k: jnp.asarray(v, dtype=dtype) for k, v in out.items()})
    return tree


def _abstract_params(module, *args, **kw):
    variables = jax.eval_shape(lambda: module.init({"params": jax.random.PRNGKey(0), "compress": jax.random.PRNGKey(1),
                                                    "dropout": jax.random.PRNGKey(2)}, *args, **kw))
    return nn.unbox(variables["params"])


def _tied_head(tensors: dict, head_key: str, embed_key: str, tie: bool) -> tuple[bool, tuple[str, ...]]:
    """Decide whether lm_head is tied: (tie, keys to ignore)."""
    if head_key not in tensors:
        if not tie:
            raise ValueError(f"config says tie_word_embeddings=False but {head_key!r} is not in the checkpoint")
        return True, ()
    if tie and np.array_equal(np.asarray(tensors[head_key]), np.asarray(tensors[embed_key])):
        return True, (head_key,)
    if tie:
        logging.warning("tie_word_embeddings=True but %s differs from %s: loading an untied head", head_key, embed_key)
    return False, ()


# ----------------------------------------------------------------------------- loaders
def _load_qwen2(d, tensors, dtype, source):
    cfg = qwen2_config(d, dtype)
    tie, ignore = _tied_head(tensors, "lm_head.weight", "model.embed_tokens.weight", cfg.tie_embeddings)
    cfg = dataclasses.replace(cfg, tie_embeddings=tie)
    module = Qwen2LM(cfg)
    abstract = _abstract_params(module, jnp.zeros((1, 2), jnp.int32))
    entries = layouts.qwen2("model.", (), cfg.num_layers, None if tie else "lm_head.weight")
    return module, assemble(entries, tensors, abstract, C.as_dtype(dtype), source=source, ignore=ignore)


def _load_siglip(d, tensors, dtype, source):
    # transformers 5.x saves a SiglipVisionModel without the "vision_model." prefix
    prefix = "vision_model." if any(k.startswith("vision_model.") for k in tensors) else ""
    use_head = any(k.startswith(prefix + "head.") for k in tensors)
    cfg = siglip_config(d, dtype, use_head=use_head)
    module = VisionTower(cfg)
    abstract = _abstract_params(module, jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.num_channels)))
    entries = layouts.siglip_vision(prefix, (), cfg.num_layers, use_head)
    return module, assemble(entries, tensors, abstract, C.as_dtype(dtype), source=source)


def _vlm_init_args(cfg: C.VLMConfig):
    R = cfg.vision.image_size
    return (jnp.full((1, 2), cfg.video_token_id, jnp.int32).at[0, 1].set(cfg.pad_id), None,
            jnp.zeros((1, 1, R, R, 3), jnp.uint8))


def _build_vlm(cfg, entries, tensors, dtype, source, key, ignore=()):
    module = VideoLLM(cfg)
    args = _vlm_init_args(cfg)
    abstract = _abstract_params(module, *args)
    fresh = None
    if "compressor" in abstract:      # the compressor's own parameters are never in HF files
        k1, k2 = jax.random.split(jax.random.PRNGKey(0) if key is None else key)
        fresh = nn.unbox(module.init({"params": k1, "compress": k2}, *args)["params"])
        logging.warning("%s: compressor %r parameters are freshly initialised (not in the checkpoint)",
                        source, cfg.compressor)
    params = assemble(entries, tensors, abstract, C.as_dtype(dtype), source=source, ignore=ignore,
                      fresh=fresh, fresh_prefixes=("compressor",))
    return module, params


def _first_int(*values) -> int:
    return next(int(v) for v in values if v is not None)


def _probe(tensors: dict, prefixes: tuple[str, ...], leaf: str, what: str) -> str:
    for p in prefixes:
        if p + leaf in tensors:
            return p
    raise ValueError(f"no {what} weights found: none of {[p + leaf for p in prefixes]} is in the checkpoint")


def _load_llava_hf(d, tensors, dtype, source, vlm_kw, key):
    if d.get("vision_feature_select_strategy", "full") != "full":
        raise ValueError("only vision_feature_select_strategy='full' is supported (SigLIP has no CLS token)")
    layer = d.get("vision_feature_layer", -1)
    if not isinstance(layer, int):
        raise ValueError(f"multi-layer vision_feature_layer={layer} is not supported")
    # the same weights appear under transformers 4.x / 5.x / Hub names: probe for each part
    lm_p = _probe(tensors, ("model.language_model.", "language_model.model."), "embed_tokens.weight", "language model")
    vis_p = _probe(tensors, ("model.vision_tower.vision_model.", "vision_tower.vision_model.", "model.vision_tower.",
                             "vision_tower."), "embeddings.patch_embedding.weight", "vision tower")
    proj_p = _probe(tensors, ("model.multi_modal_projector.", "multi_modal_projector."), "linear_1.weight", "projector")
    nl = "model.image_newline" if "model.image_newline" in tensors else "image_newline"
    head = "language_model.lm_head.weight" if "language_model.lm_head.weight" in tensors else "lm_head.weight"
    tc = dict(d["text_config"])
    tc.setdefault("tie_word_embeddings", d.get("tie_word_embeddings", False))
    llm_cfg = qwen2_config(tc, dtype)
    tie, ignore = _tied_head(tensors, head, lm_p + "embed_tokens.weight", llm_cfg.tie_embeddings or
                             bool(d.get("tie_word_embeddings", False)))
    llm_cfg = dataclasses.replace(llm_cfg, tie_embeddings=tie)
    vis_layers = _count_layers(tensors, vis_p + "encoder.layers.")
    vis_head = any(k.startswith(vis_p + "head.") for k in tensors)
    vcfg = siglip_config(d["vision_config"], dtype, num_layers=vis_layers, use_head=vis_head)
    kw = dict(compressor="pool", budget=32 * C.math_ceil_half(vcfg.grid) ** 2)
    kw.update(vlm_kw)
    cfg = C.VLMConfig(llm=llm_cfg, vision=vcfg, select_layer=layer, projector="mlp2x_gelu",
                      projector_bias=d.get("multimodal_projector_bias", True),
                      projector_act=d.get("projector_hidden_act", "gelu"), video_newline=nl in tensors,
                      video_token_id=d.get("video_token_id", d.get("video_token_index", 151647)),
                      pad_id=_first_int(tc.get("pad_token_id"), d.get("pad_token_id"), 151643),
                      dtype=dtype, param_dtype=dtype, **kw)
    entries = (layouts.qwen2(lm_p, ("llm",), llm_cfg.num_layers, None if tie else head)
               + layouts.siglip_vision(vis_p, ("vision",), vis_layers, vis_head)
               + layouts.projector((proj_p + "linear_1", proj_p + "linear_2"), ("projector",), cfg.projector_bias))
    if cfg.video_newline:
        entries.append(layouts.Entry(nl, ("image_newline",)))
    return _build_vlm(cfg, entries, tensors, dtype, source, key, ignore)


def _load_llava_original(d, tensors, dtype, source, vlm_kw, key, cross_attention_prefix):
    if d.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
        raise ValueError(f"only mm_projector_type='mlp2x_gelu' is supported, got {d.get('mm_projector_type')!r}")
    vis_p = "model.vision_tower.vision_tower.vision_model."
    llm_cfg = qwen2_config(d, dtype)
    tie, ignore = _tied_head(tensors, "lm_head.weight", "model.embed_tokens.weight", llm_cfg.tie_embeddings)
    llm_cfg = dataclasses.replace(llm_cfg, tie_embeddings=tie)
    if "vision_config" in d:
        full = siglip_config(d["vision_config"], dtype)
    else:
        name = d.get("mm_vision_tower")
        if name not in KNOWN_VISION_TOWERS:
            raise ValueError(f"unknown mm_vision_tower {name!r}: add its config to KNOWN_VISION_TOWERS "
                             f"or a 'vision_config' entry to config.json (known: {sorted(KNOWN_VISION_TOWERS)})")
        full = dataclasses.replace(KNOWN_VISION_TOWERS[name], dtype=dtype, param_dtype=dtype)
    stored = _count_layers(tensors, vis_p + "encoder.layers.")
    vis_head = any(k.startswith(vis_p + "head.") for k in tensors)
    vcfg = dataclasses.replace(full, num_layers=stored, use_head=vis_head)
    # mm_vision_select_layer counts on the full-depth tower; LLaVA-NeXT's SigLIP wrapper
    # deletes the last block before saving, so index from the front.
    sel = d.get("mm_vision_select_layer", -2)
    absolute = sel if sel >= 0 else full.num_layers + 1 + sel
    if not 0 <= absolute <= stored:
        raise ValueError(f"mm_vision_select_layer={sel} needs hidden state {absolute} but only {stored} blocks are stored")
    has_compat = any(k.startswith(cross_attention_prefix) for k in tensors)
    compat = None
    if has_compat:
        n_layers = _count_layers(tensors, cross_attention_prefix + "transformer_decoder.layers.")
        q_w = tensors[cross_attention_prefix + "to_q_proj.weight"]
        ff = tensors[cross_attention_prefix + "transformer_decoder.layers.0.linear1.weight"]
        compat = TDCompatConfig(query_dim=q_w.shape[1], d_model=q_w.shape[0], dim_feedforward=ff.shape[0],
                                num_layers=n_layers, num_heads=int(d.get("td_compat_num_heads", 8)))
    nl = "model.image_newline"
    kw = dict(compressor="pool", budget=32 * C.math_ceil_half(vcfg.grid) ** 2,
              td_compat_apply=False)
    kw.update(vlm_kw)
    cfg = C.VLMConfig(llm=llm_cfg, vision=vcfg, mm_hidden_size=d.get("mm_hidden_size"), select_layer=absolute,
                      projector="mlp2x_gelu", video_newline=nl in tensors, td_compat=compat,
                      video_token_id=d.get("video_token_id", 151647),
                      pad_id=_first_int(d.get("pad_token_id"), 151643), dtype=dtype, param_dtype=dtype, **kw)
    entries = (layouts.qwen2("model.", ("llm",), llm_cfg.num_layers, None if tie else "lm_head.weight")
               + layouts.siglip_vision(vis_p, ("vision",), stored, vis_head)
               + layouts.projector(("model.mm_projector.0", "model.mm_projector.2"), ("projector",)))
    if compat is not None:
        entries += layouts.td_compat(cross_attention_prefix, ("td_compat",), compat.num_layers)
    if cfg.video_newline:
        entries.append(layouts.Entry(nl, ("image_newline",)))
    return _build_vlm(cfg, entries, tensors, dtype, source, key, ignore)


def detect_layout(d: dict) -> str:
    """``"qwen2" | "siglip_vision" | "llava_onevision" | "llava_original"`` from config.json."""
    arch = (d.get("architectures") or [""])[0]
    mt = d.get("model_type", "")
    if arch == "Qwen2ForCausalLM" or (mt == "qwen2" and "mm_projector_type" not in d):
        return "qwen2"
    if arch == "SiglipVisionModel" or mt == "siglip_vision_model":
        return "siglip_vision"
    if arch == "LlavaOnevisionForConditionalGeneration" or mt == "llava_onevision":
        return "llava_onevision"
    if "mm_projector_type" in d or "mm_vision_tower" in d or arch.startswith("Llava"):
        return "llava_original"
    raise ValueError(f"unsupported checkpoint: architectures={d.get('architectures')} model_type={mt!r}")


def load_hf(path: str, dtype: str = "float32", *, cross_attention_prefix: str = "model.cross_attention.",
            key: jax.Array | None = None, **vlm_overrides) -> tuple[nn.Module, dict]:
    """Load a Hugging Face model directory into ``(module, params)``.

    dtype: compute and parameter dtype (``"float32"``, ``"bfloat16"``).
    cross_attention_prefix: key prefix of the released Token Dynamics cross-attention in the
      original LLaVA layout.
    vlm_overrides: VLMConfig fields for the video LLMs (``compressor``, ``compressor_cfg``,
      ``budget``, ``td_compat_apply``, ...).  Defaults: LLaVA-OV's ``pool`` (2x2 bilinear)
      at 32 frames' worth of slots.
    key: PRNG key for parameters the checkpoint cannot hold (a learned compressor's).
    """
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise ValueError(f"{path}: no config.json")
    with open(cfg_path) as f:
        d = json.load(f)
    layout = detect_layout(d)
    if vlm_overrides and layout in ("qwen2", "siglip_vision"):
        raise TypeError(f"{path} is a {layout} model: VLM overrides {sorted(vlm_overrides)} do not apply")
    if "compressor_cfg" in vlm_overrides and isinstance(vlm_overrides["compressor_cfg"], dict):
        vlm_overrides["compressor_cfg"] = tuple(sorted(vlm_overrides["compressor_cfg"].items()))
    tensors = read_checkpoint(path)
    if layout == "qwen2":
        return _load_qwen2(d, tensors, dtype, path)
    if layout == "siglip_vision":
        return _load_siglip(d, tensors, dtype, path)
    if layout == "llava_onevision":
        return _load_llava_hf(d, tensors, dtype, path, vlm_overrides, key)
    return _load_llava_original(d, tensors, dtype, path, vlm_overrides, key, cross_attention_prefix)
