"""Model configs: frozen dataclasses for the decoder, the vision tower and the video LLM.

Real sizes (Qwen2-0.5B / 7B, SigLIP-so400m-patch14-384, LLaVA-OneVision-0.5B) and tiny
ones for tests.  Every choice the modules make is a field here.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def as_dtype(name: str):
    """``"float32" | "bfloat16" | "float16"`` → jnp dtype (ValueError otherwise)."""
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def dtype_name(dtype) -> str:
    """The config name (``"float32" | "bfloat16" | "float16"``) of any spelling of a float
    dtype: the name itself, ``jnp.bfloat16``, ``np.float32``, ``np.dtype("float16")``, ...
    (ValueError naming the value otherwise)."""
    if isinstance(dtype, str):
        name = dtype
    else:
        try:
            name = jnp.dtype(dtype).name
        except TypeError:
            raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)} "
                             "(a name, or a numpy / JAX dtype)") from None
    if name not in _DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; expected one of {sorted(_DTYPES)} (or the numpy / JAX dtype)")
    return name


@dataclasses.dataclass(frozen=True)
class LLMConfig:
    """A Qwen2-style decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int | None = None          # None: hidden_size // num_heads
    rope_theta: float = 1_000_000.0
    rms_eps: float = 1e-6
    tie_embeddings: bool = True
    qkv_bias: bool = True
    dtype: str = "float32"               # activations / matmul dtype
    param_dtype: str = "float32"
    remat: bool = False                  # rematerialise each decoder layer in the backward pass
    attention_impl: str | None = None    # jax.nn.dot_product_attention implementation (None: auto)

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} not divisible by num_heads={self.num_heads}")
        as_dtype(self.dtype), as_dtype(self.param_dtype)

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """A SigLIP-style ViT: conv patch embedding, learned positions, pre-norm blocks."""

    image_size: int
    patch_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"   # or "gelu" (exact)
    use_head: bool = False                  # SigLIP's attention-pooling head
    num_channels: int = 3
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False

    def __post_init__(self):
        if self.image_size < self.patch_size:
            raise ValueError(f"image_size={self.image_size} smaller than patch_size={self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} not divisible by num_heads={self.num_heads}")
        if self.hidden_act not in ("gelu", "gelu_pytorch_tanh", "gelu_new", "quick_gelu"):
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}")
        as_dtype(self.dtype), as_dtype(self.param_dtype)

    @property
    def grid(self) -> int:
        """Patches per side: floor(image_size / patch_size) (a VALID conv, as SigLIP)."""
        return self.image_size // self.patch_size


@dataclasses.dataclass(frozen=True)
class PatchEmbedConfig:
    """A frozen stand-in vision tower: the fixed patch embedding of ``td_jax.data.patch_embed``.

    ``frames [B, T, R, R, 3] uint8 -> tokens [B, T, R/p, R/p, hidden_size]``: a seeded random
    projection of each patch's pixels plus a fixed spatial position embedding
    (``pos_embed``: "sincos2d" or "none", RMS ``pos_scale``; ``temporal`` adds a 1-D sin-cos
    embedding of the frame index too; ``context`` > 0 projects each patch's
    ``(2c+1)``-patch window, so a token sees its neighbourhood; ``tower``: the path of a
    pretrained per-window network, ``td_jax.data.tower``, used instead of the random projection).
    Frozen: nothing here trains.
    """

    patch_size: int = 4
    hidden_size: int = 64
    seed: int = 0
    pos_embed: str = "sincos2d"
    pos_scale: float = 0.1
    temporal: bool = False
    context: int = 0
    tower: str = ""

    def __post_init__(self):
        if self.patch_size < 1 or self.hidden_size < 1:
            raise ValueError(f"patch_size and hidden_size must be >= 1, got {self.patch_size}, {self.hidden_size}")
        if self.context < 0:
            raise ValueError(f"context must be >= 0 (patches on each side), got {self.context}")
        if self.pos_embed not in ("sincos2d", "none"):
            raise ValueError(f"pos_embed must be 'sincos2d' or 'none', got {self.pos_embed!r}")

    def kwargs(self) -> dict:
        """Keyword arguments of ``td_jax.data.patch_embed.patch_embed``."""
        return dict(patch_size=self.patch_size, dim=self.hidden_size, seed=self.seed, pos_embed=self.pos_embed,
                    pos_scale=self.pos_scale, temporal=self.temporal, context=self.context, tower=self.tower)


