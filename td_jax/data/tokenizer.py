"""Tokenizers and multiple-choice prompts with answer-only loss masks.

Two tokenizers share one interface — ``pad_id``, ``video_token_id``, ``option_ids``
(``[n_options]`` int32 letter-token ids), ``vocab_size``, ``encode(text)``, ``decode(ids)``,
``prompt_ids(question, options)`` and ``answer_ids(answer_index)``:

* :class:`WordTokenizer` — a tiny word-level vocabulary for the synthetic benchmark;
* :class:`HFTokenizer` — a Hugging Face ``tokenizer.json`` (through the ``tokenizers``
  package) with the Qwen chat template LLaVA-OneVision uses.

:func:`encode_mc` turns a question into ``input_ids [L]``, ``attention_mask [L]`` and
``loss_mask [L]`` (1.0 on the answer tokens only), right-padded with ``pad_id``.
"""
from __future__ import annotations

import json
import re
import string
from typing import Iterable, Sequence

import numpy as np

from td_jax.data import moving_shapes as ms

LETTERS = string.ascii_uppercase
_WORD_RE = re.compile(r"<[a-z_]+>|[A-Za-z0-9']+|[^\sA-Za-z0-9]")
WORD_SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>", "<video>")
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
SHORT_INSTRUCTION = "Answer the question using a single word or phrase."


def _check_options(options: Sequence[str], num_options: int) -> None:
    if not 2 <= len(options) <= num_options:
        raise ValueError(f"expected 2..{num_options} options (tokenizer num_options), got {len(options)}: {options}")


def moving_shapes_words() -> list[str]:
    """Every word the moving-shapes benchmark and the word prompt use."""
    texts = [
        "What color is the ? What shape is the object ? How many objects appear in the video ?",
        "In which direction does the move ? Which object moves the fastest ? What does the do ?",
        "Which object appears first ? Where is the at the end of the video ?",
        "question : options : answer : .",
        *ms.COLOR_NAMES, *ms.SHAPES, *ms.DIRECTIONS, *ms.MOTIONS, *ms.QUADRANTS, *ms.COUNT_WORDS,
    ]
    return sorted({w.lower() for t in texts for w in _WORD_RE.findall(t)})


