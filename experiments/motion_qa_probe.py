r"""Does a compressed store hold what a motion-QA family needs?  A name-conditioned readout probe.

    python -m experiments.motion_qa_probe [--root=/tmp/td_jax_motion_qa] [--arg=tower=random,warmup=0] [--family=direction|color] \
        [--steps=3000] [--seeds=0,1] [--out=results/motion_qa_probe.md]

The motion-QA decoder (experiments/motion_qa.py) may fail to *learn* a family although the
compressed tokens *hold* the answer.  This probe separates the two for the token-dynamics
store (k-means base ``[K, D]`` + dynamics map ``[T, H, W]``, the stage every token-dynamics
arm reads): on the *direction* family ("In which direction does the <colour> <shape>
move?") a tiny model is trained with full supervision on the store's train split and scored
on validation + test:

  score_k = q(name) · key(base_k)     name = one-hot colour + one-hot shape of the question
  answer  = out(Σ_k softmax(score)_k · val(base_k, traj_k))   traj_k [T·3] = area, centre y, x of
                                                              cluster k in each frame (from the map)

in four settings: with / without the name (name-blind: must stay at chance, 25%, because
the dataset gives every option value to some object) and with / without the map's
trajectories (base only).  The probe sees no more than the arms do (the stored base and map;
the cross-dynamics attention computes the same per-frame area and centre from the map), so
its held-out accuracy is what these 8 tokens make reachable for a reader of this size with
plenty of supervision — not an upper bound on every reader, and not a model the benchmark ranks.

``--family=color`` asks the same of *color* questions ("What color is the <shape>?", the
options being the four colours in the video): the name is the shape alone, the answer one of
the question's four colours (chance 25%), so it tests whether a named object's colour
survives in the 8 tokens — the binding every family needs, without motion.
"""
from __future__ import annotations

import functools
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from td_jax.data import tokens_store
from td_jax.data.moving_shapes import COLOR_NAMES, DIRECTIONS, SHAPES

SETTINGS = (("name + base + map", True, True), ("name + base", True, False), ("base + map, name-blind", False, True),
            ("base, name-blind", False, False))


def trajectories(dmap: np.ndarray, k: int) -> np.ndarray:
    """dmap [T, H, W] int cluster ids → per-cluster per-frame (area share, centre y, centre x)
    flattened to [k, T·3] float32 (centre 0 where the cluster is absent; coordinates in [0, 1])."""
    t, h, w = dmap.shape
    on = (dmap[None] == np.arange(k)[:, None, None, None]).astype(np.float32)     # [k, T, H, W]
    area = on.sum((2, 3))
    ys = np.arange(h, dtype=np.float32) / max(h - 1, 1)
    xs = np.arange(w, dtype=np.float32) / max(w - 1, 1)
    cy = np.einsum("ktij,i->kt", on, ys) / np.maximum(area, 1)
    cx = np.einsum("ktij,j->kt", on, xs) / np.maximum(area, 1)
    return np.stack([area / (h * w), cy, cx], -1).reshape(k, t * 3)


# family -> (the answer's vocabulary, whether the question names the object's colour)
FAMILIES = {"direction": (DIRECTIONS, True), "color": (COLOR_NAMES, False)}


def check_family(family: str) -> None:
    """A ValueError naming the families the probe reads, unless ``family`` is one."""
    if family not in FAMILIES:
        raise ValueError(f"the probe reads the families {sorted(FAMILIES)}, got family={family!r}")


def name_vector(question: str, family: str = "direction") -> np.ndarray:
    """One-hot colour (6) + one-hot shape (4) of the object a question names: a *direction*
    question names colour and shape ("the red circle"), a *color* question the shape only."""
    check_family(family)
    v = np.zeros(len(COLOR_NAMES) + len(SHAPES), np.float32)
    c = [i for i, n in enumerate(COLOR_NAMES) if re.search(rf"\b{n}\b", question)]
    s = [i for i, n in enumerate(SHAPES) if re.search(rf"\b{n}\b", question)]
    want_colour = FAMILIES[family][1]
    if len(s) != 1 or len(c) != int(want_colour):
        what = "one colour and one shape" if want_colour else "one shape and no colour"
        raise ValueError(f"cannot read {what} from the {family} question {question!r}")
    if want_colour:
        v[c[0]] = 1.0
    v[len(COLOR_NAMES) + s[0]] = 1.0
    return v


