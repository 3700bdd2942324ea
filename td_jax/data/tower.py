"""A pretrained, frozen stand-in vision tower for the moving-shapes benchmarks.

A real tower's token says what it shows, linearly: a SigLIP token on a red square can be
told from one on a red disc by a linear read-out, which is what a decoder's attention key
is.  The fixed random projection of ``td_jax.data.patch_embed`` keeps colour linear but not
shape (experiments/tower_probe.py: a linear probe of shape stays at the majority rate), so
a question naming "the <shape>" has nothing to match.  This module pretrains the tower's
per-window network instead, as a real tower is pretrained, on *other* videos (the same
generator with another seed, never a benchmark split):

    token = relu(window @ w1 + b1) @ w2 + b2          window: the (2c+1)p x (2c+1)p-px pixels around a patch

trained jointly with two linear heads that name, from the token alone, the shape and the
colour of the object drawn on the patch centre (or "background").  Only ``w1, b1, w2, b2``
are kept (``.npz``), rescaled so a token's per-entry RMS is ``rms`` (0.25, the random
projection's); ``patch_embed(..., tower=PATH)`` applies them, frozen, before the same
position embedding.  Shapes: frames ``[B, T, R, R, 3]`` uint8 → tokens ``[B, T, R/p, R/p, D]``.

    python -m launch.train_tower --out=/tmp/tower.npz            # (what prepare() of motion_qa runs)
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from typing import Callable

import numpy as np

ARRAYS = ("w1", "b1", "w2", "b2")
SCENE_FAMILIES = ("color", "direction", "order")     # the scenes the tower is trained on


def token_owner(objects: dict, t: int, h: int, w: int, patch: int, radius: float) -> np.ndarray:
    """Index of the object drawn on each patch centre of frame t (-1: background) -> [h, w].

    objects: an example's ``objects`` dict (``shape [N]``, ``positions [N, T, 2]`` x, y in
    pixels, ``visible [N, T]``), in drawing order (later objects are drawn on top)."""
    from td_jax.data.moving_shapes import shape_mask

    cy, cx = np.meshgrid(np.arange(h) * patch + (patch - 1) / 2, np.arange(w) * patch + (patch - 1) / 2,
                         indexing="ij")
    owner = -np.ones((h, w), np.int64)
    for j, shape in enumerate(objects["shape"]):
        if objects["visible"][j, t]:
            x0, y0 = objects["positions"][j, t]
            owner[shape_mask(shape, cx - x0, cy - y0, radius)] = j
    return owner


def window_pixels(frames: np.ndarray, patch: int, context: int) -> np.ndarray:
    """``frames [T, R, R, 3]`` uint8 → every patch's window ``[T, h, w, (2c+1)²·p²·3]`` float32
    in [-1, 1] (zero beyond the frame), in the layout ``patch_embed`` projects."""
    import jax.numpy as jnp
    import einops

    from td_jax.data.patch_embed import windows

    x = jnp.asarray(frames[None], jnp.float32) / 127.5 - 1.0
    x = einops.rearrange(x, "b t (h p) (w q) c -> b t h w (p q c)", p=patch, q=patch)
    return np.asarray(windows(x, context))[0]


def labelled_windows(videos: int, *, seed: int, patch: int, context: int, frames: int = 16, resolution: int = 64,
                     frame_stride: int = 2, background_per_frame: int = 8, split: str = "train"):
    """Windows on objects (every ``frame_stride``-th frame of ``videos`` generated videos of
    ``seed``) plus ``background_per_frame`` random background windows per frame:
    ``(x [M, F] float32, shape [M], colour [M])``, background = ``len(SHAPES)`` / ``len(COLOR_NAMES)``."""
    from td_jax.data.moving_shapes import COLOR_NAMES, SHAPES, SceneConfig, make_example

    cfg = SceneConfig(frames, resolution)
    rng = np.random.default_rng([seed, 1])
    xs, shapes, colours = [], [], []
    for i in range(videos):
        ex = make_example(cfg, seed, split, i, SCENE_FAMILIES)
        win = window_pixels(ex["frames"], patch, context)                       # [T, h, w, F]
        obj = ex["objects"]
        for t in range(0, win.shape[0], frame_stride):
            owner = token_owner(obj, t, win.shape[1], win.shape[2], patch, cfg.r)
            ys, xx = np.nonzero(owner >= 0)
            by, bx = np.nonzero(owner < 0)
            pick = rng.choice(len(by), min(background_per_frame, len(by)), replace=False)
            ys, xx = np.concatenate([ys, by[pick]]), np.concatenate([xx, bx[pick]])
            xs.append(win[t, ys, xx])
            own = owner[ys, xx]
            shapes += [SHAPES.index(obj["shape"][j]) if j >= 0 else len(SHAPES) for j in own]
            colours += [COLOR_NAMES.index(obj["color"][j]) if j >= 0 else len(COLOR_NAMES) for j in own]
    return np.concatenate(xs).astype(np.float32), np.asarray(shapes, np.int32), np.asarray(colours, np.int32)


def apply(params: dict, x, first: Callable | None = None):
    """The frozen tower on windows ``x [..., F]`` → tokens ``[..., D]`` (numpy or jax arrays).
    ``first(x, w1)``: how the first layer multiplies (default ``x @ w1``; ``patch_embed`` passes
    a convolution over un-windowed patches)."""
    import jax.numpy as jnp

    h = jnp.maximum((x @ params["w1"] if first is None else first(x, params["w1"])) + params["b1"], 0.0)
    return h @ params["w2"] + params["b2"]


def train_tower(out: str, *, patch: int = 4, context: int = 1, dim: int = 64, hidden: int = 128,
                videos: int = 240, test_videos: int = 40, steps: int = 3000, batch: int = 512, lr: float = 3e-3,
                seed: int = 0, data_seed: int = 1001, rms: float = 0.25, frames: int = 16, resolution: int = 64,
                log: Callable[[str], None] = print) -> dict:
    """Trains the tower on ``videos`` generated videos of ``data_seed`` and writes ``out`` (.npz,
    atomically); returns its meta (settings and the held-out accuracy of the linear heads on
    ``test_videos`` more videos of that seed, on object tokens only)."""
    import jax
    import jax.numpy as jnp
    import optax

    from td_jax.data.moving_shapes import COLOR_NAMES, SHAPES

    if min(patch, dim, hidden, videos, test_videos, steps, batch) < 1 or context < 0:
        raise ValueError("train_tower: patch, dim, hidden, videos, test_videos, steps, batch must be >= 1 and "
                         f"context >= 0; got {dict(patch=patch, dim=dim, hidden=hidden, videos=videos)}")
    t0 = time.time()
    geo = dict(patch=patch, context=context, frames=frames, resolution=resolution)
    x, ys, yc = labelled_windows(videos, seed=data_seed, **geo)
    xt, yst, yct = labelled_windows(test_videos, seed=data_seed, split="validation", background_per_frame=0, **geo)
    log(f"[tower] {len(x):,} train windows ({videos} videos of seed {data_seed}), {len(xt):,} held-out "
        f"({time.time() - t0:.0f}s)")
    ns, nc = len(SHAPES) + 1, len(COLOR_NAMES) + 1
    f_in = x.shape[1]
    k = jax.random.split(jax.random.key(seed), 4)

    def init(key, shape):
        return jax.random.normal(key, shape) / np.sqrt(shape[0])

    params = {"w1": init(k[0], (f_in, hidden)), "b1": jnp.zeros(hidden), "w2": init(k[1], (hidden, dim)),
              "b2": jnp.zeros(dim), "hs": init(k[2], (dim, ns)), "hc": init(k[3], (dim, nc))}
    opt = optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=1e-4)
    state = opt.init(params)

    def loss_fn(p, xb, sb, cb):
        z = apply(p, xb)
        ls = optax.softmax_cross_entropy_with_integer_labels(z @ p["hs"], sb).mean()
        lc = optax.softmax_cross_entropy_with_integer_labels(z @ p["hc"], cb).mean()
        return ls + lc

    @jax.jit
    def step(p, s, xb, sb, cb):
        loss, g = jax.value_and_grad(loss_fn)(p, xb, sb, cb)
        upd, s = opt.update(g, s, p)
        return optax.apply_updates(p, upd), s, loss

    rng = np.random.default_rng([seed, 2])
    last = time.time()
    for i in range(steps):
        idx = rng.integers(0, len(x), batch)
        params, state, loss = step(params, state, x[idx], ys[idx], yc[idx])
        if time.time() - last > 15 or i == steps - 1:
            last = time.time()
            log(f"[tower] step {i + 1}/{steps} loss {float(loss):.4f} ({time.time() - t0:.0f}s)")
    p = jax.device_get(params)
    z = np.asarray(apply(p, xt))
    acc = {"shape": float(np.mean((z @ p["hs"]).argmax(-1) == yst)),
           "colour": float(np.mean((z @ p["hc"]).argmax(-1) == yct))}
    scale = rms / float(np.sqrt(np.mean(np.asarray(apply(p, x)) ** 2)))
    kept = {"w1": np.asarray(p["w1"], np.float32), "b1": np.asarray(p["b1"], np.float32),
            "w2": np.asarray(p["w2"] * scale, np.float32), "b2": np.asarray(p["b2"] * scale, np.float32)}
    meta = {"patch": patch, "context": context, "dim": dim, "hidden": hidden, "videos": videos,
            "test_videos": test_videos, "steps": steps,
            "batch": batch, "lr": lr, "seed": seed, "data_seed": data_seed, "rms": rms, "frames": frames,
            "resolution": resolution, "train_windows": int(len(x)), "held_out_windows": int(len(xt)),
            "held_out_linear_accuracy": acc, "seconds": round(time.time() - t0, 1)}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp.npz"
    np.savez(tmp, meta=np.asarray(json.dumps(meta, sort_keys=True)), **kept)
    os.replace(tmp, out)
    log(f"[tower] held-out linear heads: shape {acc['shape']:.3f}, colour {acc['colour']:.3f}; wrote {out} "
        f"({meta['seconds']:.0f}s)")
    return meta


def ensure_tower(out: str, log: Callable[[str], None] = print, **settings) -> dict:
    """The tower at ``out``, trained first if absent; refused if it was trained with other settings."""
    if os.path.isfile(out):
        meta = read_meta(out)
        diff = {k: (meta.get(k), v) for k, v in settings.items() if meta.get(k) != v}
        if diff:
            raise ValueError(f"the tower at {out} was trained with other settings {diff} (stored, wanted): "
                             "delete it or write elsewhere")
        return meta
    return train_tower(out, log=log, **settings)


def read_meta(path: str) -> dict:
    with _open(path) as z:
        return json.loads(str(z["meta"]))


def _open(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tower weights {path!r} not found (train them: python -m launch.train_tower "
                                f"--out={path})")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"tower weights {path!r} are not a readable .npz ({e})") from None


@functools.lru_cache(maxsize=8)
def _load(path: str, stamp: tuple) -> tuple:
    del stamp
    with _open(path) as z:
        missing = [k for k in ARRAYS if k not in z.files]
        if missing:
            raise ValueError(f"tower weights {path!r} lack arrays {missing} (have {sorted(z.files)})")
        arrays = {k: np.asarray(z[k], np.float32) for k in ARRAYS}
    w1, b1, w2, b2 = (arrays[k] for k in ARRAYS)
    if w1.ndim != 2 or w2.ndim != 2 or b1.shape != (w1.shape[1],) or w2.shape[0] != w1.shape[1] or \
            b2.shape != (w2.shape[1],):
        raise ValueError(f"tower weights {path!r}: inconsistent shapes "
                         f"{ {k: v.shape for k, v in arrays.items()} }")
    if not all(np.isfinite(v).all() for v in arrays.values()):
        raise ValueError(f"tower weights {path!r} hold non-finite values")
    for v in arrays.values():
        v.flags.writeable = False
    return tuple(arrays[k] for k in ARRAYS)


def load(path: str) -> dict:
    """The tower's frozen arrays ``{w1 [F, H], b1 [H], w2 [H, D], b2 [D]}`` (cached per file
    version; a missing, damaged or inconsistent file is a clear error)."""
    path = os.path.abspath(path)
    st = os.stat(path) if os.path.isfile(path) else None
    return dict(zip(ARRAYS, _load(path, (st.st_mtime_ns, st.st_size) if st else None)))


def digest(path: str) -> str:
    """sha1 of the tower's arrays (what a token store records, so a retrained tower is noticed)."""
    h = hashlib.sha1()
    for k, v in load(path).items():
        h.update(k.encode())
        h.update(np.ascontiguousarray(v).tobytes())
    return h.hexdigest()
