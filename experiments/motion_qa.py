r"""The paper's claims in miniature: every compressor at one visual-token budget on moving_shapes_qa.

    # the default run (README's first command; 16-20 min on 2 CPU cores, data build included): builds
    # moving_shapes_qa/motion if absent, compresses every video once, trains + evaluates the
    # main arms, writes results/
    python -m launch.motion_qa --config=experiments/motion_qa.py --results_dir=results
    # then the README block (or add --readme=README.md above):
    python -m launch.motion_qa --report_only --results_dir=results --readme=README.md
    # the complete grid (+ full-token reference, frames, TokenLearner, K=16; more seeds and steps; hours)
    python -m launch.motion_qa --config=experiments/motion_qa.py --config.full=True --results_dir=results_full
    # the full-token reference (~1 h): all-token model warm-started from base_only, scored on
    # the test videos next to token dynamics; the default run's report then reads it
    python -m launch.motion_qa --config=experiments/motion_qa.py \
        --config.arms="token_dynamics,token_dynamics K=4,base_only,none (all tokens)" --results_dir=results/reference
    # a second seed of the single-seed arms (~10 min; results/baselines_seed1 in the README)
    python -m launch.motion_qa --config=experiments/motion_qa.py --config.seeds="(1,)" \
        --config.arms="base + map (no attention),random_map,random_base,tome,prune,pool" \
        --results_dir=results/baselines_seed1
    # the test's configuration: tiny data, three arms, a few steps
    python -m launch.motion_qa --config=experiments/motion_qa.py:tiny --results_dir=/tmp/mqa_tiny

Setup (see launch/motion_qa.py): 16 frames of 64x64 px -> a frozen 4x4-px patch embedding
(td_jax.data.patch_embed, width = the LLM width) -> 16 x 16 x 16 = 4,096 tokens per video.
The parameter-free part of every compressor (k-means, ToMe, pruning, pooling, frame
sampling) runs once per video with a fixed key and is cached; what trains per arm is the
tiny Qwen2-style decoder, the video newline, and the compressor's own parameters (the
cross-dynamics attention, TokenLearner).  ``get_arms(config)`` lists the arms.

``arg`` (after the colon): "" (default) or "tiny" (test configuration).
"""
import ml_collections as mlc

# The paper's ablation ladder and baselines.  Each arm: name (row label), method (the
# compressor registry's name; "none" = all tokens), budget (K or visual slots; 0 = config.budget),
# cfg (compressor options), seeds ("headline" = config.headline_seeds, else config.seeds),
# eval_only_of (adaptive arms reuse the weights of the named fixed-K arm, see launch/motion_qa.py),
# full_only (run only with --config.full=True: the costly or secondary arms).
_ARMS = (
    dict(name="token_dynamics", method="token_dynamics", seeds="headline"),
    dict(name="token_dynamics K=4", method="token_dynamics", budget=4),
    dict(name="token_dynamics K=16", method="token_dynamics", budget=16, full_only=True),
    dict(name="adaptive (elbow)", method="token_dynamics", cfg={"adaptive": "elbow"},
         eval_only_of="token_dynamics", seeds="headline"),
    dict(name="adaptive (silhouette)", method="token_dynamics", cfg={"adaptive": "silhouette"},
         eval_only_of="token_dynamics", seeds="headline"),
    dict(name="base_only", method="base_only", seeds="headline"),
    dict(name="base + map (no attention)", method="base_map"),
    dict(name="random_map", method="random_map"),
    dict(name="random_base", method="random_base"),
    dict(name="tome", method="tome"),
    dict(name="prune", method="prune"),
    dict(name="pool", method="pool"),
    dict(name="frames", method="frames", full_only=True),
    dict(name="token_learner", method="token_learner", cfg={"mode": "video"}, full_only=True),
    dict(name="none (all tokens)", method="none", full_only=True),
)