def load(store: str, split: str, family: str = "direction") -> dict[str, np.ndarray]:
    """The store's ``family`` examples of ``split``: base [N, K, D], traj [N, K, T·3], name [N, 10],
    allowed [N, C] (the question's options among the family's C answer values), label [N] (index
    into them)."""
    from array_record.python.array_record_module import ArrayRecordReader

    check_family(family)
    vocab = list(FAMILIES[family][0])
    path = tokens_store.split_path(store, split)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {split} split in the store {store!r} (build it: experiments/motion_qa.prepare)")
    reader = ArrayRecordReader(path)
    out = {"base": [], "traj": [], "name": [], "allowed": [], "label": []}
    for raw in reader.read_all():
        e = tokens_store.decode_record(raw)
        if e["family"] != family:
            continue
        if "pre/dynamics_map" not in e:
            raise ValueError(f"store {store!r} holds no dynamics map (not a token-dynamics store)")
        base = np.asarray(e["pre/base"], np.float32)
        out["base"].append(base)
        out["traj"].append(trajectories(np.asarray(e["pre/dynamics_map"]).astype(np.int64), base.shape[0]))
        out["name"].append(name_vector(e["question"], family))
        out["allowed"].append(np.isin(vocab, e["options"]))
        out["label"].append(vocab.index(e["options"][e["answer"]]))
    reader.close()
    if not out["label"]:
        raise ValueError(f"no {family!r} examples in {path}")
    return {k: np.stack(v) for k, v in out.items()}


def _mlp(params, x):
    for i, (w, b) in enumerate(params):
        x = x @ w + b
        if i < len(params) - 1:
            x = jax.nn.gelu(x)
    return x


