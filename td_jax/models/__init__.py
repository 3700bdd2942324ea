"""Models: SigLIP vision tower, projector, Qwen2-style decoder, the video LLM, configs."""
from td_jax.models.configs import (CONFIGS, LLAVA_OV_0_5B, LLMConfig, QWEN2_0_5B, QWEN2_7B, SIGLIP_SO400M,
                                   SIGLIP_SO400M_LLAVA, TINY_LLM, TINY_VISION, TINY_VLM, VisionConfig, VLMConfig,
                                   get_config)
from td_jax.models.llm import KVCache, Qwen2LM, generate_from_embeds, init_cache
from td_jax.models.sharding import ACTIVATION_AXES, AXIS_RULES, DATA_PARALLEL_RULES, MESH_AXES
from td_jax.models.td_compat import TDCompatAttention, TDCompatConfig, official_inputs
from td_jax.models.vit import Projector, VisionTower
from td_jax.models.vlm import VideoLLM, generate, mc_accuracy, mc_logits, next_token_loss, splice
