"""Procedural generator of the *moving shapes* video-QA benchmark (pure numpy).

A video is ``frames [T, R, R, 3] uint8``: coloured shapes on a textured grey background.
Each object has a track — ``positions [T, 2]`` float pixel centres ``(x, y)`` (y grows
downwards) and ``visible [T]`` bool — and moves with a direction and speed, may stop,
may enter late and may leave the view.  Each example asks one multiple-choice question
of one *family*; the families need different information:

=========== ==================================================== ======================
family      question                                             needs
=========== ==================================================== ======================
color       What color is the {shape}?                           appearance
shape       What shape is the {color} object?                    appearance
count       How many objects appear in the video?                appearance over time
direction   In which direction does the {color} {shape} move?    motion
speed       Which object moves the fastest?                      motion (speed)
motion      What does the {color} {shape} do?                    motion (stop / leave)
order       Which object appears first?                          temporal order
position    Where is the {color} {shape} at the end of the video? position at a moment
=========== ==================================================== ======================

One more family is a *control*, outside the 8: ``lone_direction`` asks the ``direction``
question of a scene that holds the asked object alone (same track law).  It needs the motion
and nothing else — no named object to find among others, so a name-blind rule answers it by
design — and so measures whether visual tokens carry the motion at all, apart from the
binding of a name to an object; curricula start with it.  ``moving_shapes_qa/motion_curriculum``
asks it beside motion's three families; reports keep it apart from the scored families.

No question has a shortcut.  ``color``, ``shape``, ``direction``, ``motion`` and
``position`` ask about one named object; their scenes hold exactly :data:`NUM_OPTIONS`
objects whose values (colour, shape, direction, behaviour, end quadrant) are the four
options, every track drawn by the same law whichever object is asked, so a rule that does
not read the name is right 1 time in 4.  ``speed`` objects bounce off the borders (where an
object is says nothing about its speed); ``order`` objects are seen for spans drawn
independently of the order (the first is not the longest visible).
:mod:`td_jax.data.qa_checker` audits this with name-blind rules (``blind_audit``).

Every question has :data:`NUM_OPTIONS` options.  Example ``index`` fixes the family
(``index % 8``), the answer letter and the answer value (cycled so both are balanced per
family) and seeds a private ``numpy`` generator, so a split is a pure function of
``(seed, split, index)``.  :mod:`td_jax.data.qa_checker` recomputes answers from the
tracks by a separate code path.
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (35, 195, 60),
    "blue": (45, 80, 235),
    "yellow": (240, 220, 35),
    "magenta": (215, 45, 215),
    "cyan": (35, 215, 225),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
SHAPES: tuple[str, ...] = ("square", "circle", "triangle", "cross")
FAMILIES: tuple[str, ...] = ("color", "shape", "count", "direction", "speed", "motion", "order", "position")
CONTROL_FAMILIES: tuple[str, ...] = ("lone_direction",)   # name-blind by design: reported apart from "all"
ALL_FAMILIES: tuple[str, ...] = FAMILIES + CONTROL_FAMILIES   # ``family_id`` indexes this
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
MOTIONS: tuple[str, ...] = ("keeps moving", "stops", "never moves", "leaves the view")
QUADRANTS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")
COUNT_WORDS: tuple[str, ...] = ("one", "two", "three", "four")
NUM_OPTIONS = 4
SPLITS: tuple[str, ...] = ("train", "validation", "test")
_MAX_TRIES = 200


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """Size of the videos.  ``radius`` 0 means ``max(3, round(0.08 * resolution))``."""

    num_frames: int = 16
    resolution: int = 64
    radius: int = 0

    def __post_init__(self):
        if self.num_frames < 8:
            raise ValueError(f"num_frames must be >= 8 (temporal families need room), got {self.num_frames}")
        if self.resolution < 24:
            raise ValueError(f"resolution must be >= 24 px, got {self.resolution}")

    @property
    def r(self) -> int:
        return self.radius or max(3, int(round(0.08 * self.resolution)))


@dataclasses.dataclass
class Obj:
    """One object: appearance and its track (``positions [T, 2]`` x,y; ``visible [T]``)."""

    color: str
    shape: str
    positions: np.ndarray
    visible: np.ndarray

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


# ----------------------------------------------------------------------------- tracks


def track(cfg: SceneConfig, start, disp, *, t_enter: int = 0, t_leave: int | None = None,
          t_move: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Linear track: ``start`` (x, y) moved by ``disp`` spread evenly over ``t_move`` frames.

    Returns ``positions [T, 2]`` float32 and ``visible [T]`` bool; an object is visible in
    ``[t_enter, t_leave)`` while its centre is inside the frame.
    """
    T, R = cfg.num_frames, cfg.resolution
    t_leave = T if t_leave is None else t_leave
    t0, t1 = t_move if t_move is not None else (t_enter, T - 1)
    t = np.arange(T, dtype=np.float64)
    frac = np.clip((t - t0) / max(t1 - t0, 1), 0.0, 1.0)
    pos = np.asarray(start, np.float64)[None] + frac[:, None] * np.asarray(disp, np.float64)[None]
    inside = np.all((pos >= 0) & (pos <= R - 1), axis=1)
    vis = (t >= t_enter) & (t < t_leave) & inside
    return pos.astype(np.float32), vis


