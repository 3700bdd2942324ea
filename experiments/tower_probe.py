r"""Can one token of the motion-QA frozen tower tell the object under it?  A per-token probe.

    python -m experiments.tower_probe [--towers=random:0,random:1,pretrained:1] [--probes=linear,mlp] \
        [--train_videos=300] [--test_videos=100] [--root=/tmp/td_jax_motion_qa] [--out=results/tower_probe.md]

Every named-object family of the motion-QA miniature (experiments/motion_qa.py) asks about
"the <shape>" or "the <colour> <shape>": a reader must find that object's tokens.  With the
decoder reading visual tokens as keys/values only (no visual-to-visual attention), a token's
key is a function of that token alone, so the object's identity must be readable from each
of its tokens — as it is from a real tower's (SigLIP tokens carry what they show linearly).

This probe takes the tower exactly as the motion-QA runs build it (``td_jax.data.patch_embed``
with the task's default patch settings; ``--towers``: ``random:C`` is the fixed random
projection of each patch's C-patch neighbourhood, ``pretrained:C`` the pretrained per-window
network of ``td_jax.data.tower`` that ``experiments/motion_qa.py:tower=pretrained`` uses,
trained into ``--root`` first if absent), labels every token whose patch
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
TOWERS = ("random", "pretrained")


def labelled_tokens(split: str, videos: int, context: int, *, frames: int, resolution: int, patch: int,
                    frame_stride: int = 4, seed: int = 0, tower: str = ""):
    """Tokens [M, D] on objects in every ``frame_stride``-th frame of ``videos`` examples of
    moving_shapes_qa/motion's ``split``, with the shape and colour ids [M] of their objects."""
    import jax

    from td_jax.data.moving_shapes import COLOR_NAMES, SHAPES, SceneConfig, make_example
    from td_jax.data.patch_embed import make_patch_embed
    from td_jax.data.tower import token_owner
    from td_jax.train.video_qa import VideoQA

    p = VideoQA.default_config().patch
    embed = jax.jit(make_patch_embed(patch_size=patch, dim=p.dim, seed=p.seed, pos_embed=p.pos_embed,
                                     pos_scale=p.pos_scale, temporal=p.temporal, context=context, tower=tower))
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


def parse_tower(spec: str) -> tuple[str, int]:
    """``"random:1"`` -> ("random", 1)."""
    kind, _, c = spec.partition(":")
    if kind not in TOWERS or not c.isdigit():
        raise ValueError(f"tower spec {spec!r}: want KIND:CONTEXT with KIND in {TOWERS}, e.g. random:0, pretrained:1")
    return kind, int(c)


def tower_weights(kind: str, context: int, root: str, *, frames: int, resolution: int, patch: int,
                  log=print) -> str:
    """The weights path motion_qa uses for this tower ("" for the random projection), trained if absent."""
    if kind == "random":
        return ""
    from experiments import motion_qa
    from td_jax.data import tower as tower_lib

    s = motion_qa.settings(motion_qa.options(f"tower={kind},context={context}"))
    if (s["frames"], s["resolution"], s["patch"]) != (frames, resolution, patch):
        raise ValueError(f"the pretrained tower is motion_qa's ({s['frames']} frames of {s['resolution']} px, "
                         f"{s['patch']}-px patches); got {frames}, {resolution}, {patch}")
    path = motion_qa.tower_path(root, s)
    tower_lib.ensure_tower(path, log=log, **motion_qa.tower_settings(s))
    return path


def run(towers, probes, train_videos: int, test_videos: int, *, frames: int = 16, resolution: int = 64,
        patch: int = 4, root: str = "/tmp/td_jax_motion_qa", log=print) -> list[dict]:
    """One row per (tower, probe, target): held-out and train accuracy, majority rate.
    ``towers``: specs such as ``"random:0"`` (see :func:`parse_tower`)."""
    rows = []
    for spec in towers:
        kind, c = parse_tower(spec)
        t0 = time.perf_counter()
        weights = tower_weights(kind, c, root, frames=frames, resolution=resolution, patch=patch, log=log)
        data = {split: labelled_tokens(split, n, c, frames=frames, resolution=resolution, patch=patch, tower=weights)
                for split, n in (("train", train_videos), ("test", test_videos))}
        for probe in probes:
            for target, col in (("shape", 1), ("colour", 2)):
                model = fit_probe(probe, data["train"][0], data["train"][col])
                y_test = data["test"][col]
                rows.append({"tower": kind, "context": c, "probe": probe, "target": target,
                             "held_out": float(model.score(data["test"][0], y_test)),
                             "train": float(model.score(data["train"][0], data["train"][col])),
                             "majority": float(np.bincount(y_test).max() / len(y_test)),
                             "train_tokens": int(len(data["train"][0])), "test_tokens": int(len(y_test))})
                r = rows[-1]
                log(f"  {kind} tower, context={c} {probe:6s} {target:6s}: held-out {r['held_out']:.3f} (majority "
                    f"{r['majority']:.3f}, train {r['train']:.3f}) [{time.perf_counter() - t0:.0f} s]")
    return rows


def markdown(rows: list[dict], command: str) -> str:
    r0 = rows[0]
    out = ["# Does one frozen-tower token tell the object under it?", "",
           f"`{command}` — the motion-QA tower (experiments/motion_qa.py settings: 16 frames of 64 px, "
           f"4-px patches, width 64, 2-D sin-cos position embedding); tokens whose patch centre lies on an "
           f"object, every 4th frame ({r0['train_tokens']:,} train / {r0['test_tokens']:,} held-out tokens); "
           "probes standardise the tokens first. See the docstring of experiments/tower_probe.py.", "",
           "| tower | context (patches each side) | probe | shape: held-out (majority) | "
           "colour: held-out (majority) | shape / colour train |", "|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((r["tower"], r["context"], r["probe"]) for r in rows))
    for kind, c, probe in keys:
        s = next(r for r in rows if (r["tower"], r["context"], r["probe"], r["target"]) == (kind, c, probe, "shape"))
        col = next(r for r in rows if (r["tower"], r["context"], r["probe"], r["target"]) ==
                   (kind, c, probe, "colour"))
        out.append(f"| {kind} | {c} | {probe} | {100 * s['held_out']:.1f}% ({100 * s['majority']:.1f}%) | "
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
    try:
        towers = [f"{k}:{c}" for k, c in map(parse_tower, f.towers)]
    except ValueError as e:
        raise app.UsageError(f"--towers: {e}") from None
    rows = run(towers, list(f.probes), f.train_videos, f.test_videos, root=f.root)
    md = markdown(rows, "python -m experiments.tower_probe " + " ".join(sys.argv[1:]))
    print(md)
    if f.out:
        write_results(f.out, md, {"rows": rows})


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_list("towers", ["random:0", "random:1", "pretrained:1"],
                      "Towers to probe, KIND:CONTEXT (KIND random or pretrained; CONTEXT: patches each side a "
                      "token sees).")
    flags.DEFINE_string("root", "/tmp/td_jax_motion_qa", "Where motion_qa keeps (or this trains) the pretrained "
                        "tower.")
    flags.DEFINE_list("probes", list(PROBES), f"Probes, of {PROBES}.")
    flags.DEFINE_integer("train_videos", 300, "Train-split videos the probes fit on.", lower_bound=1)
    flags.DEFINE_integer("test_videos", 100, "Test-split videos they are scored on.", lower_bound=1)
    flags.DEFINE_string("out", "", "Also write the markdown (and a .json beside it) here.")
    app.run(main)
