r"""The paper's claims in miniature: every compressor at one visual-token budget on moving_shapes_qa.

    # the default run (the README's first command): builds moving_shapes_qa/motion_curriculum,
    # the pretrained tower and the stores if absent, runs the grid (arms x seeds) as framework runs in
    # results/runs/<arm>_s<seed>/, writes results/motion_qa.{json,md}, the plots and (with
    # --readme) the README block
    python -m launch.motion_qa --config=experiments/motion_qa.py --results_dir=results
    # the same grid through the generic sweep launcher (prepare + runs + report)
    python -m launch.sweep --config=experiments/motion_qa.py --workdir=results/runs --report --results_dir=results
    # re-render the report (and README block) from finished runs
    python -m launch.motion_qa --config=experiments/motion_qa.py --results_dir=results --report_only --readme=README.md
    # ... or, the runs gone, from the stored results/motion_qa{,_meta}.json (every rule re-applied)
    python -m launch.motion_qa --config=experiments/motion_qa.py --results_dir=results --report_only --from_stored --readme=README.md
    # restore one arm's newest checkpoint and re-score it (same accuracy as motion_qa.json)
    python -m launch.eval --workdir=results/runs/token_dynamics_s0 --split=test --output_dir=/tmp/re_eval
    # the complete grid: + the ablation ladder (base + map, random map, random base), the paper's
    # attention form, VidToMe, DyCoke, FastVID, VisionZip, HoliTom, K=16, a 256-token pooling
    # rung; 3 seeds of the all-token arm
    python -m launch.motion_qa --config=experiments/motion_qa.py:full --results_dir=results_full
    # the earlier setting: the random tower, the motion data without the control
    python -m launch.motion_qa --config=experiments/motion_qa.py:tower=random,warmup=0 --results_dir=/tmp/r0
    # a subset of arms / seeds, another data root; tiny CI configuration
    python -m launch.motion_qa --config=experiments/motion_qa.py:arms=token_dynamics+tome,seeds=0+1 --results_dir=/tmp/r
    python -m launch.motion_qa --config=experiments/motion_qa.py:tiny --results_dir=/tmp/mqa_tiny
    # one run by hand (any arm x seed of the grid; the stores must exist: prepare() builds them)
    python -m launch.train --config=experiments/motion_qa.py --workdir=/tmp/td_s0

Setup. 16 frames of 64x64 px -> the frozen tower -> 16 x 16 x 16 = 4,096 tokens per video of
width 64, the same for every arm.  The tower (``tower=pretrained``, the default) is a small
per-window network pretrained on other videos of the generator to name, linearly from each
token, the shape and colour under its 4-px patch from the 12-px window around it
(``td_jax.data.tower``; trained once into ROOT/tower, ~15 s), plus a fixed 2-D sin-cos
position embedding; ``tower=random`` is the fixed random projection of each patch
(``td_jax.data.patch_embed``), in whose tokens a linear read-out finds colour but not shape
(experiments/tower_probe.py).  Every arm's parameter-free stage (k-means, ToMe's merges,
pruning, pooling, ...; for the all-token arm the tower's tokens themselves) runs once per
video into a token store (``td_jax.data.extract.build_stores``: one pass over the videos,
one fixed key per video); each run then trains the compressor's learned stage (the
cross-dynamics attention, MapTokens), the projector (after the compressor) and a 3-layer,
width-64 Qwen2-style decoder from scratch on the same 1,500 x 32 examples with the same
schedule, curriculum and seeds.  The decoder reads visual tokens as keys/values only
(``visual_attention="kv_only"``) so that the all-token arm's 4,096 tokens cost O(N) and it
trains on exactly the same examples and steps inside the default run: one architecture for
every arm.  The data is ``moving_shapes_qa/motion_curriculum``: motion's three families
(color, direction, order: questions about a named object among distractors drawn by the
same law) plus the control ``lone_direction`` (the asked object alone: it needs the motion
and no name; reported apart from "all"), and the first 400 batches ask only the control.
Answers are the option's words, scored by likelihood (video + prompt decoded once).

``arg`` (after the colon), comma-separated: ``tiny`` (CI: the tiny dataset, a few steps),
``full`` (the complete grid), ``root=PATH`` (TFDS data, tower and stores; default
/tmp/td_jax_motion_qa), ``arms=a+b`` (a subset of arm names), ``seeds=0+1`` (the compressed
arms' seeds), ``tower=pretrained|random`` (above), ``context=N`` (the tower reads each
patch's (2N+1)-patch window; default 1 for the pretrained tower, 0 for the random one; its
own tower and stores), ``warmup=N`` (the first N batches ask the control; default 400;
``warmup=0``: the data is ``moving_shapes_qa/motion``, without the control, and the first 600
batches ask ``direction``, the earlier setting), ``arm=NAME`` / ``seed=N`` (which run
``get_config`` returns; the sweep sets these).
"""
from __future__ import annotations

