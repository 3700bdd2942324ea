"""Independent answer checker for the moving-shapes benchmark.

It reads only what a user of the dataset has — the question text, the option texts and
the stored object tracks (``color``, ``shape``, ``positions [N,T,2]``, ``visible [N,T]``)
— parses the question and recomputes the answer index from the tracks.  It shares no
code with the generator (:mod:`td_jax.data.moving_shapes`), so a generator bug that makes
a stored answer disagree with the video shows up as a mismatch.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np


def _s(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _find(objects, color: str | None = None, shape: str | None = None) -> int:
    hits = [i for i, (c, s) in enumerate(zip(objects["color"], objects["shape"]))
            if (color is None or c == color) and (shape is None or s == shape)]
    if len(hits) != 1:
        raise ValueError(f"question refers to {color} {shape}: {len(hits)} matching objects")
    return hits[0]


def _visible_positions(objects, i: int) -> np.ndarray:
    return objects["positions"][i][objects["visible"][i]]


def _path_speed(objects, i: int) -> float:
    vis = objects["visible"][i]
    pos = objects["positions"][i]
    steps = [np.hypot(*(pos[t + 1] - pos[t])) for t in range(len(vis) - 1) if vis[t] and vis[t + 1]]
    return float(np.mean(steps)) if steps else 0.0


def _direction(objects, i: int) -> str:
    p = _visible_positions(objects, i)
    dx, dy = p[-1] - p[0]
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def _motion(objects, i: int) -> str:
    vis, pos = objects["visible"][i], objects["positions"][i]
    T = len(vis)
    if not vis[-1]:
        return "leaves the view"
    moved = np.abs(np.diff(pos, axis=0)).sum(axis=1) > 1e-6
    if not moved.any():
        return "never moves"
    if not moved[T - 1 - T // 4:].any():
        return "stops"
    return "keeps moving"


def _quadrant(objects, i: int, resolution: int) -> str:
    if not objects["visible"][i][-1]:
        raise ValueError("position question about an object not visible at the end")
    x, y = objects["positions"][i][-1]
    mid = (resolution - 1) / 2
    return ("top " if y < mid else "bottom ") + ("left" if x < mid else "right")


_COUNT = {1: "one", 2: "two", 3: "three", 4: "four"}


def answer_text(question: str, objects: Mapping[str, Any], resolution: int) -> str:
    """The text of the correct option for ``question``, computed from the tracks."""
    objects = {
        "color": [_s(c) for c in objects["color"]],
        "shape": [_s(s) for s in objects["shape"]],
        "positions": np.asarray(objects["positions"], np.float64),
        "visible": np.asarray(objects["visible"], bool),
    }
    names = [f"{c} {s}" for c, s in zip(objects["color"], objects["shape"])]
    if m := re.fullmatch(r"What color is the (\w+)\?", question):
        return objects["color"][_find(objects, shape=m[1])]
    if m := re.fullmatch(r"What shape is the (\w+) object\?", question):
        return objects["shape"][_find(objects, color=m[1])]
    if question == "How many objects appear in the video?":
        return _COUNT[int(objects["visible"].any(axis=1).sum())]
    if m := re.fullmatch(r"In which direction does the (\w+) (\w+) move\?", question):
        return _direction(objects, _find(objects, m[1], m[2]))
    if question == "Which object moves the fastest?":
        speeds = [_path_speed(objects, i) for i in range(len(names))]
        return names[int(np.argmax(speeds))]
    if m := re.fullmatch(r"What does the (\w+) (\w+) do\?", question):
        return _motion(objects, _find(objects, m[1], m[2]))
    if question == "Which object appears first?":
        firsts = [int(np.argmax(v)) if v.any() else 10**9 for v in objects["visible"]]
        return names[int(np.argmin(firsts))]
    if m := re.fullmatch(r"Where is the (\w+) (\w+) at the end of the video\?", question):
        return _quadrant(objects, _find(objects, m[1], m[2]), resolution)
    raise ValueError(f"checker does not know the question {question!r}")


def check_answer(example: Mapping[str, Any], resolution: int | None = None) -> int:
    """Recompute the answer index of a stored example (a TFDS record or generator dict)."""
    question = _s(example["question"])
    options: Sequence[str] = [_s(o) for o in example["options"]]
    res = resolution if resolution is not None else int(np.asarray(example["frames"]).shape[-2])
    text = answer_text(question, example["objects"], res)
    if options.count(text) != 1:
        raise ValueError(f"answer {text!r} occurs {options.count(text)} times in options {options}")
    return options.index(text)
