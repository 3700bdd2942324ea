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
import os
import re
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from td_jax import compressors
from td_jax.compressors import pool as pool_lib
from td_jax.convert import layouts
from td_jax.convert import params as params_lib
from td_jax.convert.checkpoint import load_converted, read_json, save_converted
from td_jax.convert.params import check_params, fit_params
from td_jax.convert.safetensors_io import read_checkpoint, read_safetensors
from td_jax.models import configs as C
from td_jax.models.llm import Qwen2LM
from td_jax.models.td_compat import TDCompatAttention, TDCompatConfig
from td_jax.models.vit import VisionTower
from td_jax.models.vlm import VideoLLM

__all__ = ["load_hf", "hf_model_config", "load_converted", "save_converted", "read_checkpoint", "read_safetensors",
           "assemble", "qwen2_config", "siglip_config", "check_params", "fit_params", "default_budget", "expand_path",
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


# ----------------------------------------------------------------------------- plans
# A plan is (config, layout entries, checkpoint keys to ignore): everything but the weights.
def _plan_qwen2(d, tensors, dtype):
    cfg = qwen2_config(d, dtype)
    tie, ignore = _tied_head(tensors, "lm_head.weight", "model.embed_tokens.weight", cfg.tie_embeddings)
    cfg = dataclasses.replace(cfg, tie_embeddings=tie)
    return cfg, layouts.qwen2("model.", (), cfg.num_layers, None if tie else "lm_head.weight"), ignore


def _plan_siglip(d, tensors, dtype):
    # transformers 5.x saves a SiglipVisionModel without the "vision_model." prefix
    prefix = "vision_model." if any(k.startswith("vision_model.") for k in tensors) else ""
    use_head = any(k.startswith(prefix + "head.") for k in tensors)
    cfg = siglip_config(d, dtype, use_head=use_head)
    return cfg, layouts.siglip_vision(prefix, (), cfg.num_layers, use_head), ()


DEFAULT_NUM_FRAMES = 32     # LLaVA-OneVision's video frames (and the paper's)


def default_budget(compressor: str, compressor_cfg: dict, grid: int | tuple[int, int], num_frames: int) -> int:
    """Visual slots when the user gives no budget: ``pool`` keeps every pooled cell of
    ``num_frames`` frames of a ``grid`` (side, or (h, w)) of tokens (LLaVA-OV:
    ``T * ceil(g/2)^2``), ``none`` every token; any other compressor needs an explicit budget
    (ValueError)."""
    gh, gw = (grid, grid) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))
    if compressor == "pool":
        frames = int(compressor_cfg.get("out_t") or num_frames)     # area pooling may pool time too
        if compressor_cfg.get("out_hw") is not None:
            oh, ow = compressor_cfg["out_hw"]
            return frames * int(oh) * int(ow)
        stride = int(compressor_cfg.get("stride") or pool_lib.DEFAULT_STRIDE)
        return frames * pool_lib.pooled_size(gh, stride) * pool_lib.pooled_size(gw, stride)
    if compressor == "none":
        return num_frames * gh * gw
    raise ValueError(f"compressor {compressor!r} needs a budget (the number of visual tokens it keeps), "
                     f"e.g. budget=32")


def _vlm_kw(vlm_kw: dict, grid: int, num_frames: int) -> dict:
    kw = {"compressor": "pool", **vlm_kw}
    if kw.get("budget") is None:
        kw["budget"] = default_budget(kw["compressor"], dict(kw.get("compressor_cfg", ())), grid, num_frames)
    return kw


def _first_int(*values) -> int:
    return next(int(v) for v in values if v is not None)


def _probe(tensors: dict, prefixes: tuple[str, ...], leaf: str, what: str) -> str:
    for p in prefixes:
        if p + leaf in tensors:
            return p
    raise ValueError(f"no {what} weights found: none of {[p + leaf for p in prefixes]} is in the checkpoint")


def _plan_llava_hf(d, tensors, dtype, vlm_kw, num_frames):
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
    cfg = C.VLMConfig(llm=llm_cfg, vision=vcfg, select_layer=layer, projector="mlp2x_gelu",
                      projector_bias=d.get("multimodal_projector_bias", True),
                      projector_act=d.get("projector_hidden_act", "gelu"), video_newline=nl in tensors,
                      video_token_id=d.get("video_token_id", d.get("video_token_index", 151647)),
                      pad_id=_first_int(tc.get("pad_token_id"), d.get("pad_token_id"), 151643),
                      dtype=dtype, param_dtype=dtype, **_vlm_kw(vlm_kw, vcfg.grid, num_frames))
    entries = (layouts.qwen2(lm_p, ("llm",), llm_cfg.num_layers, None if tie else head)
               + layouts.siglip_vision(vis_p, ("vision",), vis_layers, vis_head)
               + layouts.projector((proj_p + "linear_1", proj_p + "linear_2"), ("projector",), cfg.projector_bias))
    if cfg.video_newline:
        entries.append(layouts.Entry(nl, ("image_newline",)))
    return cfg, entries, ignore


def _plan_llava_original(d, tensors, dtype, vlm_kw, num_frames, cross_attention_prefix):
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
    kw = _vlm_kw({"td_compat_apply": False, **vlm_kw}, vcfg.grid, num_frames)
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
    return cfg, entries, ignore


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


# ----------------------------------------------------------------------------- public API
def expand_path(path) -> str:
    """``~`` and ``$VARS`` expanded (what a shell would have done)."""
    return os.path.expandvars(os.path.expanduser(os.fspath(path)))