import hashlib
import json
import os

import ml_collections as mlc

DEFAULT_ROOT = "/tmp/td_jax_motion_qa"

# The arms.  name: run/row name; label: table label; compressor: registry name ("none" = all
# tokens); budget: visual slots (0 = the experiment's budget); cfg: compressor options. Every
# arm reads a store built once per video (prepare()): the compressor's parameter-free stage,
# or for the all-token arm the tower's tokens themselves.  pool_256 is a rung of 256 tokens
# (6.25%) that shows which families the decoder can learn when tokens are plentiful.
# eval_of: evaluate that arm's trained weights with this arm's compressor (adaptive K);
# seeds: "arms" (the compressed arms' seeds) or "reference"; grid: "default" or "full"
# (only with :full).  The default grid keeps what the paper's claims need (token dynamics at
# 8 and at 4 tokens, base only, the rivals at the same budget, adaptive K, all tokens);
# :full adds the ablation ladder, the paper's attention form and the other rivals.
TD = {"iters": 20, "n_init": 1, "sample_size": 1024, "refine_iters": 2}
ARMS = (
    dict(name="token_dynamics", label="token dynamics", compressor="token_dynamics", cfg=TD),
    dict(name="token_dynamics_k4", label="token dynamics K=4", compressor="token_dynamics", budget=4, cfg=TD),
    dict(name="paper_attention", label="token dynamics, paper's attention", compressor="token_dynamics",
         cfg={**TD, "attention": "paper"}, grid="full"),
    dict(name="adaptive_elbow", label="adaptive K (elbow)", compressor="token_dynamics",
         cfg={**TD, "adaptive": "elbow"}, eval_of="token_dynamics"),
    dict(name="adaptive_silhouette", label="adaptive K (silhouette)", compressor="token_dynamics",
         cfg={**TD, "adaptive": "silhouette"}, eval_of="token_dynamics"),
    dict(name="base_only", label="base only", compressor="base_only", cfg=TD),
    dict(name="base_map", label="base + map (no attention)", compressor="base_map", budget=-16, cfg=TD, grid="full"),
    dict(name="random_map", label="random map", compressor="random_map", cfg=TD, grid="full"),
    dict(name="random_base", label="random base", compressor="random_base", cfg=TD, grid="full"),
    dict(name="tome", label="ToMe", compressor="tome"),
    dict(name="prune", label="pruning", compressor="prune"),
    dict(name="pool", label="pooling", compressor="pool"),
    dict(name="vidtome", label="VidToMe", compressor="vidtome", grid="full"),
    dict(name="dycoke", label="DyCoke", compressor="dycoke", grid="full"),
    dict(name="fastvid", label="FastVID", compressor="fastvid", grid="full"),
    dict(name="visionzip", label="VisionZip", compressor="visionzip", grid="full"),
    dict(name="holitom", label="HoliTom", compressor="holitom", grid="full"),
    dict(name="token_dynamics_k16", label="token dynamics K=16", compressor="token_dynamics", budget=16, cfg=TD,
         grid="full"),
    dict(name="pool_256", label="pooling, 256 tokens", compressor="pool", budget=256, seeds="reference", grid="full"),
    dict(name="none", label="all tokens", compressor="none", seeds="reference"),
)
ARM_NAMES = tuple(a["name"] for a in ARMS)
_OPTIONS = ("tiny", "full", "root", "arms", "seeds", "context", "warmup", "tower", "arm", "seed")
TOWERS = ("random", "pretrained")
# Config keys the grid sets per arm or builds data for (prepare(): the dataset, the tower's
# tokens, each arm's store): a job-wide --config override of these is refused
# (td_jax.train.sweep.check_overrides); choose them with the arg (root=, arms=, tiny, full).
FIXED_KEYS = ("seed", "total_steps", "task.data.tfds_name", "task.data.data_dir", "task.data.tokens_dir",
              "task.data.source", "task.patch", "task.vision", "task.budget", "task.compressor*",
              "task.mm_hidden_size", "warm_start")