class WordTokenizer:
    """Word-level tokenizer: ids 0..4 are ``<pad> <unk> <bos> <eos> <video>``, then the option
    letters, then the words.  Lookup is exact, then lower-cased, else ``<unk>``.

    Prompt: ``<bos> <video> question : {q} options : A . {o0} B . {o1} ... answer :`` and the
    answer ``{letter} <eos>``.
    """

    def __init__(self, words: Iterable[str], num_options: int = ms.NUM_OPTIONS):
        if not 2 <= num_options <= len(LETTERS):
            raise ValueError(f"num_options must be in [2, 26], got {num_options}")
        self.num_options = int(num_options)
        letters = list(LETTERS[:num_options])
        rest = sorted(set(words) - set(WORD_SPECIALS) - set(letters))
        self.vocab = list(WORD_SPECIALS) + letters + rest
        self._ids = {w: i for i, w in enumerate(self.vocab)}
        self.pad_id, self.unk_id, self.bos_id, self.eos_id, self.video_token_id = range(5)
        self.option_ids = np.array([self._ids[c] for c in letters], np.int32)

    @classmethod
    def for_moving_shapes(cls, num_options: int = ms.NUM_OPTIONS) -> "WordTokenizer":
        return cls(moving_shapes_words(), num_options)

    @classmethod
    def from_texts(cls, texts: Iterable[str], num_options: int) -> "WordTokenizer":
        """A vocabulary of every (lower-cased) word in ``texts``."""
        return cls({w.lower() for t in texts for w in _WORD_RE.findall(t)}, num_options)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(w, self._ids.get(w.lower(), self.unk_id)) for w in _WORD_RE.findall(text)]

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.vocab[int(i)] for i in ids if int(i) != self.pad_id)

    def prompt_ids(self, question: str, options: Sequence[str], list_options: bool = True) -> list[int]:
        """``list_options=False`` leaves the options out: ``<bos> <video> question : {q} answer :``."""
        _check_options(options, self.num_options)
        if not list_options:
            return [self.bos_id, self.video_token_id] + self.encode(f"question : {question} answer :")
        opts = " ".join(f"{LETTERS[i]} . {o}" for i, o in enumerate(options))
        return [self.bos_id, self.video_token_id] + self.encode(f"question : {question} options : {opts} answer :")

    def answer_ids(self, answer: int) -> list[int]:
        return [int(self.option_ids[answer]), self.eos_id]

    def answer_text_ids(self, text: str) -> list[int]:
        """The option's own words then ``<eos>`` (the "text" answer format)."""
        return self.encode(text) + [self.eos_id]

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump({"type": "word", "num_options": self.num_options, "vocab": self.vocab}, f)

    @classmethod
    def load(cls, path: str) -> "WordTokenizer":
        with open(path) as f:
            d = json.load(f)
        if d.get("type") != "word":
            raise ValueError(f"{path} is not a WordTokenizer file (type={d.get('type')!r})")
        return cls(d["vocab"], d["num_options"])


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` with the Qwen chat template of LLaVA-OneVision.

    Prompt::

        <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{video_token}\\n{question}\\n
        A. {o0}\\nB. {o1}\\n...{instruction}<|im_end|>\\n<|im_start|>assistant\\n

    and the answer ``{letter}<|im_end|>\\n`` (loss on the letter and ``<|im_end|>``).
    """

    def __init__(self, path: str, *, num_options: int = ms.NUM_OPTIONS, video_token: str = "<video>",
                 pad_token: str = "<|endoftext|>", system: str = "You are a helpful assistant.",
                 instruction: str = MC_INSTRUCTION):
        from tokenizers import Tokenizer

        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on bad files
            raise ValueError(f"cannot read tokenizer file {path}: {e}") from e
        self.path, self.num_options, self.system, self.instruction = str(path), int(num_options), system, instruction
        self.pad_id = self._special(pad_token)
        self.video_token_id = self._special(video_token)
        self.im_start, self.im_end = self._special("<|im_start|>"), self._special("<|im_end|>")
        ids = [self._tok.encode(c, add_special_tokens=False).ids for c in LETTERS[:num_options]]
        if any(len(i) != 1 for i in ids):
            raise ValueError(f"{path}: option letters must be single tokens, got {ids}")
        self.option_ids = np.array([i[0] for i in ids], np.int32)

    def _special(self, token: str) -> int:
        i = self._tok.token_to_id(token)
        if i is None:
            raise ValueError(f"tokenizer {self.path} has no token {token!r}")
        return int(i)

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids if int(i) != self.pad_id], skip_special_tokens=False)

    def prompt_ids(self, question: str, options: Sequence[str], list_options: bool = True) -> list[int]:
        """``list_options=False``: no options and LLaVA's short-answer instruction instead."""
        _check_options(options, self.num_options)
        opts = "".join(f"{LETTERS[i]}. {o}\n" for i, o in enumerate(options)) if list_options else ""
        instruction = self.instruction if list_options else SHORT_INSTRUCTION
        nl = self.encode("\n")
        return ([self.im_start] + self.encode(f"system\n{self.system}") + [self.im_end] + nl
                + [self.im_start] + self.encode("user\n") + [self.video_token_id]
                + self.encode(f"\n{question}\n{opts}{instruction}") + [self.im_end] + nl
                + [self.im_start] + self.encode("assistant\n"))

    def answer_ids(self, answer: int) -> list[int]:
        return [int(self.option_ids[answer]), self.im_end]

    def answer_text_ids(self, text: str) -> list[int]:
        """The option's own text then ``<|im_end|>`` (the "text" answer format)."""
        return self.encode(text) + [self.im_end]


def make_tokenizer(spec: str, num_options: int = ms.NUM_OPTIONS, **kwargs):
    """``"word"`` (the moving-shapes vocabulary), ``"word:PATH"`` (a saved WordTokenizer) or a
    path to a Hugging Face ``tokenizer.json``."""
    if spec == "word":
        return WordTokenizer.for_moving_shapes(num_options)
    if spec.startswith("word:"):
        tok = WordTokenizer.load(spec[5:])
        if tok.num_options != num_options:
            raise ValueError(f"{spec}: saved with num_options={tok.num_options}, config asks {num_options}")
        return tok
    return HFTokenizer(spec, num_options=num_options, **kwargs)


ANSWER_FORMATS = ("letter", "text")


def encode_mc(tok, question: str, options: Sequence[str], answer: int, max_len: int,
              answer_format: str = "letter", list_options: bool = True) -> dict[str, np.ndarray]:
    """One multiple-choice example → ``input_ids [L] int32``, ``attention_mask [L] bool``,
    ``loss_mask [L] float32`` (1.0 on the answer tokens), right-padded to ``L = max_len``.

    ``answer_format``: "letter" — the target is the option's letter then end-of-turn (the
    lmms-eval protocol, scored by the letters' logits); "text" — the target is the option's
    own text then end-of-turn (scored by each option's sequence log-likelihood, see
    :func:`encode_mc_options`).  ``list_options=False`` (text format only) leaves the
    options out of the prompt.
    """
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {answer_format!r}")
    if not list_options and answer_format == "letter":
        raise ValueError("a letter answer needs the options listed in the prompt (list_options=True)")
    if not 0 <= int(answer) < len(options):
        raise ValueError(f"answer index {answer} out of range for {len(options)} options")
    prompt = tok.prompt_ids(question, options, list_options)
    ans = tok.answer_ids(int(answer)) if answer_format == "letter" else tok.answer_text_ids(options[int(answer)])
    n = len(prompt) + len(ans)
    if n > max_len:
        raise ValueError(f"prompt + answer is {n} tokens, longer than max_text_len={max_len}: {question!r}")
    ids = np.full(max_len, tok.pad_id, np.int32)
    ids[:n] = prompt + ans
    attn = np.zeros(max_len, bool)
    attn[:n] = True
    loss = np.zeros(max_len, np.float32)
    loss[len(prompt):n] = 1.0
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss}


def encode_mc_options(tok, question: str, options: Sequence[str], max_len: int,
                      list_options: bool = True) -> dict[str, np.ndarray]:
    """Every option as a "text" answer: ``input_ids / attention_mask / loss_mask [n_options, L]``;
    row ``i`` is :func:`encode_mc` with answer ``i``, for scoring the options by likelihood."""
    rows = [encode_mc(tok, question, options, i, max_len, "text", list_options) for i in range(len(options))]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}