PROJECTOR_POSITIONS = ("before", "after")
VISUAL_ATTENTION = ("full", "kv_only")


@dataclasses.dataclass(frozen=True)
class VLMConfig:
    """LLaVA-OneVision-style video LLM: vision → projector → compressor → decoder.

    ``select_layer`` indexes the tower's hidden states as LLaVA does (0 = patch
    embeddings, -1 = last block's output before the post-norm, -2 = second to last).
    ``compressor_cfg`` is a tuple of (key, value) pairs so the config stays hashable.
    ``video_newline`` appends one learned newline token after the video's tokens (what
    LLaVA-OV and the official Token Dynamics code do).  ``vision`` is a SigLIP-style
    :class:`VisionConfig`, a frozen :class:`PatchEmbedConfig`, or None (precomputed tokens only).

    ``projector_position``: "before" the compressor (LLaVA: the compressor sees projected
    tokens) or "after" it (the projector maps the compressed tokens; what a precomputed,
    parameter-free compressor stage on frozen tower features needs).
    ``visual_attention``: "full" — the visual slots are decoder positions like text (LLaVA);
    "kv_only" — they are keys/values only (``td_jax.models.llm.Memory``): every layer
    projects them, text attends to them, but no visual token attends to anything, so a
    video of N tokens costs O(N·D) per layer instead of O(N²·D).
    """

    llm: LLMConfig
    vision: VisionConfig | PatchEmbedConfig | None
    mm_hidden_size: int | None = None      # projector input width; None: vision.hidden_size
    projector: str = "mlp2x_gelu"          # "mlp2x_gelu" | "linear" | "identity"
    projector_bias: bool = True
    projector_act: str = "gelu"
    select_layer: int = -2
    pixel_mean: tuple = (0.5, 0.5, 0.5)   # uint8 frames → (x / 255 - mean) / std
    pixel_std: tuple = (0.5, 0.5, 0.5)
    visual_tokens_stage: str = "vision"    # precomputed visual_tokens are "vision" (pre-projector) or "projected"
    compressor: str = "none"
    compressor_cfg: tuple = ()
    budget: int = 16
    video_newline: bool = True
    video_token_id: int = 151647
    pad_id: int = 151643
    td_compat: Any = None                 # TDCompatConfig: the released checkpoint's cross-attention
    td_compat_apply: bool = True           # apply it (the official inference path does not)
    projector_position: str = "before"     # "before" | "after" the compressor
    visual_attention: str = "full"         # "full" | "kv_only"
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        if self.projector not in ("mlp2x_gelu", "linear", "identity"):
            raise ValueError(f"unknown projector {self.projector!r}; expected mlp2x_gelu|linear|identity")
        if self.visual_tokens_stage not in ("vision", "projected"):
            raise ValueError(f"visual_tokens_stage must be 'vision' or 'projected', got {self.visual_tokens_stage!r}")
        if self.vision is not None and self.mm_hidden_size is not None and self.mm_hidden_size != self.vision.hidden_size:
            raise ValueError(f"mm_hidden_size={self.mm_hidden_size} != vision.hidden_size={self.vision.hidden_size}")
        if self.projector_position not in PROJECTOR_POSITIONS:
            raise ValueError(f"projector_position must be one of {PROJECTOR_POSITIONS}, got {self.projector_position!r}")
        if self.visual_attention not in VISUAL_ATTENTION:
            raise ValueError(f"visual_attention must be one of {VISUAL_ATTENTION}, got {self.visual_attention!r}")
        if self.vision is None and self.mm_hidden_size is None:
            raise ValueError("VLMConfig needs vision or mm_hidden_size (the width of precomputed visual tokens)")
        as_dtype(self.dtype), as_dtype(self.param_dtype)

    @property
    def vision_width(self) -> int:
        return self.mm_hidden_size if self.mm_hidden_size is not None else self.vision.hidden_size

    @property
    def compressor_kwargs(self) -> dict[str, Any]:
        return dict(self.compressor_cfg)

    def replace(self, **kw) -> "VLMConfig":
        return dataclasses.replace(self, **kw)

    def with_dtype(self, dtype: str, param_dtype: str | None = None) -> "VLMConfig":
        """The same model with every part computing in ``dtype`` (params in ``param_dtype``)."""
        pdt = param_dtype or self.param_dtype
        vision = (dataclasses.replace(self.vision, dtype=dtype, param_dtype=pdt)
                  if isinstance(self.vision, VisionConfig) else self.vision)
        return dataclasses.replace(self, dtype=dtype, param_dtype=pdt, vision=vision,
                                   llm=dataclasses.replace(self.llm, dtype=dtype, param_dtype=pdt))


