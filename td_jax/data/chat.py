"""Open-ended questions and multi-turn instruction data as token ids with answer-only losses.

The prompts follow each tokenizer's own format (``td_jax.data.tokenizer``):

* :class:`~td_jax.data.tokenizer.HFTokenizer` (LLaVA-OneVision's Qwen chat template)::

      <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n<video>\\n{question}\\n{instruction}<|im_end|>\\n
      <|im_start|>assistant\\n{answer}<|im_end|>\\n<|im_start|>user\\n{question 2}<|im_end|>\\n ...

  (the video token opens the first user turn; the loss covers every assistant answer and its
  ``<|im_end|>``);
* :class:`~td_jax.data.tokenizer.WordTokenizer`: ``<bos> <video> question : {q} answer : {a} <eos>``
  repeated per turn (the video only in the first).

All functions return ``input_ids [L] int32``, ``attention_mask [L] bool``, ``loss_mask [L]
float32`` right-padded to ``L = max_len``; :func:`encode_record` picks the encoding of a
``td_jax.data.video_folder`` record (multiple choice, open-ended or a conversation).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from td_jax.data import tokenizer as tok_lib


def _is_chat(tok) -> bool:
    return isinstance(tok, tok_lib.HFTokenizer)


def _user_ids(tok, text: str, first: bool) -> list[int]:
    """A user turn up to (and including) the assistant header that follows it."""
    if _is_chat(tok):
        nl = tok.encode("\n")
        head = ([tok.im_start] + tok.encode(f"system\n{tok.system}") + [tok.im_end] + nl) if first else []
        video = [tok.video_token_id] + tok.encode(f"\n{text}") if first else tok.encode(text)
        return (head + [tok.im_start] + tok.encode("user\n") + video + [tok.im_end] + nl
                + [tok.im_start] + tok.encode("assistant\n"))
    start = [tok.bos_id, tok.video_token_id] if first else []
    return start + tok.encode(f"question : {text} answer :")


def _assistant_ids(tok, text: str) -> list[int]:
    """An answer and its end-of-turn (``<|im_end|>\\n`` / ``<eos>``); the trailing newline of the
    chat format is not a target."""
    if _is_chat(tok):
        return tok.encode(text) + [tok.im_end]
    return tok.encode(text) + [tok.eos_id]


def _turn_sep(tok) -> list[int]:
    return tok.encode("\n") if _is_chat(tok) else []


def _pad(segments: Sequence[tuple[list[int], bool]], tok, max_len: int, *, truncate: bool, what: str
         ) -> dict[str, np.ndarray]:
    ids, loss = [], []
    for seg, target in segments:
        ids += seg
        loss += [1.0 if target else 0.0] * len(seg)
    if len(ids) > max_len:
        if not truncate:
            raise ValueError(f"{what} is {len(ids)} tokens, longer than max_text_len={max_len}")
        ids, loss = ids[:max_len], loss[:max_len]
    n = len(ids)
    out_ids = np.full(max_len, tok.pad_id, np.int32)
    out_ids[:n] = ids
    attn = np.zeros(max_len, bool)
    attn[:n] = True
    lm = np.zeros(max_len, np.float32)
    lm[:n] = loss
    return {"input_ids": out_ids, "attention_mask": attn, "loss_mask": lm}


def open_prompt_ids(tok, question: str, instruction: str = tok_lib.SHORT_INSTRUCTION) -> list[int]:
    """The prompt of an open-ended question (no options), ending where the answer starts."""
    text = f"{question}\n{instruction}" if (instruction and _is_chat(tok)) else question
    return _user_ids(tok, text, first=True)


def encode_open(tok, question: str, answer: str, max_len: int,
                instruction: str = tok_lib.SHORT_INSTRUCTION) -> dict[str, np.ndarray]:
    """One open-ended question and its reference answer (the loss target; "" for none).
    The prompt must fit ``max_len`` (ValueError); a long answer is cut at ``max_len``."""
    prompt = open_prompt_ids(tok, question, instruction)
    if len(prompt) >= max_len:
        raise ValueError(f"prompt is {len(prompt)} tokens, longer than max_text_len={max_len}: {question[:80]!r}")
    segs = [(prompt, False)] + ([(_assistant_ids(tok, answer), True)] if answer else [])
    return _pad(segs, tok, max_len, truncate=True, what="question + answer")


def encode_conversation(tok, turns: Sequence[dict], max_len: int) -> dict[str, np.ndarray]:
    """Alternating ``{"role": "user" | "assistant", "text": ...}`` turns, user first; the video
    opens the first user turn and the loss covers the assistant turns.  Conversations longer
    than ``max_len`` are cut there (as LLaVA's training does); the first user turn must fit."""
    if not turns or turns[0]["role"] != "user":
        raise ValueError("a conversation must start with a user turn")
    segs: list[tuple[list[int], bool]] = []
    for i, t in enumerate(turns):
        if t["role"] == "user":
            if i:
                segs.append((_turn_sep(tok), False))
            segs.append((_user_ids(tok, t["text"], first=(i == 0)), False))
        else:
            segs.append((_assistant_ids(tok, t["text"]), True))
    if len(segs[0][0]) >= max_len:
        raise ValueError(f"first user turn is {len(segs[0][0])} tokens, longer than max_text_len={max_len}")
    return _pad(segs, tok, max_len, truncate=True, what="conversation")


def encode_record(tok, rec: dict, max_len: int) -> dict[str, np.ndarray]:
    """A ``video_folder`` record's text: its conversation, its multiple-choice question (letter
    answer, the lmms-eval protocol) or its open-ended question with the first reference."""
    if rec.get("conversations"):
        return encode_conversation(tok, rec["conversations"], max_len)
    if rec.get("options"):
        return tok_lib.encode_mc(tok, rec["question"], rec["options"], rec["answer"], max_len)
    answers = rec.get("answers") or [""]
    return encode_open(tok, rec["question"], answers[0], max_len)