def _place(rng, cfg: SceneConfig, disp) -> np.ndarray:
    """A start point such that start and start + disp keep a margin from the border."""
    m, R = cfg.r + 1, cfg.resolution
    out = []
    for d in disp:
        lo, hi = max(m, m - d), min(R - 1 - m, R - 1 - m - d)
        if lo > hi:
            raise ValueError(f"displacement {disp} does not fit in a {R}px frame")
        out.append(rng.uniform(lo, hi))
    return np.array(out)


def _vec(rng, length: float) -> np.ndarray:
    a = rng.uniform(0, 2 * np.pi)
    return length * np.array([np.cos(a), np.sin(a)])


def _random_track(rng, cfg: SceneConfig, window: tuple[int, int] | None = None):
    """A random track: static, moving, or moving then stopping; visible throughout.

    ``window`` ``(t0, t1)``: the frames it may move in (default the whole video); an object
    that is only visible in that window then shows its whole motion.
    """
    R, T = cfg.resolution, cfg.num_frames
    t0, t1 = window if window is not None else (0, T - 1)
    disp = _vec(rng, rng.uniform(0.0, 0.4) * R) if rng.random() < 0.75 else np.zeros(2)
    t_stop = t1 if rng.random() < 0.6 else int(rng.integers(t0 + (t1 - t0) // 3, t1))
    return track(cfg, _place(rng, cfg, disp), disp, t_move=(t0, t_stop))


def bounce_track(cfg: SceneConfig, start, velocity) -> tuple[np.ndarray, np.ndarray]:
    """Straight motion at ``velocity`` (px / frame) from ``start``, reflected off the borders.

    Centres stay in ``[m, R - 1 - m]`` (``m = r + 1``).  A uniform start stays uniform at every
    frame whatever the speed, so where an object is says nothing about how fast it goes.
    Returns ``positions [T, 2]`` float32 and ``visible [T]`` (all True).
    """
    T, R, m = cfg.num_frames, cfg.resolution, cfg.r + 1
    span = R - 1 - 2 * m
    t = np.arange(T, dtype=np.float64)[:, None]
    unfolded = np.asarray(start, np.float64)[None] - m + t * np.asarray(velocity, np.float64)[None]
    folded = span - np.abs(np.mod(unfolded, 2 * span) - span)   # triangle wave in [0, span]
    return (m + folded).astype(np.float32), np.ones(T, bool)


def _objects(rng, cfg: SceneConfig, n: int, *, distinct: str = "pair") -> list[tuple[str, str]]:
    """``n`` (color, shape) pairs; ``distinct`` is "pair", "color" or "shape"."""
    if distinct == "color":
        cols = rng.choice(COLOR_NAMES, n, replace=False)
        return [(str(c), str(rng.choice(SHAPES))) for c in cols]
    if distinct == "shape":
        shp = rng.choice(SHAPES, n, replace=False)
        return [(str(rng.choice(COLOR_NAMES)), str(s)) for s in shp]
    pairs = [(c, s) for c in COLOR_NAMES for s in SHAPES]
    idx = rng.choice(len(pairs), n, replace=False)
    return [pairs[i] for i in idx]


def separable(objs: list[Obj], cfg: SceneConfig) -> bool:
    """Every object has a frame where it is visible and clear of all other visible objects."""
    min_d = 2 * cfg.r + 2
    for i, o in enumerate(objs):
        ok = False
        for t in np.flatnonzero(o.visible):
            others = [p.positions[t] for j, p in enumerate(objs) if j != i and p.visible[t]]
            if all(np.hypot(*(o.positions[t] - q)) >= min_d for q in others):
                ok = True
                break
        if not ok:
            return False
    return True


# ----------------------------------------------------------------------------- families


def _options_with(rng, answer: str, pool, letter: int) -> list[str]:
    """``NUM_OPTIONS`` distinct options from ``pool`` with ``answer`` at index ``letter``."""
    wrong = [p for p in pool if p != answer]
    wrong = [str(w) for w in rng.permutation(wrong)[: NUM_OPTIONS - 1]]
    return wrong[:letter] + [answer] + wrong[letter:]


def _fam_color(rng, cfg, letter, value):
    # Four objects, one of each shape, four different colours: the options are exactly the
    # colours in the video, so only the asked shape tells which one is meant.
    answer = COLOR_NAMES[value % len(COLOR_NAMES)]
    others = [str(c) for c in rng.permutation([c for c in COLOR_NAMES if c != answer])[: NUM_OPTIONS - 1]]
    colors = [str(c) for c in rng.permutation([answer, *others])]
    shapes = [str(x) for x in rng.permutation(SHAPES)]
    objs = [Obj(c, x, *_random_track(rng, cfg)) for c, x in zip(colors, shapes)]
    target = objs[colors.index(answer)]
    return objs, f"What color is the {target.shape}?", _options_with(rng, answer, colors, letter)


def _fam_shape(rng, cfg, letter, value):
    # Four objects of four colours, one of each shape: only the asked colour tells which is meant.
    answer = SHAPES[value % len(SHAPES)]
    colors = [str(c) for c in rng.choice(COLOR_NAMES, NUM_OPTIONS, replace=False)]
    shapes = [str(x) for x in rng.permutation(SHAPES)]
    objs = [Obj(c, x, *_random_track(rng, cfg)) for c, x in zip(colors, shapes)]
    target = objs[shapes.index(answer)]
    return objs, f"What shape is the {target.color} object?", _options_with(rng, answer, SHAPES, letter)


def _fam_count(rng, cfg, letter, value):
    T = cfg.num_frames
    n = value % len(COUNT_WORDS) + 1
    objs = []
    for c, s in _objects(rng, cfg, n):
        t_enter = int(rng.integers(0, T // 2))
        t_leave = int(rng.integers(min(T, t_enter + T // 4 + 1), T + 1))
        pos, vis = _random_track(rng, cfg)
        objs.append(Obj(c, s, pos, vis & (np.arange(T) >= t_enter) & (np.arange(T) < t_leave)))
    return objs, "How many objects appear in the video?", _options_with(rng, COUNT_WORDS[n - 1], COUNT_WORDS, letter)


_DIR_VEC = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def _named_scene(rng, cfg, values, answer, make_track):
    """One object per option value, all drawn by the same law: ``(objs, target)``.

    Object ``k`` gets a random distinct (colour, shape) and ``make_track(rng, cfg, v)`` for
    its own value ``v`` (a random permutation of ``values``); the target is the object whose
    value is ``answer``.  Tracks do not depend on which object is asked about, and every
    option value is some object's, so any rule that ignores the asked object's name is
    right exactly 1 time in ``len(values)`` on average.
    """
    order = [values[i] for i in rng.permutation(len(values))]
    objs = [Obj(c, s, *make_track(rng, cfg, v)) for (c, s), v in zip(_objects(rng, cfg, len(values)), order)]
    return objs, objs[order.index(answer)]


def _direction_track(rng, cfg, direction: str):
    """Moves 0.35–0.55 R along ``direction`` (±0.1 R across it) over the whole video."""
    R = cfg.resolution
    major = np.array(_DIR_VEC[direction], np.float64) * rng.uniform(0.35, 0.55) * R
    minor = np.array(_DIR_VEC[direction][::-1], np.float64) * rng.uniform(-0.1, 0.1) * R
    disp = major + minor
    return track(cfg, _place(rng, cfg, disp), disp)


def _fam_direction(rng, cfg, letter, value):
    answer = DIRECTIONS[value % len(DIRECTIONS)]
    objs, target = _named_scene(rng, cfg, DIRECTIONS, answer, _direction_track)
    return objs, f"In which direction does the {target.name} move?", _options_with(rng, answer, DIRECTIONS, letter)


def _fam_lone_direction(rng, cfg, letter, value):
    answer = DIRECTIONS[value % len(DIRECTIONS)]
    (c, s), = _objects(rng, cfg, 1)
    target = Obj(c, s, *_direction_track(rng, cfg, answer))
    return [target], f"In which direction does the {target.name} move?", _options_with(rng, answer, DIRECTIONS, letter)


def _fam_speed(rng, cfg, letter, value):
    # Path lengths 0.45–0.6 R for the fastest, 0–0.25 R for the others, bouncing off the
    # borders from uniform starts: positions are uniform in every frame for every speed, so no
    # single frame tells the fastest apart (straight tracks put long paths near the borders).
    R, T, m = cfg.resolution, cfg.num_frames, cfg.r + 1
    lengths = [rng.uniform(0.45, 0.6) * R] + [rng.uniform(0.0, 0.25) * R for _ in range(NUM_OPTIONS - 1)]
    objs = [Obj(c, s, *bounce_track(cfg, rng.uniform(m, R - 1 - m, 2), _vec(rng, n) / (T - 1)))
            for (c, s), n in zip(_objects(rng, cfg, NUM_OPTIONS), lengths)]
    names = [o.name for o in objs]
    return objs, "Which object moves the fastest?", _options_with(rng, names[0], names, letter)


def _motion_track(rng, cfg, behaviour: str):
    """A track that ``behaviour`` (one of :data:`MOTIONS`) describes."""
    R, T = cfg.resolution, cfg.num_frames
    if behaviour == "keeps moving":
        d = _vec(rng, rng.uniform(0.3, 0.5) * R)
        return track(cfg, _place(rng, cfg, d), d)
    if behaviour == "stops":
        d = _vec(rng, rng.uniform(0.25, 0.4) * R)
        t_stop = int(rng.integers(max(2, T // 4), T // 2 + 1))
        return track(cfg, _place(rng, cfg, d), d, t_move=(0, t_stop))
    if behaviour == "never moves":
        return track(cfg, _place(rng, cfg, np.zeros(2)), np.zeros(2))
    if behaviour == "leaves the view":  # head for a border, exit between T/2 and 3T/4
        axis, sign = int(rng.integers(2)), int(rng.choice([-1, 1]))
        t_exit = int(rng.integers(T // 2, 3 * T // 4 + 1))
        start = _place(rng, cfg, np.zeros(2))
        edge = (R - 1 + cfg.r + 1) if sign > 0 else -(cfg.r + 1)
        speed = (edge - start[axis]) / t_exit            # px / frame along the axis, signed
        disp = np.zeros(2)
        disp[axis] = speed * (T - 1)
        return track(cfg, start, disp)
    raise ValueError(f"unknown behaviour {behaviour!r}; known: {MOTIONS}")


def _fam_motion(rng, cfg, letter, value):
    answer = MOTIONS[value % len(MOTIONS)]
    objs, target = _named_scene(rng, cfg, MOTIONS, answer, _motion_track)
    return objs, f"What does the {target.name} do?", _options_with(rng, answer, MOTIONS, letter)


def _fam_order(rng, cfg, letter, value):
    # Each object is visible for its own span of T/4 .. 7T/8 - gap frames, drawn independently
    # of the order, then vanishes (unless the span reaches the last frame), and moves only
    # while visible: how long and how far an object is seen says nothing about who came first.
    T = cfg.num_frames
    gap = max(1, T // 8)
    spans = rng.integers(T // 4, T - T // 8 - gap + 1, NUM_OPTIONS)
    first = int(rng.integers(0, T // 8 + 1))
    enters = [first] + [int(rng.integers(first + gap, T - spans[k] + 1)) for k in range(1, NUM_OPTIONS)]
    pairs = _objects(rng, cfg, NUM_OPTIONS)
    objs = []
    t = np.arange(T)
    for (c, s), te, n in zip(pairs, enters, spans):
        pos, vis = _random_track(rng, cfg, window=(te, te + n - 1))
        objs.append(Obj(c, s, pos, vis & (t >= te) & (t < te + n)))
    names = [o.name for o in objs]
    return objs, "Which object appears first?", _options_with(rng, names[0], names, letter)


def _quadrant_point(rng, cfg: SceneConfig, q: int) -> np.ndarray:
    R, m = cfg.resolution, cfg.r + 1
    mid = (R - 1) / 2
    lo_hi = [(m, mid - m), (mid + m, R - 1 - m)]
    x = rng.uniform(*lo_hi[q % 2])
    y = rng.uniform(*lo_hi[q // 2])
    return np.array([x, y])


def _position_track(rng, cfg, q_end: int):
    """From a point of another quadrant to a point of quadrant ``q_end`` (stops there half the time)."""
    T = cfg.num_frames
    q_start = int(rng.choice([q for q in range(len(QUADRANTS)) if q != q_end]))
    a, b = _quadrant_point(rng, cfg, q_start), _quadrant_point(rng, cfg, q_end)
    t_stop = T - 1 if rng.random() < 0.5 else int(rng.integers(T // 2, T - 1))
    return track(cfg, a, b - a, t_move=(0, t_stop))


def _fam_position(rng, cfg, letter, value):
    q_end = value % len(QUADRANTS)
    objs, target = _named_scene(rng, cfg, tuple(range(len(QUADRANTS))), q_end, _position_track)
    return (objs, f"Where is the {target.name} at the end of the video?",
            _options_with(rng, QUADRANTS[q_end], QUADRANTS, letter))


_FAMILY_FNS = {
    "color": _fam_color, "shape": _fam_shape, "count": _fam_count, "direction": _fam_direction,
    "speed": _fam_speed, "motion": _fam_motion, "order": _fam_order, "position": _fam_position,
    "lone_direction": _fam_lone_direction,
}


# ----------------------------------------------------------------------------- rendering


def _box5(a: np.ndarray, axis: int) -> np.ndarray:
    """Mean over a 5-wide window along ``axis``, zero-padded, same size (``np.convolve`` "same")."""
    pad = [(0, 0)] * a.ndim
    pad[axis] = (2, 2)
    p = np.pad(a, pad)
    n = a.shape[axis]
    return sum(np.take(p, np.arange(k, k + n), axis=axis) for k in range(5)) / 5


def background(rng, cfg: SceneConfig) -> np.ndarray:
    """Static textured grey background ``[R, R, 3]`` float32: smooth blobs, stripes, grain."""
    R = cfg.resolution
    coarse = rng.normal(size=(R // 8 + 2, R // 8 + 2))
    up = np.kron(coarse, np.ones((8, 8)))[:R, :R]
    up = _box5(_box5(up, 0), 1)
    yy, xx = np.mgrid[0:R, 0:R]
    ang, freq = rng.uniform(0, np.pi), rng.uniform(0.3, 0.8)
    stripes = np.sin(freq * (np.cos(ang) * xx + np.sin(ang) * yy))
    g = rng.uniform(85, 135) + 14 * up + 6 * stripes + rng.normal(0, 4, (R, R))
    tint = rng.uniform(-6, 6, 3)
    return (g[..., None] + tint).astype(np.float32)


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of ``shape`` of radius ``r`` at offsets ``dx, dy`` from its centre."""
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * r
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "triangle":  # apex up
        return (dy >= -r) & (dy <= 0.8 * r) & (np.abs(dx) <= (dy + r) * 0.6)
    if shape == "cross":
        t = 0.38 * r
        return ((np.abs(dx) <= t) & (np.abs(dy) <= r)) | ((np.abs(dy) <= t) & (np.abs(dx) <= r))
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def render(objs: list[Obj], cfg: SceneConfig, bg: np.ndarray) -> np.ndarray:
    """Draw visible objects (in list order) over ``bg``: ``frames [T, R, R, 3]`` uint8."""
    T, R, r = cfg.num_frames, cfg.resolution, cfg.r
    frames = np.repeat(np.clip(np.round(bg), 0, 255).astype(np.uint8)[None], T, axis=0)
    off = np.arange(2 * r + 4)                  # a window that covers every pixel within r of a centre
    for o in objs:
        ts = np.flatnonzero(o.visible)
        x, y = o.positions[ts, 0], o.positions[ts, 1]                       # [n]
        xs = np.floor(x - r - 1).astype(np.int64)[:, None] + off            # [n, w] pixel columns
        ys = np.floor(y - r - 1).astype(np.int64)[:, None] + off            # [n, w] pixel rows
        m = shape_mask(o.shape, xs[:, None, :] - x[:, None, None], ys[:, :, None] - y[:, None, None], r)
        m &= ((xs >= 0) & (xs < R))[:, None, :] & ((ys >= 0) & (ys < R))[:, :, None]   # [n, w, w]
        k, iy, ix = np.nonzero(m)
        frames[ts[k], ys[k, iy], xs[k, ix]] = COLORS[o.color]
    return frames


# ----------------------------------------------------------------------------- examples


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The private generator of one example: disjoint streams per (seed, split, index)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {SPLITS}")
    return np.random.default_rng([int(seed), SPLITS.index(split), int(index)])


def family_of(index: int, families: tuple[str, ...] = FAMILIES) -> str:
    return families[index % len(families)]


def _scene(cfg: SceneConfig, seed: int, split: str, index: int,
           families: tuple[str, ...]) -> tuple[np.random.Generator, list[Obj], dict[str, Any]]:
    """The example's generator (advanced past the scene), its objects in storage order and
    its record without frames."""
    bad = [f for f in families if f not in ALL_FAMILIES]
    if bad or not families:
        raise ValueError(f"unknown question families {bad or families}; known: {ALL_FAMILIES}")
    rng = example_rng(seed, split, index)
    fam = family_of(index, tuple(families))
    j = index // len(families)
    letter, value = j % NUM_OPTIONS, j // NUM_OPTIONS
    for _ in range(_MAX_TRIES):
        objs, question, options = _FAMILY_FNS[fam](rng, cfg, letter, value)
        if separable(objs, cfg):
            break
    else:  # pragma: no cover - geometry leaves ample room at the supported sizes
        raise RuntimeError(f"could not place separable objects for {split}/{index} ({fam}) at {cfg}")
    order = rng.permutation(len(objs))  # drawing (and storage) order carries no hint
    objs = [objs[i] for i in order]
    record = {
        "id": f"{split}/{index:07d}",
        "question": question,
        "options": list(options),
        "answer": int(letter),
        "family": fam,
        "family_id": ALL_FAMILIES.index(fam),
        "objects": {
            "color": [o.color for o in objs],
            "shape": [o.shape for o in objs],
            "positions": np.stack([o.positions for o in objs]).astype(np.float32),
            "visible": np.stack([o.visible for o in objs]).astype(bool),
        },
    }
    return rng, objs, record


def make_qa(cfg: SceneConfig, seed: int, split: str, index: int,
            families: tuple[str, ...] = FAMILIES) -> dict[str, Any]:
    """:func:`make_example` without ``frames`` (same question, options, answer and tracks;
    no rendering: for audits over many examples)."""
    return _scene(cfg, seed, split, index, families)[2]


def make_example(cfg: SceneConfig, seed: int, split: str, index: int,
                 families: tuple[str, ...] = FAMILIES) -> dict[str, Any]:
    """One example as a dict of numpy arrays / strings (the TFDS feature layout).

    Keys: ``id``, ``frames [T,R,R,3] uint8``, ``question``, ``options`` (list of str),
    ``answer`` (int), ``family`` (str), ``family_id`` (int), and ``objects``: a dict of
    ``color [N]``, ``shape [N]`` (str), ``positions [N,T,2]`` float32, ``visible [N,T]`` bool.
    ``families``: the families to cycle through (example ``i`` asks ``families[i % len]``);
    ``family_id`` stays the index in the full ``ALL_FAMILIES``.
    """
    rng, objs, record = _scene(cfg, seed, split, index, families)
    return {"id": record["id"], "frames": render(objs, cfg, background(rng, cfg)), **record}


def frames_digest(frames: np.ndarray) -> int:
    """A cheap content hash of a video (used to check split disjointness)."""
    return zlib.crc32(np.ascontiguousarray(frames).tobytes())