def options(arg: str) -> dict:
    """The parsed ``arg`` (see the module docstring)."""
    out = {"tiny": False, "full": False, "root": DEFAULT_ROOT, "arms": "", "seeds": "", "context": None,
           "warmup": None, "tower": "pretrained", "arm": "token_dynamics", "seed": 0}
    for part in filter(None, (p.strip() for p in (arg or "").split(","))):
        key, eq, value = part.partition("=")
        if key not in _OPTIONS or (key in ("tiny", "full")) == bool(eq):
            raise ValueError(f"experiments/motion_qa.py: bad arg {part!r}; known: tiny, full, root=PATH, arms=a+b, "
                             f"seeds=0+1, context=N, warmup=N, tower=random|pretrained, arm=NAME, seed=N")
        out[key] = True if key in ("tiny", "full") else value
    if out["tower"] not in TOWERS:
        raise ValueError(f"experiments/motion_qa.py: tower= must be one of {TOWERS}, got {out['tower']!r}")
    if out["context"] is None:                  # the pretrained tower reads 3x3-patch windows by default
        out["context"] = 1 if out["tower"] == "pretrained" else 0
    if out["arm"] not in ARM_NAMES:
        raise ValueError(f"experiments/motion_qa.py: unknown arm {out['arm']!r}; known: {list(ARM_NAMES)}")
    if out["warmup"] is None:                   # the tiny dataset has no lone-object control
        out["warmup"] = 0 if out["tiny"] else 400
    for key in ("seed", "context", "warmup"):
        try:
            out[key] = int(out[key])
        except ValueError:
            raise ValueError(f"experiments/motion_qa.py: {key}= must be an integer, got {out[key]!r}") from None
    for key in ("context", "warmup"):
        if out[key] < 0:
            raise ValueError(f"experiments/motion_qa.py: {key}= must be >= 0, got {out[key]}")
    if out["warmup"] and out["tiny"]:
        raise ValueError("experiments/motion_qa.py: warmup= reads moving_shapes_qa/motion_curriculum; the tiny "
                         "dataset has no warm-up family")
    out["root"] = os.path.abspath(os.path.expanduser(out["root"]))
    return out


def settings(opts: dict) -> dict:
    """The grid's sizes: the full and tiny variants differ only here."""
    s = dict(dataset="moving_shapes_qa/motion", frames=16, resolution=64, patch=4, dim=64, budget=8, steps=1500,
             batch=32, log_every=100,
             ckpt_every=500, steps_per_call=50, ref_steps_per_call=10, eval_batch=128, ref_eval_batch=32,
             layers=3, mlp=256, heads=4, kv_heads=2, curriculum="direction:600", seeds=(0, 1, 2),
             ref_seeds=(0,), extract_batch=64)
    if opts["full"]:
        s["ref_seeds"] = (0, 1, 2)
    if opts["tiny"]:
        s.update(dataset="moving_shapes_qa/tiny", frames=8, resolution=32, patch=8, dim=32, budget=4, steps=6,
                 batch=8, log_every=2,
                 ckpt_every=2, steps_per_call=2, ref_steps_per_call=2, eval_batch=16, ref_eval_batch=16, layers=1,
                 mlp=64, curriculum="", seeds=(0, 1), ref_seeds=(0,), extract_batch=16)
    if opts["seeds"]:
        s["seeds"] = tuple(int(x) for x in opts["seeds"].split("+"))
    s["context"] = opts["context"]
    s["tower"] = opts["tower"]
    s["tower_train"] = {"videos": 240, "steps": 3000} if not opts["tiny"] else {"videos": 24, "steps": 200}
    # the stores keep the train split's first train_videos videos (0: all): 1,500 x 32 examples
    # see each ~6 times, as 2,500 x 32 saw the 12,288 of motion; halves the stores' time
    s["train_videos"] = 0 if opts["tiny"] else 8192
    if opts["warmup"]:
        # motion's three families plus the control lone_direction in every split (a quarter each).
        s.update(dataset="moving_shapes_qa/motion_curriculum", curriculum=f"lone_direction:{opts['warmup']}")
    return s


