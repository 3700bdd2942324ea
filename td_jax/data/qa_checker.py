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


def _normalise(objects: Mapping[str, Any]) -> dict[str, Any]:
    """Tracks as plain Python strings and float64 / bool arrays (TFDS records hold bytes)."""
    return {
        "color": [_s(c) for c in objects["color"]],
        "shape": [_s(s) for s in objects["shape"]],
        "positions": np.asarray(objects["positions"], np.float64),
        "visible": np.asarray(objects["visible"], bool),
    }


def _names(objects) -> list[str]:
    return [f"{c} {s}" for c, s in zip(objects["color"], objects["shape"])]


def _resolution(example: Mapping[str, Any], resolution: int | None) -> int:
    return resolution if resolution is not None else int(np.asarray(example["frames"]).shape[-2])


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
    objects = _normalise(objects)
    names = _names(objects)
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
    res = _resolution(example, resolution)
    text = answer_text(question, example["objects"], res)
    if options.count(text) != 1:
        raise ValueError(f"answer {text!r} occurs {options.count(text)} times in options {options}")
    return options.index(text)


# ----------------------------------------------------------------------------- name-blind rules
#
# A fair question needs what it asks about: a question about "the red square" must not be
# answerable without reading "red square", and "which object appears first" must not be
# answerable without the order of appearance.  Each rule below answers from the tracks while
# ignoring the question's object name: it picks an object by a property a model could read
# off without the name (the farthest mover, the most visible one, ...) and answers with that
# object's value for the question's family (its colour, direction, behaviour, end quadrant,
# or its name).  ``text_prior`` answers from the question and option texts alone, with no
# video.  On a fair benchmark every rule stays near chance.


def track_stats(objects, resolution: int) -> dict[str, np.ndarray]:
    """Per-object summaries ``[N]`` of normalised tracks: ``visible`` (frames seen),
    ``partial`` (not visible throughout), ``last`` (last visible frame, -1 if never),
    ``displacement`` (first to last visible centre), ``speed`` (mean step between consecutive
    visible frames), ``moving`` (steps that move), ``border`` / ``centre`` (distance of the last
    visible centre to the nearest border / to the frame centre)."""
    vis, pos = objects["visible"], objects["positions"]          # [N, T], [N, T, 2]
    T = vis.shape[1]
    both = vis[:, :-1] & vis[:, 1:]
    steps = np.where(both, np.hypot(*np.moveaxis(np.diff(pos, axis=1), -1, 0)), 0.0)
    seen = vis.any(1)
    first = np.where(seen, np.argmax(vis, 1), -1)
    last = np.where(seen, T - 1 - np.argmax(vis[:, ::-1], 1), -1)
    rows = np.arange(len(vis))
    start, end = pos[rows, np.maximum(first, 0)], pos[rows, np.maximum(last, 0)]
    mid = (resolution - 1) / 2
    return {
        "visible": vis.sum(1).astype(np.float64),
        "partial": ~vis.all(1),
        "last": last,
        "displacement": np.where(seen, np.hypot(*(end - start).T), 0.0),
        "speed": steps.sum(1) / np.maximum(both.sum(1), 1),
        "moving": ((steps > 1e-6) & both).sum(1).astype(np.float64),
        "border": np.where(seen, np.minimum(end, resolution - 1 - end).min(1), np.inf),
        "centre": np.where(seen, np.hypot(*(end - mid).T), np.inf),
    }


