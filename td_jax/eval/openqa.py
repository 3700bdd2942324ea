"""Open-ended answers: normalisation, exact match / contains / token F1, option-letter parsing,
and a hook for an external judge.

    exact_match("The dog.", ["dog"]) == 1.0      # case, punctuation and articles ignored
    contains("a brown dog runs", ["dog"]) == 1.0  # a reference appears as whole words
    token_f1("brown dog", ["a dog"])             # best F1 of the word multisets over references
    parse_option("(B) a cat", ["dog", "cat"]) == 1

The paper's ActivityNet-QA protocol asks a GPT model whether each answer is right (yes/no and a
0-5 score); that needs an API we cannot call here.  :func:`load_judge` imports any function
``judge(question, prediction, references) -> {"correct": bool, "score": float}`` named as
``"package.module:function"`` so such a judge plugs in (``launch.eval --judge=...``).
"""
from __future__ import annotations

import collections
import importlib
import re
import string
from typing import Callable, Mapping, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def normalize(text: str) -> str:
    """Lower case, punctuation and the articles a/an/the removed, whitespace collapsed."""
    return " ".join(_ARTICLES.sub(" ", str(text).lower().translate(_PUNCT)).split())


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals a normalised reference."""
    p = normalize(prediction)
    return float(any(p == normalize(r) for r in references))


def contains(prediction: str, references: Sequence[str]) -> float:
    """1.0 if a normalised (non-empty) reference occurs in the normalised prediction as whole words."""
    p = f" {normalize(prediction)} "
    return float(any(normalize(r) and f" {normalize(r)} " in p for r in references))


def token_f1(prediction: str, references: Sequence[str]) -> float:
    """Best F1 over the references of the normalised word multisets (SQuAD's definition)."""
    p = normalize(prediction).split()
    best = 0.0
    for r in references:
        t = normalize(r).split()
        if not p or not t:
            best = max(best, float(p == t))
            continue
        common = sum((collections.Counter(p) & collections.Counter(t)).values())
        if common:
            prec, rec = common / len(p), common / len(t)
            best = max(best, 2 * prec * rec / (prec + rec))
    return best


SCORERS: dict[str, Callable[[str, Sequence[str]], float]] = {
    "exact_match": exact_match, "contains": contains, "token_f1": token_f1}


def score(prediction: str, references: Sequence[str]) -> dict[str, float]:
    """Every scorer of :data:`SCORERS` on one answer."""
    return {name: fn(prediction, references) for name, fn in SCORERS.items()}


def parse_option(text: str, options: Sequence[str]) -> int:
    """The option a generated answer picks: a bracketed letter ``(B)``, a letter alone or
    followed by ``.`` / ``)`` / ``:``, else the one option whose text it contains; -1 if none
    (or several texts) match."""
    letters = string.ascii_uppercase[:len(options)]
    t = str(text).strip()
    for pat in (r"\(([A-Z])\)", r"^([A-Z])(?:[.):\s]|$)", r"(?:^|\s)([A-Z])(?=[.):]|\s|$)"):
        for m in re.finditer(pat, t):
            if m.group(1) in letters:
                return letters.index(m.group(1))
    hits = [i for i, o in enumerate(options) if normalize(o) and f" {normalize(o)} " in f" {normalize(t)} "]
    return hits[0] if len(hits) == 1 else -1


Judge = Callable[[str, str, Sequence[str]], Mapping[str, float]]


def load_judge(spec: str) -> Judge:
    """The judge function named ``"package.module:function"`` (ValueError if it cannot be found)."""
    mod, _, fn = spec.partition(":")
    if not mod or not fn:
        raise ValueError(f"judge {spec!r}: expected 'package.module:function'")
    try:
        judge = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"judge {spec!r} not found: {e}") from None
    if not callable(judge):
        raise ValueError(f"judge {spec!r} is not callable")
    return judge


def run_judge(judge: Judge, question: str, prediction: str, references: Sequence[str]) -> dict[str, float]:
    """``{"judge_correct": 0/1, "judge_score": float}`` from one judge call (ValueError if the
    judge returns something else)."""
    out = judge(question, prediction, list(references))
    if not isinstance(out, Mapping) or "correct" not in out:
        raise ValueError(f"a judge must return {{'correct': bool, 'score': float}}, got {out!r}")
    return {"judge_correct": float(bool(out["correct"])), "judge_score": float(out.get("score", float(out["correct"])))}