def arm_budget(arm: dict, s: dict) -> int:
    """An arm's visual slots: its own budget, the experiment's, or (negative) the experiment's
    plus the frame count (base_map: K base tokens + T map tokens)."""
    b = arm.get("budget", 0)
    return s["budget"] if b == 0 else (s["budget"] - b if b < 0 else b)


def arm_cfg(arm: dict, s: dict) -> dict:
    """An arm's compressor config at its budget: the method's knob set by
    ``td_jax.compressors.budget.plan`` for the video's T x h x w tokens (e.g. pooling's
    area grid over space and time, ToMe's merge schedule), plus the arm's own options."""
    from td_jax.compressors import budget as budget_lib

    if arm["compressor"] == "none":
        return dict(arm.get("cfg", {}))
    side = s["resolution"] // s["patch"]
    return budget_lib.plan(arm["compressor"], arm_budget(arm, s), (s["frames"], side, side), **arm.get("cfg", {})).cfg


def grid_arms(opts: dict) -> list[dict]:
    """The arms this arg runs, in order (eval-only arms after the arms they evaluate)."""
    names = [a for a in opts["arms"].split("+") if a] if opts["arms"] else []
    bad = sorted(set(names) - set(ARM_NAMES))
    if bad:
        raise ValueError(f"experiments/motion_qa.py: unknown arms {bad}; known: {list(ARM_NAMES)}")
    if opts["tiny"] and not names:
        names = ["token_dynamics", "adaptive_elbow", "base_only", "tome", "none"]
    if names:
        arms = [a for a in ARMS if a["name"] in names]
    else:
        arms = [a for a in ARMS if opts["full"] or a.get("grid", "default") == "default"]
    have = {a["name"] for a in arms}
    for a in arms:
        if a.get("eval_of") and a["eval_of"] not in have:
            raise ValueError(f"arm {a['name']!r} evaluates the weights of {a['eval_of']!r}: add it to arms=")
    return sorted(arms, key=lambda a: bool(a.get("eval_of")))


def _arm(name: str) -> dict:
    return next(a for a in ARMS if a["name"] == name)


def store_dir(root: str, arm: dict, s: dict) -> str:
    """Where an arm's precomputed stage lives: arms whose stages are identical share it."""
    from td_jax.data import extract

    if arm["compressor"] == "none":            # the tower's tokens themselves
        stage, kind = "tokens", "tokens"
    else:
        stage = extract.compressor_meta(arm["compressor"], arm_budget(arm, s), arm_cfg(arm, s), 0,
                                        s["frames"])["stage"]
        kind = stage.get("stage", arm["compressor"])           # "kmeans" for the token-dynamics family
    key = {"stage": stage, "patch": s["patch"], "dim": s["dim"], "dataset": s["dataset"]}
    if s.get("context"):
        key["context"] = s["context"]            # (absent at 0: the stores built before the option keep their names)
    if s.get("tower", "random") != "random":
        key["tower"] = tower_settings(s)
    if s.get("train_videos"):
        key["train_videos"] = s["train_videos"]
    stage = json.dumps(key, sort_keys=True)
    return os.path.join(root, "stores", f"{kind}_{hashlib.sha1(stage.encode()).hexdigest()[:10]}")