def _read_config(path) -> tuple[str, dict]:
    path = expand_path(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such directory (expected a Hugging Face model directory)")
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{path}: no config.json (not a Hugging Face model directory)")
    return path, read_json(cfg_path)


def _check_vlm_overrides(layout: str, path: str, vlm_overrides: dict, num_frames) -> dict:
    """Validated overrides (compressor name and keys checked before any weight is read)."""
    if layout in ("qwen2", "siglip_vision"):
        given = sorted(vlm_overrides) + (["num_frames"] if num_frames is not None else [])
        if given:
            raise TypeError(f"{path} is a {layout} model: video-LLM options {given} do not apply")
        return {}
    kw = dict(vlm_overrides)
    if isinstance(kw.get("compressor_cfg"), dict):
        kw["compressor_cfg"] = tuple(sorted(kw["compressor_cfg"].items()))
    if kw.get("compressor") is not None or kw.get("compressor_cfg"):
        compressors.get(kw.get("compressor") or "pool", **dict(kw.get("compressor_cfg", ())))
    if kw.get("budget") is not None and (isinstance(kw["budget"], bool) or not isinstance(kw["budget"], int)
                                         or kw["budget"] < 1):
        raise ValueError(f"budget must be a positive int, got {kw['budget']!r}")
    if num_frames is not None and (isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1):
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    return {k: v for k, v in kw.items() if v is not None}


def _plan(path, dtype, cross_attention_prefix, num_frames, vlm_overrides):
    path, d = _read_config(path)
    dtype = C.dtype_name(dtype)
    layout = detect_layout(d)
    vlm_kw = _check_vlm_overrides(layout, path, vlm_overrides, num_frames)
    budget_frames = DEFAULT_NUM_FRAMES if num_frames is None else num_frames
    tensors = read_checkpoint(path)          # memory-mapped: nothing is read until used
    if layout == "qwen2":
        plan = _plan_qwen2(d, tensors, dtype)
    elif layout == "siglip_vision":
        plan = _plan_siglip(d, tensors, dtype)
    elif layout == "llava_onevision":
        plan = _plan_llava_hf(d, tensors, dtype, vlm_kw, budget_frames)
    else:
        plan = _plan_llava_original(d, tensors, dtype, vlm_kw, budget_frames, cross_attention_prefix)
    return path, dtype, tensors, 1 if num_frames is None else num_frames, plan


def hf_model_config(path: str, dtype="float32", *, cross_attention_prefix: str = "model.cross_attention.",
                    num_frames: int | None = None, **vlm_overrides):
    """The model config (``LLMConfig`` | ``VisionConfig`` | ``VLMConfig``) a Hugging Face
    directory loads into, from ``config.json`` and the tensor names (no weights are read)."""
    return _plan(path, dtype, cross_attention_prefix, num_frames, vlm_overrides)[4][0]


def load_hf(path: str, dtype="float32", *, cross_attention_prefix: str = "model.cross_attention.",
            key: jax.Array | None = None, num_frames: int | None = None, **vlm_overrides) -> tuple[nn.Module, dict]:
    """Load a Hugging Face model directory into ``(module, params)``.

    path: the directory (``~`` and ``$VARS`` are expanded).
    dtype: compute and parameter dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` or the
      numpy / JAX dtype (``jnp.bfloat16``, ``np.float32``); checked before any weight is read.
    cross_attention_prefix: key prefix of the released Token Dynamics cross-attention in the
      original LLaVA layout.
    num_frames: video LLMs: frames per video the model will see.  The default budget of
      ``pool`` / ``none`` is that many frames' worth of slots (32 frames, LLaVA-OV's, when not
      given); the model is traced on a video of that length (1 frame when not given), so a
      budget too small for it fails here, and a compressor whose parameters depend on the
      frame count (``base_map``) is initialised for it.
    vlm_overrides: VLMConfig fields for the video LLMs (``compressor``, ``compressor_cfg`` (a
      dict or (key, value) pairs), ``budget``, ``td_compat_apply``, ...).  Default: LLaVA-OV's
      ``pool`` (2x2 bilinear).  Any registered compressor works; its own parameters are never
      in a Hugging Face file and are freshly initialised from ``key``.
    key: PRNG key for those parameters (default ``PRNGKey(0)``).

    The model is traced abstractly (``jax.eval_shape``): only the checkpoint's arrays and a
    learned compressor's small parameters are ever materialised.
    """
    path, dtype, tensors, num_frames, (cfg, entries, ignore) = _plan(path, dtype, cross_attention_prefix,
                                                                     num_frames, vlm_overrides)
    jdtype = C.as_dtype(dtype)
    if isinstance(cfg, C.LLMConfig):
        module = Qwen2LM(cfg)
        abstract = _abstract_params(module, jnp.zeros((1, 2), jnp.int32))
        return module, assemble(entries, tensors, abstract, jdtype, source=path, ignore=ignore)
    if isinstance(cfg, C.VisionConfig):
        module = VisionTower(cfg)
        abstract = _abstract_params(module, jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.num_channels)))
        return module, assemble(entries, tensors, abstract, jdtype, source=path, ignore=ignore)
    module = VideoLLM(cfg)
    abstract, init_compressor = params_lib.abstract_video_llm(module, num_frames)
    fresh = None
    if init_compressor is not None:       # the compressor's own parameters are never in HF files
        logging.warning("%s: compressor %r parameters are freshly initialised (not in the checkpoint)",
                        path, cfg.compressor)
        fresh = {"compressor": init_compressor(jax.random.PRNGKey(0) if key is None else key)}
    params = assemble(entries, tensors, abstract, jdtype, source=path, ignore=ignore, fresh=fresh,
                      fresh_prefixes=("compressor",))
    return module, params