# ---------------------------------------------------------------- real sizes
QWEN2_0_5B = LLMConfig(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24,
                       num_heads=14, num_kv_heads=2, rope_theta=1_000_000.0, rms_eps=1e-6,
                       tie_embeddings=True)
QWEN2_7B = LLMConfig(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28,
                     num_heads=28, num_kv_heads=4, rope_theta=1_000_000.0, rms_eps=1e-6,
                     tie_embeddings=False)
# The full SigLIP-so400m-patch14-384 vision model (27 blocks + attention-pooling head).
SIGLIP_SO400M = VisionConfig(image_size=384, patch_size=14, hidden_size=1152, intermediate_size=4304,
                             num_layers=27, num_heads=16, layer_norm_eps=1e-6,
                             hidden_act="gelu_pytorch_tanh", use_head=True)
# The tower as LLaVA-OneVision stores it: last block and head dropped, read at its last output.
SIGLIP_SO400M_LLAVA = dataclasses.replace(SIGLIP_SO400M, num_layers=26, use_head=False)
LLAVA_OV_0_5B = VLMConfig(llm=QWEN2_0_5B, vision=SIGLIP_SO400M_LLAVA, select_layer=-1,
                          compressor="pool", budget=32 * 196, video_newline=True,
                          video_token_id=151647, pad_id=151643)

# ---------------------------------------------------------------- tiny (tests, CPU dev)
TINY_LLM = LLMConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2,
                     num_heads=4, num_kv_heads=2, rope_theta=10_000.0, tie_embeddings=True)
TINY_VISION = VisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_layers=3, num_heads=4)
TINY_VLM = VLMConfig(llm=TINY_LLM, vision=TINY_VISION, select_layer=-2, compressor="none", budget=16,
                     video_token_id=5, pad_id=0)

CONFIGS = {
    "qwen2_0_5b": QWEN2_0_5B, "qwen2_7b": QWEN2_7B, "siglip_so400m": SIGLIP_SO400M,
    "siglip_so400m_llava": SIGLIP_SO400M_LLAVA, "llava_ov_0_5b": LLAVA_OV_0_5B,
    "tiny_llm": TINY_LLM, "tiny_vision": TINY_VISION, "tiny_vlm": TINY_VLM,
}


def get_config(name: str):
    """A named config (KeyError listing the names otherwise)."""
    if name not in CONFIGS:
        raise KeyError(f"unknown model config {name!r}; known: {sorted(CONFIGS)}")
    return CONFIGS[name]


def math_ceil_half(n: int) -> int:
    """LLaVA-OV's pooled grid side: ceil(n / 2)."""
    return -(-n // 2)