def get_config(arg: str = "") -> mlc.ConfigDict:
    """The framework config of one run (``arm=``, ``seed=`` in ``arg``; default token_dynamics, seed 0)."""
    from td_jax.train.trainer import default_config

    opts = options(arg)
    s = settings(opts)
    arm = _arm(opts["arm"])
    c = default_config("video_qa")
    c.seed = opts["seed"]
    c.compute_dtype = "float32"
    c.mesh = mlc.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.total_steps = 0 if arm.get("eval_of") else s["steps"]
    c.steps_per_call = s["ref_steps_per_call"] if arm["compressor"] == "none" else s["steps_per_call"]
    c.log_every_steps = s["log_every"]
    c.checkpoint_every_steps = s["ckpt_every"]
    c.eval_every_steps = 0
    c.eval_split = "validation"
    c.final_eval_splits = ("validation", "test")
    c.batch_size = s["batch"]
    c.eval_batch_size = s["ref_eval_batch"] if arm["compressor"] == "none" else s["eval_batch"]
    c.optim.lr = 1e-3
    c.optim.warmup_frac = 0.05
    c.optim.weight_decay = 0.1
    c.optim.clip_norm = 1.0
    c.checkpoint = mlc.ConfigDict({"keep": 2, "keep_best": 0, "best_metric": "eval/accuracy", "best_mode": "max",
                                   "async_save": True})
    if arm.get("eval_of"):
        c.warm_start = f"{arm['eval_of']}_s{opts['seed']}"    # the sibling run of the same sweep
    t = c.task
    t.model = "tiny_vlm"
    t.llm.hidden_size, t.llm.intermediate_size, t.llm.num_layers = s["dim"], s["mlp"], s["layers"]
    t.llm.num_heads, t.llm.num_kv_heads, t.llm.rope_theta = s["heads"], s["kv_heads"], 10000.0
    t.llm.tie_embeddings = False
    t.vision = "none"                          # the tower ran once per video into the arm's store
    t.mm_hidden_size = s["dim"]
    t.projector = "mlp2x_gelu"
    t.projector_position = "after"
    t.visual_attention = "kv_only"
    t.visual_tokens_stage = "vision"
    t.compressor = arm["compressor"]
    t.budget = arm_budget(arm, s) if arm["compressor"] != "none" else _tokens_per_video(s)
    t.compressor_cfg = json.dumps(arm_cfg(arm, s), sort_keys=True)
    t.prepare_data = True
    d = t.data
    d.tfds_name = s["dataset"]
    d.data_dir = os.path.join(opts["root"], "tfds")
    d.max_text_len = 24
    d.answer_format = "text"
    d.list_options = False
    d.curriculum = s["curriculum"]
    d.read_threads = 1
    d.prefetch_buffer_size = 2
    d.source = "tokens"
    d.tokens_dir = store_dir(opts["root"], arm, s)
    d.in_memory = arm["compressor"] != "none"   # the tower's tokens (0.5 MB a video) are read per batch
    return c


def tower_settings(s: dict) -> dict:
    """``td_jax.data.tower.train_tower``'s settings for the grid's pretrained tower."""
    return {"patch": s["patch"], "context": s["context"], "dim": s["dim"], "frames": s["frames"],
            "resolution": s["resolution"], **s.get("tower_train", {})}


def tower_path(root: str, s: dict) -> str:
    """Where the pretrained tower's weights live ("" for the random projection)."""
    if s.get("tower", "random") == "random":
        return ""
    key = json.dumps(tower_settings(s), sort_keys=True)
    return os.path.join(root, "tower", f"tower_{hashlib.sha1(key.encode()).hexdigest()[:10]}.npz")