def _init(key, sizes):
    keys = jax.random.split(key, len(sizes) - 1)
    return [(jax.random.normal(k, (a, b)) / np.sqrt(a), jnp.zeros((b,))) for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


def _logits(params, base, traj, name, valid, allowed):
    q = _mlp(params["q"], name)                                         # [B, E]
    a = jax.nn.softmax(jnp.einsum("be,bke->bk", q, _mlp(params["k"], base)) + jnp.where(valid, 0.0, -1e9), -1)
    v = _mlp(params["v"], jnp.concatenate([base, traj], -1))           # [B, K, E]
    out = _mlp(params["o"], jnp.einsum("bk,bke->be", a, v))            # [B, C]
    return jnp.where(allowed, out, -1e9)                                # only the question's options


def fit(train: dict, test: dict, *, use_name: bool = True, use_map: bool = True, steps: int = 3000,
        batch: int = 128, lr: float = 1e-3, width: int = 64, seed: int = 0) -> tuple[float, float]:
    """Trains the probe on ``train`` and returns (train accuracy, test accuracy); both are dicts
    as :func:`load` returns them. Without the name its query is constant; without the map the
    trajectories are zeros."""
    def prep(d):
        base = jnp.asarray(d["base"])
        valid = jnp.linalg.norm(base, axis=-1) > 0
        traj = jnp.asarray(d["traj"]) * (1.0 if use_map else 0.0)
        name = jnp.asarray(d["name"]) * (1.0 if use_name else 0.0)
        return base, traj, name, valid, jnp.asarray(d["allowed"], bool), jnp.asarray(d["label"])

    tr, te = prep(train), prep(test)
    d, f, n, c = tr[0].shape[-1], tr[1].shape[-1], tr[2].shape[-1], tr[4].shape[-1]
    key = jax.random.key(seed)
    kq, kk, kv, ko, kb = jax.random.split(key, 5)
    params = {"q": _init(kq, [n, width, width // 2]), "k": _init(kk, [d, width, width // 2]),
              "v": _init(kv, [d + f, 2 * width, width]), "o": _init(ko, [width, width, c])}
    params = _train(params, tr, kb, steps=steps, batch=batch, lr=lr)
    return float(_accuracy(params, tr)), float(_accuracy(params, te))


@functools.partial(jax.jit, static_argnames=("steps", "batch", "lr"))
def _train(params, data, key, *, steps: int, batch: int, lr: float):
    """``steps`` AdamW steps on batches drawn from ``data`` = (base, traj, name, valid, allowed, label).
    The data are arguments, not constants: one program per shape serves every setting and seed."""
    opt = optax.adamw(lr, weight_decay=1e-4)

    def loss(p, *b):
        return optax.softmax_cross_entropy_with_integer_labels(_logits(p, *b[:5]), b[5]).mean()

    def one(carry, i):
        p, s = carry
        idx = jax.random.randint(jax.random.fold_in(key, i), (batch,), 0, data[0].shape[0])
        g = jax.grad(loss)(p, *(a[idx] for a in data))
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    return jax.lax.scan(one, (params, opt.init(params)), jnp.arange(steps))[0][0]


@jax.jit
def _accuracy(params, data):
    return jnp.mean(jnp.argmax(_logits(params, *data[:5]), -1) == data[5])


def run(store: str, *, family: str = "direction", steps: int = 3000, seeds=(0, 1), log=print) -> list[dict]:
    """Every setting x seed on ``store``'s ``family`` questions:
    [{setting, seed, train, held_out, n_train, n_held_out}]."""
    t0 = time.time()
    train = load(store, "train", family)
    held = [load(store, s, family) for s in ("validation", "test")]
    held = {k: np.concatenate([h[k] for h in held]) for k in held[0]}
    log(f"[probe] {len(train['label'])} train / {len(held['label'])} held-out {family} questions "
        f"({time.time() - t0:.0f}s)")
    rows = []
    for label, use_name, use_map in SETTINGS:
        for seed in seeds:
            a_tr, a_te = fit(train, held, use_name=use_name, use_map=use_map, steps=steps, seed=seed)
            rows.append({"setting": label, "seed": seed, "train": a_tr, "held_out": a_te,
                         "n_train": len(train["label"]), "n_held_out": len(held["label"])})
            log(f"[probe] {label:26s} seed {seed}: train {a_tr:.3f}  held-out {a_te:.3f}  ({time.time() - t0:.0f}s)")
    return rows


def markdown(rows: list[dict], store: str, command: str, family: str = "direction") -> str:
    n = rows[0]["n_held_out"]
    se = 100 * np.sqrt(0.25 * 0.75 / n)
    named = "colour + shape" if FAMILIES[family][1] else "shape"
    out = [f"# What the token-dynamics store holds for *{family}*: a name-conditioned probe", "",
           f"`{command}` — store `{store}` (k-means base + dynamics map, 8 tokens of 4,096); "
           f"{rows[0]['n_train']} train / {n} held-out (validation + test) {family} questions, the name read "
           f"from the question is the object's {named}; chance 25% "
           f"(binomial SE at chance {se:.1f} points). See the docstring of experiments/motion_qa_probe.py.", "",
           "| probe reads | held-out accuracy (%) per seed | mean | train accuracy (%) |", "|---|---|---|---|"]
    for label, *_ in SETTINGS:
        rs = [r for r in rows if r["setting"] == label]
        held = ", ".join(f"{100 * r['held_out']:.1f}" for r in rs)
        train = ", ".join(f"{100 * r['train']:.1f}" for r in rs)
        out.append(f"| {label} | {held} | {100 * np.mean([r['held_out'] for r in rs]):.1f} | {train} |")
    return "\n".join(out) + "\n"


def main(argv):
    del argv
    import sys

    from absl import flags

    from experiments import motion_qa
    from experiments.benchmarks import write_results

    f = flags.FLAGS
    arg = ",".join(filter(None, [f.arg, f"root={f.root}", "arms=token_dynamics"]))
    store = f.store or next(a["store"] for a in motion_qa.plan(arg)["arms"])
    rows = run(store, family=f.family, steps=f.steps, seeds=[int(s) for s in f.seeds])
    md = markdown(rows, store, "python -m experiments.motion_qa_probe " + " ".join(sys.argv[1:]), f.family)
    print(md)
    if f.out:
        write_results(f.out, md, {"store": store, "family": f.family, "steps": f.steps, "rows": rows})


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("root", "/tmp/td_jax_motion_qa", "Motion-QA data root (experiments/motion_qa.py root=).")
    flags.DEFINE_string("store", "", "A token-dynamics store directory ('' = the grid's of --arg, under --root).")
    flags.DEFINE_string("arg", "", "experiments/motion_qa.py arg whose token-dynamics store to read ('' = the default "
                        "grid's; e.g. tower=random,warmup=0).")
    flags.DEFINE_enum("family", "direction", sorted(FAMILIES), "Question family: direction (the name is the "
                      "object's colour + shape) or color (the name is its shape).")
    flags.DEFINE_integer("steps", 3000, "Probe training steps (batch 128).")
    flags.DEFINE_list("seeds", ["0", "1"], "Probe seeds per setting.")
    flags.DEFINE_string("out", "", "Also write the markdown (and a .json beside it) here.")
    app.run(main)