def _first(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if len(hits) else None


OBJECT_RULES: dict[str, Any] = {
    "any_object": lambda st: 0,
    "farthest": lambda st: int(np.argmax(st["displacement"])),
    "fastest": lambda st: int(np.argmax(st["speed"])),
    "longest_moving": lambda st: int(np.argmax(st["moving"])),
    "most_visible": lambda st: int(np.argmax(st["visible"])),
    "least_visible": lambda st: int(np.argmin(st["visible"])),
    "enters_or_leaves": lambda st: _first(st["partial"]),
    "first_to_leave": lambda st: int(np.argmin(np.where(st["last"] < 0, np.inf, st["last"]))),
    "nearest_border_end": lambda st: int(np.argmin(st["border"])),
    "nearest_centre_end": lambda st: int(np.argmin(st["centre"])),
}
"""Name-blind object selectors: ``track_stats(...) -> object index`` (None: no pick); ties go
to the lowest index.  ``any_object`` is the first stored object (a random one: the generator
shuffles storage order)."""

BLIND_EXEMPT: dict[str, tuple[str, ...]] = {
    "speed": ("farthest", "fastest", "longest_moving"),
    "order": ("first_to_leave",),
}
"""Rules that read exactly what the family asks about (``speed``: who moves most) or the
same kind of information (``order``: when objects disappear is temporal order too), so they
are reported but are not shortcuts."""


def _object_value(family: str, objects, i: int, resolution: int) -> str | None:
    """The answer the family would get if object ``i`` were the one asked about."""
    if family == "color":
        return objects["color"][i]
    if family == "shape":
        return objects["shape"][i]
    if family in ("direction", "lone_direction"):
        return _direction(objects, i) if objects["visible"][i].any() else None
    if family == "motion":
        return _motion(objects, i)
    if family == "position":
        return _quadrant(objects, i, resolution) if objects["visible"][i][-1] else None
    if family in ("speed", "order"):
        return _names(objects)[i]
    return None  # count: no object is asked about


def object_answers(example: Mapping[str, Any], resolution: int | None = None) -> list[str | None]:
    """For every stored object, the answer the example's family would have if it asked about
    that object (None for ``count``, or where the object has no such value)."""
    family, objects = _s(example["family"]), _normalise(example["objects"])
    res = _resolution(example, resolution)
    return [_object_value(family, objects, i, res) for i in range(len(objects["color"]))]


def blind_answers(example: Mapping[str, Any], resolution: int | None = None) -> dict[str, str | None]:
    """Every object rule's answer text for ``example`` (None where the rule makes no pick or the
    family asks about no object).  Reads ``family``, the tracks and the frame size; never the
    question."""
    family = _s(example["family"])
    objects = _normalise(example["objects"])
    res = _resolution(example, resolution)
    stats = track_stats(objects, res)
    values: dict[int, str | None] = {}
    out = {}
    for name, rule in OBJECT_RULES.items():
        i = rule(stats)
        if i is not None and i not in values:
            values[i] = _object_value(family, objects, i, res)
        out[name] = None if i is None else values[i]
    return out


class TextPrior:
    """A no-video baseline: naive-Bayes-style scores of each option from its text, its position
    in the list, and (option text × question word) pairs, counted on ``fit`` examples.  It
    catches answer priors given the question text and option-list position biases."""

    def __init__(self):
        self._hits: dict[tuple, int] = {}
        self._seen: dict[tuple, int] = {}

    @staticmethod
    def _features(example: Mapping[str, Any], k: int) -> list[tuple]:
        fam = _s(example["family"])
        text = _s(example["options"][k])
        words = re.findall(r"\w+", _s(example["question"]).lower())
        return ([(fam, "text", text), (fam, "pos", k), (fam, "pos_text", k, text)]
                + [(fam, "word", w, text) for w in words])

    def fit(self, examples) -> "TextPrior":
        for ex in examples:
            for k in range(len(ex["options"])):
                for f in self._features(ex, k):
                    self._seen[f] = self._seen.get(f, 0) + 1
                    self._hits[f] = self._hits.get(f, 0) + int(k == int(ex["answer"]))
        return self

    def predict(self, example: Mapping[str, Any]) -> int:
        n = len(example["options"])
        base = np.log(1.0 / (n - 1))
        scores = []
        for k in range(n):
            s = 0.0
            for f in self._features(example, k):
                h, m = self._hits.get(f, 0), self._seen.get(f, 0)
                p = (h + 1.0) / (m + n)   # add-one smoothing towards 1/n
                s += np.log(p / (1 - p)) - base
            scores.append(s)
        return int(np.argmax(scores))


def blind_audit(examples, fit_examples, resolution: int | None = None) -> dict[str, dict[str, float]]:
    """Accuracy of every name-blind rule per family: ``{family: {"n": N, rule: accuracy}}``.

    ``fit_examples`` (other examples, e.g. another split) train :class:`TextPrior`.  A rule
    that makes no pick, or picks a value that is not among the options, is credited the
    expected accuracy of a guess (1 / number of options).
    """
    prior = TextPrior().fit(fit_examples)
    credit: dict[str, dict[str, float]] = {}
    for ex in examples:
        fam = _s(ex["family"])
        opts = [_s(o) for o in ex["options"]]
        truth = opts[int(ex["answer"])]
        row = credit.setdefault(fam, {"n": 0.0, "text_prior": 0.0})
        row["n"] += 1
        row["text_prior"] += float(prior.predict(ex) == int(ex["answer"]))
        if fam == "count":
            continue
        for rule, text in blind_answers(ex, resolution).items():
            row[rule] = row.get(rule, 0.0) + (float(text == truth) if text in opts else 1.0 / len(opts))
    return {fam: {k: (v if k == "n" else v / row["n"]) for k, v in row.items()} for fam, row in credit.items()}