def _tokens_per_video(s: dict) -> int:
    return s["frames"] * (s["resolution"] // s["patch"]) ** 2


def _with(arg: str, **kw) -> str:
    parts = [p for p in (arg or "").split(",") if p and p.partition("=")[0] not in kw]
    return ",".join(parts + [f"{k}={v}" for k, v in kw.items()])


def get_sweep(arg: str = "") -> list[dict]:
    """Arms x seeds: each point names its run ``<arm>_s<seed>`` and sets what differs from
    ``get_config``'s run (the same dict ``get_config(arg + ",arm=..,seed=..")`` would give)."""
    opts = options(arg)
    s = settings(opts)
    base = get_config(arg).to_dict()
    out = []
    for arm in grid_arms(opts):
        seeds = s["ref_seeds"] if arm.get("seeds") == "reference" else s["seeds"]
        for seed in seeds:
            cfg = get_config(_with(arg, arm=arm["name"], seed=seed)).to_dict()
            point = {"_name": f"{arm['name']}_s{seed}"}
            point.update(_diff(base, cfg))
            out.append(point)
    return out


def _diff(a: dict, b: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in b.items():
        if isinstance(v, dict):
            out.update(_diff(a.get(k, {}), v, f"{prefix}{k}."))
        elif a.get(k) != v:
            out[f"{prefix}{k}"] = v
    return out


def prepare(arg: str = "", log=print) -> None:
    """Builds the dataset and every store the grid's arms read (skipping what exists)."""
    import time

    import tensorflow_datasets as tfds

    import td_jax.data.moving_shapes_qa  # noqa: F401  (registers the builder)
    from td_jax.data import extract

    opts = options(arg)
    s = settings(opts)
    data_dir = os.path.join(opts["root"], "tfds")
    builder = tfds.builder(s["dataset"], data_dir=data_dir)
    if not builder.is_prepared():
        t0 = time.time()
        log(f"[motion_qa] building {s['dataset']} in {data_dir} (once)")
        builder.download_and_prepare()
        log(f"[motion_qa] built in {time.time() - t0:.0f}s")
    src = {"source": "tfds", "tfds_name": s["dataset"], "data_dir": data_dir}
    tower = tower_path(opts["root"], s)
    if tower:
        from td_jax.data import tower as tower_lib

        tower_lib.ensure_tower(tower, log=log, **tower_settings(s))
    embed = ("patch", {"patch_size": s["patch"], "dim": s["dim"], "seed": 0, "pos_embed": "sincos2d",
                       "pos_scale": 0.1, "temporal": False, **({"context": s["context"]} if s["context"] else {}),
                       **({"tower": tower} if tower else {})})
    stores: dict[str, dict] = {}
    for arm in grid_arms(opts):
        d = store_dir(opts["root"], arm, s)
        splits = ("validation", "test") if arm.get("eval_of") else ("train", "validation", "test")
        prev = stores.get(d, {}).get("splits", ())
        stores[d] = {"arm": arm, "splits": tuple(sorted(set(prev) | set(splits), key=splits_order))}
    for d, st in stores.items():
        slots = _tokens_per_video(s) if st["arm"]["compressor"] == "none" else arm_budget(st["arm"], s)
        log(f"[motion_qa] store for {st['arm']['name']}'s stage ({slots} slots): {d}")
    t0 = time.time()
    extract.build_stores([(d, None if st["arm"]["compressor"] == "none" else
                           {"name": st["arm"]["compressor"], "budget": arm_budget(st["arm"], s),
                            "cfg": arm_cfg(st["arm"], s), "seed": 0}, st["splits"]) for d, st in stores.items()],
                         src, embed=embed, batch_size=s["extract_batch"],
                         limits={"train": s["train_videos"]} if s["train_videos"] else None, log=log)
    log(f"[motion_qa] {len(stores)} stores ready ({time.time() - t0:.0f}s)")


def splits_order(split: str) -> int:
    return ("train", "validation", "test").index(split)


def plan(arg: str = "") -> dict:
    """The grid as plain data for the report: settings, and per arm its resolved budget, seeds
    and store."""
    opts = options(arg)
    s = settings(opts)
    arms = []
    for arm in grid_arms(opts):
        a = {"name": arm["name"], "label": arm["label"], "compressor": arm["compressor"], "cfg": arm_cfg(arm, s),
             "eval_of": arm.get("eval_of", ""),
             "seeds": list(s["ref_seeds"] if arm.get("seeds") == "reference" else s["seeds"]),
             "budget": arm_budget(arm, s) if arm["compressor"] != "none" else _tokens_per_video(s)}
        a["store"] = store_dir(opts["root"], arm, s)
        arms.append(a)
    return {"arg": arg, "settings": s, "root": opts["root"], "n_tokens": _tokens_per_video(s),
            "data_dir": os.path.join(opts["root"], "tfds"), "arms": arms}


def report(arg: str, workdir: str, results_dir: str, readme: str = "", stored: bool = False) -> dict:
    """Reads the runs' workdirs and writes results_dir/motion_qa.{json,md}, the plots and the
    README block; returns {what: path}.  ``stored``: from the stored results, not the runs."""
    from experiments import motion_qa_report

    return motion_qa_report.write(plan(arg), workdir, results_dir, readme, stored=stored)
