r"""Can one token of the motion-QA frozen tower tell the object under it?  A per-token probe.

    python -m experiments.tower_probe [--contexts=0,1] [--probes=linear,mlp] \
        [--train_videos=300] [--test_videos=100] [--out=results/tower_probe.md]

Every named-object family of the motion-QA miniature (experiments/motion_qa.py) asks about
"the <shape>" or "the <colour> <shape>": a reader must find that object's tokens.  With the
decoder reading visual tokens as keys/values only (no visual-to-visual attention), a token's
key is a function of that token alone, so the object's identity must be readable from each
of its tokens — as it is from a real tower's (SigLIP tokens carry what they show linearly).

This probe takes the tower exactly as the motion-QA runs build it (``td_jax.data.patch_embed``
with the task's default patch settings and ``--contexts``), labels every token whose patch
centre lies on an object with that object's shape and colour (the topmost object, from the
generator's tracks), and fits, on the train split's videos, a linear (logistic regression)
and an MLP (two hidden layers of 256) probe; it reports held-out accuracy on the test split
against the majority class.  Shape at the majority rate means "the <shape>" cannot be
located from the tokens by a linear key, whatever the compressor.
"""
from __future__ import annotations

import time

import numpy as np

FAMILIES = ("color", "direction", "order")   # moving_shapes_qa/motion's families (scenes only)
PROBES = ("linear", "mlp")


def token_owner(objects: dict, t: int, h: int, w: int, patch: int, radius: float) -> np.ndarray:
    """Index of the object drawn on each patch centre of frame t (-1: background) -> [h, w].

    objects: the example's ``objects`` dict (``shape [N]``, ``positions [N, T, 2]`` x, y in
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


def labelled_tokens(split: str, videos: int, context: int, *, frames: int, resolution: int, patch: int,
                    frame_stride: int = 4, seed: int = 0):
    """Tokens [M, D] on objects in every ``frame_stride``-th frame of ``videos`` examples of
    moving_shapes_qa/motion's ``split``, with the shape and colour ids [M] of their objects."""
    import jax

    from td_jax.data.moving_shapes import COLOR_NAMES, SHAPES, SceneConfig, make_example
    from td_jax.data.patch_embed import make_patch_embed
    from td_jax.train.video_qa import VideoQA

    p = VideoQA.default_config().patch
    embed = jax.jit(make_patch_embed(patch_size=patch, dim=p.dim, seed=p.seed, pos_embed=p.pos_embed,
                                     pos_scale=p.pos_scale, temporal=p.temporal, context=context))
    cfg = SceneConfig(frames, resolution)
    xs, shapes, colours = [], [], []
    for i in range(videos):
        ex = make_example(cfg, seed, split, i, FAMILIES)
        tok = np.asarray(embed(ex["frames"][None]))[0]                      # [T, h, w, D]
        obj = ex["objects"]
        for t in range(0, tok.shape[0], frame_stride):
            owner = token_owner(obj, t, tok.shape[1], tok.shape[2], patch, cfg.r)
            ys, xx = np.nonzero(owner >= 0)
            xs.append(tok[t, ys, xx])
            shapes += [SHAPES.index(obj["shape"][j]) for j in owner[ys, xx]]
            colours += [COLOR_NAMES.index(obj["color"][j]) for j in owner[ys, xx]]
    return np.concatenate(xs), np.asarray(shapes), np.asarray(colours)


def fit_probe(kind: str, x: np.ndarray, y: np.ndarray, seed: int = 0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "linear":
        model = LogisticRegression(max_iter=3000)
    elif kind == "mlp":
        model = MLPClassifier((256, 256), max_iter=300, random_state=seed)
    else:
        raise ValueError(f"unknown probe {kind!r}; known: {PROBES}")
    return make_pipeline(StandardScaler(), model).fit(x, y)


def run(contexts, probes, train_videos: int, test_videos: int, *, frames: int = 16, resolution: int = 64,
        patch: int = 4, log=print) -> list[dict]:
    """One row per (context, probe, target): held-out and train accuracy, majority rate."""
    rows = []
    for c in contexts:
        t0 = time.perf_counter()
        data = {split: labelled_tokens(split, n, c, frames=frames, resolution=resolution, patch=patch)
                for split, n in (("train", train_videos), ("test", test_videos))}
        for kind in probes:
            for target, col in (("shape", 1), ("colour", 2)):
                model = fit_probe(kind, data["train"][0], data["train"][col])
                y_test = data["test"][col]
                rows.append({"context": c, "probe": kind, "target": target,
                             "held_out": float(model.score(data["test"][0], y_test)),
                             "train": float(model.score(data["train"][0], data["train"][col])),
                             "majority": float(np.bincount(y_test).max() / len(y_test)),
                             "train_tokens": int(len(data["train"][0])), "test_tokens": int(len(y_test))})
                r = rows[-1]
                log(f"  context={c} {kind:6s} {target:6s}: held-out {r['held_out']:.3f} (majority "
                    f"{r['majority']:.3f}, train {r['train']:.3f}) [{time.perf_counter() - t0:.0f} s]")
    return rows


def markdown(rows: list[dict], command: str) -> str:
    r0 = rows[0]
    out = ["# Does one frozen-tower token tell the object under it?", "",
           f"`{command}` — the motion-QA tower (experiments/motion_qa.py settings: 16 frames of 64 px, "
           f"4-px patches, width 64, 2-D sin-cos position embedding); tokens whose patch centre lies on an "
           f"object, every 4th frame ({r0['train_tokens']:,} train / {r0['test_tokens']:,} held-out tokens); "
           "probes standardise the tokens first. See the docstring of experiments/tower_probe.py.", "",
           "| context (patches each side) | probe | shape: held-out (majority) | colour: held-out (majority) | "
           "shape / colour train |", "|---|---|---|---|---|"]
    keys = sorted({(r["context"], r["probe"]) for r in rows}, key=lambda k: (k[0], PROBES.index(k[1])))
    for c, kind in keys:
        s = next(r for r in rows if (r["context"], r["probe"], r["target"]) == (c, kind, "shape"))
        col = next(r for r in rows if (r["context"], r["probe"], r["target"]) == (c, kind, "colour"))
        out.append(f"| {c} | {kind} | {100 * s['held_out']:.1f}% ({100 * s['majority']:.1f}%) | "
                   f"{100 * col['held_out']:.1f}% ({100 * col['majority']:.1f}%) | "
                   f"{100 * s['train']:.1f}% / {100 * col['train']:.1f}% |")
    return "\n".join(out) + "\n"


def main(argv):
    del argv
    import sys

    from absl import app, flags

    from experiments.benchmarks import write_results

    f = flags.FLAGS
    bad = [p for p in f.probes if p not in PROBES]
    if bad:
        raise app.UsageError(f"--probes: unknown {bad}; known: {PROBES}")
    rows = run([int(c) for c in f.contexts], list(f.probes), f.train_videos, f.test_videos)
    md = markdown(rows, "python -m experiments.tower_probe " + " ".join(sys.argv[1:]))
    print(md)
    if f.out:
        write_results(f.out, md, {"rows": rows})


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_list("contexts", ["0", "1"], "Tower contexts (patches each side a token sees) to probe.")
    flags.DEFINE_list("probes", list(PROBES), f"Probes, of {PROBES}.")
    flags.DEFINE_integer("train_videos", 300, "Train-split videos the probes fit on.", lower_bound=1)
    flags.DEFINE_integer("test_videos", 100, "Test-split videos they are scored on.", lower_bound=1)
    flags.DEFINE_string("out", "", "Also write the markdown (and a .json beside it) here.")
    app.run(main)
