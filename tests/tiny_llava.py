"""A tiny random LLaVA-OneVision as a user downloads one: transformers' model + a tokenizer.json,
plus a folder of short videos with question lists in several layouts.

Shared by tests/test_checkpoints*.py. The model: SigLIP 56 px / 14 (a 4x4 grid), Qwen2 width 64
with 2 layers, vocabulary 128; the tokenizer: a word-level ``tokenizer.json`` holding the Qwen
chat tokens, the option letters and every word the prompts and questions use.
"""
import json
import os
import re

import numpy as np

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220), "yellow": (230, 220, 40)}
SPECIALS = ["[UNK]", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<video>", "<image>"]
PROMPT_TEXT = ("system You are a helpful assistant. user assistant Answer with the option's letter from the given "
               "choices directly. Answer the question using a single word or phrase. A B C D E . ? ( ) : , ! '")
QUESTIONS = ["What color is the square?", "Which way does the square move?", "What is shown in the video?",
             "Describe the video.", "What color is the background?"]
WORDS = "left right up down square moves a the background it is to red green blue yellow".split()
VOCAB = 128
FRAMES, RES = 8, 56


def vocab() -> dict:
    words = SPECIALS + list("ABCDE")
    for text in [PROMPT_TEXT, *QUESTIONS, " ".join(WORDS)]:
        for w in re.findall(r"\w+|[^\w\s]+", text):
            if w not in words:
                words.append(w)
    assert len(words) <= VOCAB, len(words)
    return {w: i for i, w in enumerate(words)}


def save_tokenizer(path: str) -> dict:
    from tokenizers import Tokenizer, models, pre_tokenizers

    v = vocab()
    tok = Tokenizer(models.WordLevel(v, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(os.path.join(path, "tokenizer.json"))
    return v


def save_model(path: str, seed: int = 3):
    """transformers' LlavaOnevisionForConditionalGeneration with random weights, saved to ``path``."""
    import torch
    import transformers

    v = save_tokenizer(path)
    text = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                    initializer_range=0.2, rope_theta=10000.0, tie_word_embeddings=True,
                                    pad_token_id=v["<|endoftext|>"], eos_token_id=v["<|im_end|>"])
    vision = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                             num_attention_heads=4, image_size=RES, patch_size=14)
    cfg = transformers.LlavaOnevisionConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                            image_token_index=v["<image>"], video_token_index=v["<video>"],
                                            vision_feature_layer=-2)
    torch.manual_seed(seed)
    model = transformers.LlavaOnevisionForConditionalGeneration(cfg).eval()
    model.save_pretrained(path)
    return model


def clip(color: str, direction: str, seed: int) -> np.ndarray:
    """``[FRAMES, RES, RES, 3]`` uint8: a grey background with a coloured square moving one way."""
    rs = np.random.RandomState(seed)
    frames = np.full((FRAMES, RES, RES, 3), 90, np.uint8) + rs.randint(0, 20, (1, RES, RES, 1)).astype(np.uint8)
    dy, dx = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}[direction]
    for t in range(FRAMES):
        y, x = 20 + dy * 4 * t, 20 + dx * 4 * t
        frames[t, max(y, 0):y + 14, max(x, 0):x + 14] = COLORS[color]
    return frames


def make_folder(root: str, n: int = 6) -> dict:
    """Videos plus question lists: ``train.json`` (LLaVA-Video-178K rows), ``validation.json`` and
    ``test.jsonl`` (multiple choice, ours), ``nextqa/test.parquet`` (lmms-eval NExTQA) and
    ``anetqa/test.jsonl`` (ActivityNet-QA, open-ended). Returns the paths and the truths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from td_jax.data import video

    os.makedirs(os.path.join(root, "videos"), exist_ok=True)
    os.makedirs(os.path.join(root, "nextqa", "NExTVideo"), exist_ok=True)
    os.makedirs(os.path.join(root, "anetqa", "all_test"), exist_ok=True)
    colors, dirs = list(COLORS), ["left", "right", "up", "down"]
    truth = []
    for i in range(n):
        c, d = colors[i % 4], dirs[(i + 1) % 4]
        frames = clip(c, d, i)
        for p in (os.path.join(root, "videos", f"v{i}.mp4"), os.path.join(root, "nextqa", "NExTVideo", f"{1000 + i}.mp4"),
                  os.path.join(root, "anetqa", "all_test", f"v_clip{i}.mp4")):
            video.encode_video(p, frames)
        truth.append((c, d))
    train = [{"id": f"t{i}", "video": f"videos/v{i}.mp4", "data_source": "synthetic",
              "conversations": [{"from": "human", "value": "<image>\nWhat color is the square?"},
                                {"from": "gpt", "value": c},
                                {"from": "human", "value": "Which way does the square move?"},
                                {"from": "gpt", "value": d}]} for i, (c, d) in enumerate(truth)]
    mc = [{"id": f"q{i}", "video": f"videos/v{i}.mp4", "question": "What color is the square?",
           "options": colors, "answer": colors.index(c), "family": "color"} for i, (c, d) in enumerate(truth)]
    mc += [{"id": f"d{i}", "video": f"videos/v{i}.mp4", "question": "Which way does the square move?",
            "options": dirs[:3] if i % 2 else dirs, "answer": min(dirs.index(d), 2 if i % 2 else 3),
            "family": "direction"} for i, (c, d) in enumerate(truth)]
    with open(os.path.join(root, "train.json"), "w") as f:
        json.dump(train, f)
    with open(os.path.join(root, "validation.json"), "w") as f:
        json.dump(mc, f)
    with open(os.path.join(root, "test.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in mc)
    nq = [{"video": 1000 + i, "question": "what color is the square", "a0": "red", "a1": "green", "a2": "blue",
           "a3": "yellow", "a4": "black", "answer": colors.index(c), "type": "DC" if i % 2 else "CW",
           "qid": i, "frame_count": FRAMES} for i, (c, d) in enumerate(truth)]
    pq.write_table(pa.Table.from_pylist(nq), os.path.join(root, "nextqa", "test.parquet"))
    an = [{"video_name": f"clip{i}", "question": "what color is the square", "answer": c, "question_id": f"a{i}",
           "type": i % 3} for i, (c, d) in enumerate(truth)]
    with open(os.path.join(root, "anetqa", "test.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in an)
    return {"root": root, "truth": truth, "mc": mc, "nextqa": nq, "anetqa": an}


def torch_video_logits(model, ids_with_slots, frames_uint8):
    """transformers' logits for right-unpadded prompts: ids ``[B, L']`` (the video token repeated
    once per visual slot) and frames ``[B, T, R, R, 3]`` uint8 (normalised as SigLIP)."""
    import torch

    pix = (frames_uint8.astype(np.float32) / 255.0 - 0.5) / 0.5
    pix = torch.tensor(pix.transpose(0, 1, 4, 2, 3))
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids_with_slots), pixel_values_videos=pix).logits.numpy()


def torch_greedy(model, ids_with_slots, frames_uint8, max_new_tokens: int, eos_id: int):
    import torch

    pix = (frames_uint8.astype(np.float32) / 255.0 - 0.5) / 0.5
    pix = torch.tensor(pix.transpose(0, 1, 4, 2, 3))
    ids = torch.tensor(ids_with_slots)
    with torch.no_grad():
        out = model.generate(input_ids=ids, pixel_values_videos=pix, attention_mask=torch.ones_like(ids),
                             do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos_id, pad_token_id=0)
    return out[:, ids.shape[1]:].numpy()
