"""Data: the moving-shapes video-QA benchmark (TFDS), video folders, token stores, Grain pipelines.

Importing this package registers the TFDS builders ``moving_shapes_qa`` and ``video_qa_folder``.
"""
from td_jax.data.moving_shapes import FAMILIES, SceneConfig, make_example
from td_jax.data.moving_shapes_qa import MovingShapesQa
from td_jax.data.patch_embed import make_patch_embed
from td_jax.data.pipeline import default_config, make_dataset, make_pipeline
from td_jax.data.qa_checker import check_answer
from td_jax.data.tokenizer import HFTokenizer, WordTokenizer, encode_mc, encode_mc_options, make_tokenizer
from td_jax.data.video import VideoDecodeError, decode_video, encode_video, normalize_frames
from td_jax.data.video_folder import VideoQaFolder, read_jsonl

__all__ = [
    "FAMILIES", "SceneConfig", "make_example", "MovingShapesQa", "make_patch_embed",
    "default_config", "make_dataset", "make_pipeline", "check_answer", "HFTokenizer", "WordTokenizer",
    "encode_mc", "encode_mc_options", "make_tokenizer", "VideoDecodeError", "decode_video", "encode_video", "normalize_frames",
    "VideoQaFolder", "read_jsonl",
]