def get_config(arg: str = "") -> mlc.ConfigDict:
    c = mlc.ConfigDict()
    c.full = False                   # True: the complete grid (full_* values below replace the defaults)
    c.workdir = "/tmp/td_jax_motion_qa"   # TFDS data, caches, per-arm logs ("" = this default)

    c.data = mlc.ConfigDict()
    c.data.tfds_name = "moving_shapes_qa/motion"   # color, direction, order; 12,288 train videos
    c.data.data_dir = ""             # "" = {workdir}/tfds
    c.data.train_examples = 0        # 0 = the whole train split
    c.data.eval_split = "test"
    c.data.eval_examples = 0         # 0 = the whole eval split
    c.data.families = ""             # comma-separated question families to keep ("" = all eight)
    c.data.max_text_len = 40
    c.data.answer_format = "text"    # "text": the target is the option's words, options scored by likelihood;
                                     # "letter": the target is the option letter (lmms-eval style)
    c.data.list_options = False      # list the options in the prompt (required by "letter")

    c.tokens = mlc.ConfigDict()       # the frozen vision tower (fixed patch embedding)
    c.tokens.patch_size = 4
    c.tokens.seed = 0
    c.tokens.batch_size = 64         # videos per extraction / compression call

    c.budget = 8                     # visual tokens per video for every compressed arm
    c.cache_seed = 0                 # key of the cached k-means / ToMe / ... (fixed per video)
    c.kmeans = mlc.ConfigDict({"iters": 20, "n_init": 1, "sample_size": 1024, "refine_iters": 2})
    c.adaptive = mlc.ConfigDict({"k_min": 2, "elbow_tol": 0.05})
    # k_min on the validation split (fixed K=8: 66.1%): elbow 65.6 / 65.9 / 66.1% with 7.83 / 7.95 /
    # 7.99 tokens, silhouette 43.5 / 52.3 / 57.8% with 2.34 / 3.82 / 5.16 tokens at k_min 2 / 3 / 4

    c.model = mlc.ConfigDict()       # the tiny Qwen2-style decoder (its width is the token width)
    c.model.hidden_size = 64
    c.model.intermediate_size = 256
    c.model.num_layers = 3           # 2 layers learned `direction` in 1 of 3 seeds, 3 layers in 3 of 4
                                     # (validation split, own_bias 4); ~35% more time per step
    c.model.num_heads = 4
    c.model.num_kv_heads = 2
    c.model.rope_theta = 10000.0
    c.model.tie_embeddings = False   # share the input embedding and the output head (Qwen2-0.5B does;
                                     # untied learned the order family faster in the probes)
    c.model.video_newline = True
    c.model.projector = "mlp2x_gelu"  # trainable projector on the compressed tokens: mlp2x_gelu | linear | identity
    c.model.cross_heads = 4          # CrossDynamicsAttention heads
    c.model.own_bias = 4.0           # CrossDynamicsAttention: initial logit bonus for a base token's own trajectory
                                     # (learned); validation accuracy over seeds 0-2 at 2 layers: 56.0% at 0,
                                     # 60.4% at 2, 61.5% at 4 (the gain is on `order`)

    c.train = mlc.ConfigDict()
    c.train.steps = 2500
    c.train.batch_size = 32
    c.train.lr = 1e-3                # 3e-3 stalled at chance in the probes (letter answers); 2e-3 no better
    c.train.compressor_lr = 1e-3     # the compressor's own parameters (attention, TokenLearner)
    c.train.warmup_frac = 0.05
    c.train.weight_decay = 0.1
    c.train.clip_norm = 1.0
    c.train.none_steps = 150         # the full-token reference costs ~16 s per step of 8 on 2 cores (3 layers)
    c.train.none_batch_size = 8
    c.train.none_microbatches = 4    # the all-token arm's step runs as 4 accumulated micro-batches of 2: peak
                                     # memory 6.2 GiB and ~16 s per step, vs 22.6 GiB and ~30 s for 8 at once
    c.train.none_init_from = "base_only"  # the full-token reference starts from this slot arm's trained weights
                                     # (same projector + decoder + newline; "" = random init): 2,500 steps
                                     # from scratch at ~8 s each is out of reach on 2 cores
    c.train.none_eval_examples = 0   # the full-token reference is evaluated on the first N eval videos (0 = all;
                                     # ~0.75 s per video on 2 cores, video + prompt run once for the 4 options)
    c.train.log_every = 100
    c.train.curriculum = "direction:600"  # "family[,family...]:N": the first N steps draw only those families
                                     # ("" = none); mixed from the start, no arm learned direction in 3,000 steps
    c.train.steps_per_call = 50      # optimizer steps per jitted call (lax.scan); arms reading frames use 1
    c.train.eval_batch_size = 128

    c.seeds = (0,)
    c.headline_seeds = (0, 1)
    c.arms = ""                      # comma-separated arm names to run ("" = all of get_arms)

    c.full_overrides = mlc.ConfigDict({
        "train_steps": 6000, "none_steps": 300, "train_examples": 0, "eval_examples": 0,
        "seeds": (0, 1), "headline_seeds": (0, 1, 2)})

    if arg == "tiny":
        c.data.tfds_name = "moving_shapes_qa/tiny"
        c.data.train_examples = 0
        c.data.eval_examples = 0
        c.tokens.patch_size = 8
        c.tokens.batch_size = 32
        c.budget = 4
        c.kmeans.sample_size = 0
        c.model.hidden_size = 32
        c.model.intermediate_size = 64
        c.model.num_layers = 1
        c.train.steps = 4
        c.train.curriculum = ""      # 4 steps: a family switch would make the loss check noise
        c.train.none_steps = 2
        c.train.batch_size = 8
        c.train.none_batch_size = 4
        c.train.none_microbatches = 2
        c.train.log_every = 2
        c.train.eval_batch_size = 16
        c.headline_seeds = (0, 1)
        c.arms = "token_dynamics,base_only,base + map (no attention)"
    elif arg:
        raise ValueError(f"experiments/motion_qa.py: unknown arg {arg!r}; known: '', 'tiny'")
    return c


def get_arms(config: mlc.ConfigDict) -> list[dict]:
    """The arms to run for ``config`` (filtered by ``config.arms``), seeds and budgets resolved."""
    full = bool(config.full)
    seeds = tuple(config.full_overrides.seeds if full else config.seeds)
    head = tuple(config.full_overrides.headline_seeds if full else config.headline_seeds)
    known = [a["name"] for a in _ARMS]
    default = [a["name"] for a in _ARMS if full or not a.get("full_only")]
    wanted = [s.strip() for s in config.arms.split(",") if s.strip()] if config.arms else default
    bad = [w for w in wanted if w not in known]
    if bad:
        raise ValueError(f"config.arms: unknown arm(s) {bad}; known: {known}")
    out = []
    for a in _ARMS:
        if a["name"] not in wanted:
            continue
        arm = {"cfg": {}, "budget": 0, "eval_only_of": "", **{k: v for k, v in a.items() if k != "full_only"}}
        arm["seeds"] = head if a.get("seeds") == "headline" else seeds
        arm["budget"] = int(arm["budget"] or config.budget)
        if arm["eval_only_of"] and arm["eval_only_of"] not in wanted:
            raise ValueError(f"arm {arm['name']!r} evaluates the weights of {arm['eval_only_of']!r}: "
                             f"add it to config.arms")
        out.append(arm)
    return out
