"""Sharded train / eval steps and the training loop.

    setup = build(config)                 # mesh, task, optimizer, abstract state + shardings
    train_and_evaluate(config, workdir)   # resume, train, log, evaluate, checkpoint

The train state is a dict ``{"step": int32 [], "params": ..., "opt_state": ...}`` with
fp32 params (``config.param_dtype``); the task computes in ``config.compute_dtype``.
Step ``s`` uses the PRNG key ``fold_in(PRNGKey(seed), s)`` (then one fold per
micro-batch), so a resumed run draws exactly the keys of an uninterrupted one.  The seed's
key is an argument of the compiled step (not a constant in it), so runs that differ only
in their seed share compiled programs (through JAX's compilation cache).
``steps_per_call = S`` runs S optimizer steps per jitted call (a ``lax.scan`` over S
batches; calls are cut at log / eval / checkpoint steps, so every boundary is honoured and
a resumed run makes the same calls).  ``total_steps = 0`` only evaluates.  A finished run
writes ``WORKDIR/eval_<split>_<step>.json`` (+ ``.md``, ``.predictions.jsonl``) for
``final_eval_splits`` and then ``WORKDIR/done.json``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from td_jax.train import checkpoint as ckpt_lib
from td_jax.train import config as config_lib
from td_jax.train import data as data_lib
from td_jax.train import mesh as mesh_lib
from td_jax.train import metrics as metrics_lib
from td_jax.train import optim as optim_lib
from td_jax.train.task import Task, get_task_class


def resolve_config(user_cfg) -> mlc.ConfigDict:
    """Validates a user config against the framework schema and its task's schema."""
    task_name = user_cfg.get("task", {}).get("name", config_lib.defaults().task.name)
    return config_lib.resolve(user_cfg, get_task_class(task_name).default_config())


def default_config(task_name: str) -> mlc.ConfigDict:
    """Every framework key plus the task's ``config.task`` subtree, with defaults.

    Experiment files start from this so every key can be overridden with ``--config.a.b=v``.
    """
    c = config_lib.defaults()
    c.task = get_task_class(task_name).default_config()
    return c


@dataclasses.dataclass
class Setup:
    """Everything derived from the config before any array is materialised."""

    config: mlc.ConfigDict
    mesh: Mesh
    task: Task
    tx: optax.GradientTransformation
    schedules: dict
    abstract_state: Any          # ShapeDtypeStructs (unboxed)
    state_shardings: Any
    batch_shardings: dict
    eval_batch_shardings: dict
    param_counts: dict


def build(config: mlc.ConfigDict, *, devices=None) -> Setup:
    """Mesh, task, optimizer and the abstract (sharded) train state for ``config``."""
    mesh = mesh_lib.make_mesh(config.mesh, devices)
    task = get_task_class(config.task.name)(config)
    tx, schedules = optim_lib.make_optimizer(config.optim, config.total_steps)
    n_batch = mesh.shape["data"] * mesh.shape["fsdp"]
    micro = config.batch_size // config.optim.grad_accum
    if micro % n_batch:
        raise ValueError(f"config: micro-batch batch_size/optim.grad_accum = {micro} must be divisible by "
                         f"mesh data*fsdp = {n_batch}")
    if config.batch_size % jax.process_count() or config.eval_batch_size % jax.process_count():
        raise ValueError(f"config: batch_size {config.batch_size} and eval_batch_size {config.eval_batch_size} "
                         f"must be divisible by the process count {jax.process_count()}")

    abstract_batch = task.abstract_batch(config.batch_size, train=True)
    with mesh_lib.logical_context(mesh, config.axis_rules):
        boxed = jax.eval_shape(task.init_params, jax.random.key(0), abstract_batch)
    check_axis_rules(config.axis_rules, boxed, task.activation_axes)
    params_abs = nn.unbox(boxed)
    params_sh = mesh_lib.param_shardings(boxed, mesh, config.axis_rules)
    opt_abs = jax.eval_shape(tx.init, params_abs)
    opt_sh = mesh_lib.mirror_shardings(opt_abs, params_abs, params_sh, mesh)
    abstract_state = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": params_abs, "opt_state": opt_abs}
    state_sh = {"step": NamedSharding(mesh, P()), "params": params_sh, "opt_state": opt_sh}

    def batch_sh(ab):
        return {k: mesh_lib.batch_sharding(mesh, len(v.shape)) for k, v in ab.items()}

    return Setup(config=config, mesh=mesh, task=task, tx=tx, schedules=schedules,
                 abstract_state=abstract_state, state_shardings=state_sh,
                 batch_shardings=batch_sh(abstract_batch),
                 eval_batch_shardings=batch_sh(task.abstract_batch(config.eval_batch_size, train=False)),
                 param_counts=optim_lib.count_params(params_abs, config.optim))


def check_axis_rules(rules, boxed_params: Any, activation_axes) -> None:
    """ValueError unless ``rules`` name every logical axis the params and the task's
    activations use: a name without a rule would silently be replicated."""
    used = set(activation_axes)
    for spec in jax.tree.leaves(nn.get_partition_spec(boxed_params), is_leaf=lambda x: isinstance(x, P)):
        if isinstance(spec, P):
            used |= {n for n in spec if isinstance(n, str)}
    missing = sorted(used - {name for name, _ in rules})
    if missing:
        raise ValueError(f"config key 'axis_rules' has no rule for the logical axes {missing} (a missing rule "
                         f"silently replicates them); start from td_jax.models.sharding.AXIS_RULES")


def _cast_floats(tree: Any, dtype) -> Any:
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def make_init_fn(s: Setup):
    """Jitted ``init(rng) -> state`` producing arrays directly in their shardings."""
    cfg = s.config
    abstract_batch = s.task.abstract_batch(cfg.batch_size, train=True)
    param_dtype = jnp.dtype(cfg.param_dtype)

    def init(rng):
        batch = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract_batch)
        with mesh_lib.logical_context(s.mesh, cfg.axis_rules):
            params = _cast_floats(nn.unbox(s.task.init_params(rng, batch)), param_dtype)
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": s.tx.init(params)}

    return jax.jit(init, out_shardings=s.state_shardings)


def check_same_tree(params: Any, want: Any, what: str) -> None:
    """ValueError listing missing / unexpected / mis-shaped paths unless ``params`` has the
    paths and shapes of ``want`` (abstract or concrete trees)."""
    def shapes(tree):
        return {mesh_lib.path_str(p): tuple(np.shape(x)) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}

    have, need = shapes(params), shapes(want)
    missing = sorted(set(need) - set(have))
    unexpected = sorted(set(have) - set(need))
    shaped = [(k, have[k], need[k]) for k in sorted(set(have) & set(need)) if have[k] != need[k]]
    if missing or unexpected or shaped:
        raise ValueError(f"{what} do not fit the model: missing {missing[:8]}, unexpected {unexpected[:8]}, "
                         f"mis-shaped (path, got, want) {shaped[:8]}")


def warm_start_params(s: Setup, run_dir: str, step: int = -1) -> Any:
    """The params of another run's checkpoint (``run_dir`` or its ``checkpoints/``), on this
    run's shardings.  The source run's own config says how to read its state (its optimizer
    may differ); its params must have this model's paths and shapes."""
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        ckpt_dir = run_dir
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"config key 'warm_start': no run directory {run_dir}")
    ck = ckpt_lib.Checkpointer(ckpt_dir, read_only=True)      # another run's directory: change nothing there
    try:
        if step >= 0 and step not in ck.all_steps():
            raise ValueError(f"config key 'warm_start_step': step {step} not in {ckpt_dir} (have {ck.all_steps()})")
        step = ck.newest_intact_step(step if step >= 0 else None)    # checksum-verified
        src_cfg = mlc.ConfigDict(ck.read_meta(step)["config"])
        with src_cfg.unlocked():
            src_cfg.mesh = s.config.mesh.to_dict()
            src_cfg.warm_start = ""
        src = build(resolve_config(src_cfg), devices=list(s.mesh.devices.flat))
        check_same_tree(src.abstract_state["params"], s.abstract_state["params"],
                        f"the params of {ckpt_dir} step {step}")
        state, _ = ck.restore(step, ckpt_lib.abstract_with_shardings(src.abstract_state, src.state_shardings))
    finally:
        ck.close()
    logging.info("warm start from %s step %d", ckpt_dir, step)
    return jax.tree.map(lambda x, sh: jax.device_put(x, sh), state["params"], s.state_shardings["params"])


def initial_state(s: Setup) -> dict:
    """Step-0 state: params from ``config.warm_start`` (another run's checkpoint), else the
    task's pretrained params if it has them, else a random init; a fresh optimizer state."""
    params_abs = s.abstract_state["params"]
    if s.config.warm_start:
        params = warm_start_params(s, s.config.warm_start, s.config.warm_start_step)
    else:
        pre = s.task.load_pretrained()
        if pre is None:
            return make_init_fn(s)(init_key(s.config.seed))
        check_same_tree(pre, params_abs, "task.load_pretrained() params")
        params = jax.tree.map(lambda x, a, sh: jax.device_put(np.asarray(x, a.dtype), sh), pre, params_abs,
                              s.state_shardings["params"])
    opt_init = jax.jit(s.tx.init, in_shardings=(s.state_shardings["params"],),
                       out_shardings=s.state_shardings["opt_state"])
    return {"step": jax.device_put(jnp.zeros((), jnp.int32), s.state_shardings["step"]), "params": params,
            "opt_state": opt_init(params)}


def seed_key(seed: int) -> jax.Array:
    """The run's base key: step ``s`` draws ``fold_in(seed_key(seed), s)``."""
    return jax.random.key(seed)


def make_train_step(s: Setup, steps: int = 1):
    """Jitted ``train_step(state, batch, base_key) -> (state, metrics)``; ``state`` is donated.

    ``batch`` holds ``config.batch_size`` examples; with ``optim.grad_accum = A`` they are
    split into A strided micro-batches whose gradients are averaged by a ``lax.scan``.
    ``base_key`` is :func:`seed_key` of the run.  With ``steps = S > 1`` every batch array has
    a leading axis of S consecutive steps (``[S, batch_size, ...]``) which a ``lax.scan``
    walks, and every metric comes back as ``[S]``.
    """
    cfg = s.config
    accum = cfg.optim.grad_accum
    schedules = s.schedules

    def micro_spec(x):
        return NamedSharding(s.mesh, P(None, mesh_lib.BATCH_AXES, *([None] * (x.ndim - 2))))

    def step_fn(state, batch, base_key):
        if not jnp.issubdtype(base_key.dtype, jax.dtypes.prng_key):   # raw key data (a global uint32 array)
            base_key = jax.random.wrap_key_data(base_key)
        step = state["step"]
        rng = jax.random.fold_in(base_key, step)
        params = state["params"]
        grad_fn = jax.value_and_grad(s.task.loss_fn, has_aux=True)

        with mesh_lib.logical_context(s.mesh, cfg.axis_rules):
            if accum == 1:
                (loss, aux), grads = grad_fn(params, batch, jax.random.fold_in(rng, 0))
            else:
                def split(x):
                    x = x.reshape((x.shape[0] // accum, accum) + x.shape[1:]).swapaxes(0, 1)
                    return jax.lax.with_sharding_constraint(x, micro_spec(x))

                micro = jax.tree.map(split, batch)

                def body(carry, inp):
                    i, mb = inp
                    (l, a), g = grad_fn(params, mb, jax.random.fold_in(rng, i))
                    g_acc, l_acc, a_acc = carry
                    return (jax.tree.map(jnp.add, g_acc, g), l_acc + l, jax.tree.map(jnp.add, a_acc, a)), None

                (l0, a0), g0 = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro), rng)
                zeros = lambda t: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), t)
                init = (zeros(g0), jnp.zeros(l0.shape, l0.dtype), zeros(a0))
                (g_sum, l_sum, a_sum), _ = jax.lax.scan(body, init, (jnp.arange(accum), micro))
                grads = jax.tree.map(lambda g: g / accum, g_sum)
                loss = l_sum / accum
                aux = jax.tree.map(lambda a: a / accum, a_sum)

        updates, opt_state = s.tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
                   "learning_rate": schedules[optim_lib.DEFAULT_GROUP](step)}
        for name, sched in schedules.items():
            if name != optim_lib.DEFAULT_GROUP:
                metrics[f"learning_rate/{name}"] = sched(step)
        metrics.update({f"train/{k}": v for k, v in aux.items()})
        return {"step": step + 1, "params": new_params, "opt_state": opt_state}, metrics

    replicated = NamedSharding(s.mesh, P())
    if steps == 1:
        return jax.jit(step_fn, in_shardings=(s.state_shardings, s.batch_shardings, replicated),
                       out_shardings=(s.state_shardings, replicated), donate_argnums=(0,))

    def multi_fn(state, batches, base_key):
        return jax.lax.scan(lambda st, b: step_fn(st, b, base_key), state, batches)

    return jax.jit(multi_fn, in_shardings=(s.state_shardings, stacked_shardings(s), replicated),
                   out_shardings=(s.state_shardings, replicated), donate_argnums=(0,))


def stacked_shardings(s: Setup) -> dict:
    """Shardings of batches stacked over steps, ``[S, batch, ...]`` (for ``steps_per_call``)."""
    return {k: NamedSharding(s.mesh, P(None, *sh.spec)) for k, sh in s.batch_shardings.items()}


def make_eval_step(s: Setup):
    """Jitted ``eval_step(params, batch) -> sums`` (replicated)."""
    def eval_fn(params, batch):
        with mesh_lib.logical_context(s.mesh, s.config.axis_rules):
            return s.task.eval_fn(params, batch)

    return jax.jit(eval_fn, in_shardings=(s.state_shardings["params"], s.eval_batch_shardings),
                   out_shardings=NamedSharding(s.mesh, P()))


PER_EXAMPLE = "per_example/"


def split_per_example(out: Mapping[str, Any]) -> tuple[dict, dict]:
    """An eval step's outputs -> (sums, per-example rows named without the ``per_example/`` prefix)."""
    rows = {k[len(PER_EXAMPLE):]: v for k, v in out.items() if k.startswith(PER_EXAMPLE)}
    return {k: v for k, v in out.items() if not k.startswith(PER_EXAMPLE)}, rows


def evaluate(s: Setup, eval_step, params, *, split: str | None = None, predictions: list | None = None
             ) -> dict[str, float]:
    """One pass over ``split`` (default ``config.eval_split``; ``config.eval_steps`` batches if > 0);
    returns task metrics.  Outputs of ``eval_fn`` named ``per_example/<name>`` ([B, ...] arrays,
    with ``per_example/index`` the example's position, -1 on padding) are not summed: when
    ``predictions`` is a list, one dict per real example is appended to it, in split order."""
    cfg = s.config
    split = split or cfg.eval_split
    it = s.task.make_data(split, batch_size=cfg.eval_batch_size // jax.process_count(), train=False,
                          seed=cfg.seed, shard_index=jax.process_index(), shard_count=jax.process_count())
    sums, rows = None, []
    for i, batch in enumerate(it):
        if cfg.eval_steps and i >= cfg.eval_steps:
            break
        out = eval_step(params, data_lib.to_global(batch, s.eval_batch_shardings))
        out, per = split_per_example(out)
        if per and predictions is not None:
            rows.append(jax.device_get(per))
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    if sums is None:
        raise ValueError(f"evaluation split {split!r} yielded no batches")
    if rows and predictions is not None:
        cols = {k: np.concatenate([np.asarray(r[k]) for r in rows]) for k in rows[0]}
        keep = np.flatnonzero(cols["index"] >= 0)
        keep = keep[np.argsort(cols["index"][keep], kind="stable")]
        predictions.extend({k: v[i].tolist() for k, v in cols.items()} for i in keep)
    return {f"eval/{k}": v for k, v in s.task.finalize_eval(jax.device_get(sums)).items()}


def eval_paths(out_dir: str, split: str, step: int) -> dict[str, str]:
    """Where :func:`write_eval` puts the metrics (json), table (md) and per-example predictions (jsonl)."""
    stem = os.path.join(out_dir, f"eval_{split}_{step}")
    return {"json": stem + ".json", "md": stem + ".md", "predictions": stem + ".predictions.jsonl"}


def write_eval(s: Setup, out_dir: str, *, split: str, step: int, metrics: Mapping[str, float], source: str,
               predictions: list | None = None, extra: Mapping | None = None) -> dict:
    """Writes :func:`eval_paths` (process 0) and returns the JSON record
    ``{"split", "step", "task", "source", "metrics", "examples", **extra}``."""
    plain = {k.removeprefix("eval/"): float(v) for k, v in metrics.items()}
    record = {"split": split, "step": int(step), "task": s.config.task.name, "source": source, "metrics": plain,
              "examples": len(predictions or []), **dict(extra or {})}
    if jax.process_index() == 0:
        os.makedirs(out_dir, exist_ok=True)
        paths = eval_paths(out_dir, split, step)
        _atomic_write(paths["json"], json.dumps(record, indent=2))
        _atomic_write(paths["md"], f"## {s.config.task.name}: {split} split, step {step}\n\n"
                      + s.task.eval_report(plain))
        if predictions:
            _atomic_write(paths["predictions"], "".join(json.dumps(p) + "\n" for p in predictions))
    return record


def _atomic_write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


DONE_FILE = "done.json"


def read_done(workdir: str) -> dict | None:
    """The ``done.json`` a finished run leaves (``{"step", "final": {split: metrics}}``), or None."""
    path = os.path.join(workdir, DONE_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def init_key(seed: int) -> jax.Array:
    """Key for parameter init; distinct from the per-step keys ``fold_in(key(seed), step)``."""
    return jax.random.split(jax.random.key(seed))[1]


class _StopFlag:
    """Set by SIGTERM (preemption); checked before the first step and at every step boundary.

    Installed for the whole of :func:`train_and_evaluate` (start-up, steps, saves and the wait
    for the final save), so a SIGTERM at any moment ends in a complete newest checkpoint.
    A previous handler that recorded a SIGTERM (``launch.cli.run(..., defer_sigterm=True)``
    covers the launcher's imports) hands it over through its ``received`` attribute.
    """

    def __init__(self):
        self.set = False
        self._prev = None

    def install(self):
        if threading.current_thread() is threading.main_thread():
            self._prev = signal.signal(signal.SIGTERM, self._handle)
            self.set = self.set or bool(getattr(self._prev, "received", False))

    def _handle(self, signum, frame):
        del signum, frame
        self.set = True

    def uninstall(self):
        if self._prev is not None:
            signal.signal(signal.SIGTERM, self._prev)
            self._prev = None

    def any_process(self) -> bool:
        if jax.process_count() == 1:
            return self.set
        from jax.experimental import multihost_utils
        return bool(np.any(multihost_utils.process_allgather(np.asarray(self.set))))


@dataclasses.dataclass
class RunResult:
    step: int                 # last completed step
    preempted: bool           # stopped by SIGTERM before total_steps
    history: list             # metric records written this run
    eval_metrics: dict


def _call_sizes(cfg, step: int, stop_at: int | None) -> int:
    """Steps in the next jitted call: ``steps_per_call``, cut at the next log / eval /
    checkpoint / stop boundary (so every boundary is a call boundary)."""
    bounds = [cfg.total_steps, step - step % cfg.log_every_steps + cfg.log_every_steps,
              step - step % cfg.checkpoint_every_steps + cfg.checkpoint_every_steps]
    if cfg.eval_every_steps:
        bounds.append(step - step % cfg.eval_every_steps + cfg.eval_every_steps)
    if stop_at is not None and stop_at > step:
        bounds.append(stop_at)
    return max(1, min(cfg.steps_per_call, min(bounds) - step))


def train_and_evaluate(config: mlc.ConfigDict, workdir: str, *, devices=None, stop_at: int | None = None
                       ) -> RunResult:
    """Trains ``config`` in ``workdir``, resuming from its newest intact checkpoint.

    ``stop_at``: end this run after that step (saving a checkpoint), as a preemption
    would; a later call with the same workdir continues to ``config.total_steps``.
    The last step evaluates ``config.eval_split`` before its save, so ``checkpoint.keep_best``
    ranks it too (with ``eval_every_steps = 0`` it is the only ranked save). After the last
    step the params are evaluated on ``config.final_eval_splits`` (files by :func:`write_eval`
    in ``workdir``; eval_split reuses the last step's evaluation) and ``workdir/done.json`` is written.
    SIGTERM (preemption) at any moment: the run stops at the next call boundary, saves, waits
    for the save to commit and returns ``preempted=True`` (before the first step: nothing new
    to save). A resumed run first drops the metric records of steps after the restored one.
    """
    stop = _StopFlag()
    stop.install()
    try:
        return _train_and_evaluate(config, workdir, stop, devices=devices, stop_at=stop_at)
    finally:
        stop.uninstall()


def resolve_warm_start(config: mlc.ConfigDict, workdir: str) -> mlc.ConfigDict:
    """``config`` with a relative ``warm_start`` made a path: as given when it exists from the
    current directory, else a sibling of ``workdir`` (a sweep names its runs that way, so a
    printed ``launch.train`` command works from anywhere)."""
    ws = config.get("warm_start", "")
    if not ws or os.path.isabs(ws) or "://" in ws or os.path.isdir(ws):
        return config
    sibling = os.path.join(os.path.dirname(os.path.abspath(workdir)), ws)
    if not os.path.isdir(sibling):
        return config          # warm_start_params names the missing directory
    config = mlc.ConfigDict(config.to_dict())
    config.warm_start = sibling
    return config


def _train_and_evaluate(config: mlc.ConfigDict, workdir: str, stop: _StopFlag, *, devices=None,
                        stop_at: int | None = None) -> RunResult:
    s = build(resolve_warm_start(config, workdir), devices=devices)
    cfg = s.config
    pid, nproc = jax.process_index(), jax.process_count()
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.checkpoint.keep,
                                 keep_best=cfg.checkpoint.keep_best, best_metric=cfg.checkpoint.best_metric,
                                 best_mode=cfg.checkpoint.best_mode, async_save=cfg.checkpoint.async_save)
    train_iter = None
    if cfg.total_steps > 0:
        train_iter = s.task.make_data("train", batch_size=cfg.batch_size // nproc, train=True, seed=cfg.seed,
                                      shard_index=pid, shard_count=nproc)
    abstract = ckpt_lib.abstract_with_shardings(s.abstract_state, s.state_shardings)
    restored = ckpt.restore_latest(abstract, data_iter=train_iter)
    if restored is None:
        state = initial_state(s)
        logging.info("initialised a new run in %s", workdir)
    else:
        _, state, _ = restored
        logging.info("resumed %s at step %d", workdir, int(state["step"]))
    start = int(jax.device_get(state["step"]))
    writer = metrics_lib.MetricWriter(workdir, resume_step=start)   # drops records after `start`
    if pid == 0:
        os.makedirs(workdir, exist_ok=True)
        _atomic_write(os.path.join(workdir, "config.json"), cfg.to_json_best_effort(indent=2))
        logging.info("params: %s", s.param_counts)

    raw_key = np.asarray(jax.random.key_data(seed_key(cfg.seed)))      # replicated on every process's devices
    base_key = jax.make_array_from_callback(raw_key.shape, NamedSharding(s.mesh, P()), lambda i: raw_key[i])
    steppers: dict[int, Any] = {}
    eval_step = make_eval_step(s)
    progress = metrics_lib.Progress(cfg.total_steps, start)
    history, eval_metrics, acc, n_acc = [], {}, None, 0
    last_eval = None       # (metrics, predictions) of the last step's evaluation of eval_split
    meta = {"config": cfg.to_dict(), "task": cfg.task.name, **s.task.checkpoint_meta()}
    step = start
    preempted = False
    try:
        if cfg.total_steps == 0 and restored is None:      # evaluate only: keep the evaluated params
            ckpt.save(0, state, meta={**meta, "step": 0})
        if stop.any_process() and step < cfg.total_steps:
            logging.warning("SIGTERM before the first step: %s", f"nothing new to save (newest checkpoint: step "
                            f"{start})" if restored else "nothing to save yet (no checkpoint)")
            preempted = True
        while not preempted and step < cfg.total_steps:
            n = _call_sizes(cfg, step, stop_at)
            if n not in steppers:
                steppers[n] = make_train_step(s, n)
            if n == 1:
                batch = data_lib.to_global(next(train_iter), s.batch_shardings)
            else:
                parts = [next(train_iter) for _ in range(n)]
                batch = data_lib.to_global({k: np.stack([p[k] for p in parts]) for k in s.batch_shardings},
                                           stacked_shardings(s))
            state, m = steppers[n](state, batch, base_key)
            step += n
            m = m if n == 1 else jax.tree.map(lambda x: jnp.sum(x, axis=0), m)
            acc = m if acc is None else jax.tree.map(jnp.add, acc, m)
            n_acc += n
            last = step == cfg.total_steps
            preempt = stop.any_process() or (stop_at is not None and step >= stop_at)
            rec = {}
            if step % cfg.log_every_steps == 0 or last or preempt:   # a stop flushes the partial mean
                rec = {k: v / n_acc for k, v in jax.device_get(acc).items()}
                rec["learning_rate"] = float(jax.device_get(s.schedules[optim_lib.DEFAULT_GROUP](step - 1)))
                rec["steps_in_mean"] = n_acc
                rec.update(progress.update(step, rec))
                acc, n_acc = None, 0
            # the last step always evaluates eval_split before its save, so best-N sees that evaluation
            # too; it is also eval_split's final one below when that split is among final_eval_splits
            do_eval = (cfg.eval_every_steps and step % cfg.eval_every_steps == 0) or last
            if do_eval:
                preds = [] if last and cfg.eval_split in cfg.final_eval_splits else None
                eval_metrics = evaluate(s, eval_step, state["params"], predictions=preds)
                rec.update(eval_metrics)
                if preds is not None:
                    last_eval = (eval_metrics, preds)
            if rec:      # one record per step: train metrics and, at eval steps, eval metrics
                history.append(writer.write(step, rec))
            if step % cfg.checkpoint_every_steps == 0 or last or preempt:
                ckpt.save(step, state, data_iter=train_iter, meta={**meta, "step": step},
                          metrics=eval_metrics if do_eval else None)
            if preempt and not last:
                logging.warning("stopping early (SIGTERM or stop_at): saved step %d in %s", step, workdir)
                preempted = True
                break
        if step >= cfg.total_steps and not preempted and read_done(workdir) is None:
            final = {}
            for split in cfg.final_eval_splits:
                if split == cfg.eval_split and last_eval is not None:
                    metrics, preds = last_eval        # evaluated (and recorded) at the last step, before its save
                else:
                    preds = []
                    metrics = evaluate(s, eval_step, state["params"], split=split, predictions=preds)
                    if split == cfg.eval_split:
                        eval_metrics = metrics
                        writer.write(step, metrics)
                final[split] = write_eval(s, workdir, split=split, step=step, metrics=metrics,
                                          source=os.path.abspath(workdir), predictions=preds)["metrics"]
                logging.info("final %s: %s", split, final[split])
            if not eval_metrics and not cfg.final_eval_splits:
                eval_metrics = evaluate(s, eval_step, state["params"])
            ckpt.wait()
            if pid == 0:
                _atomic_write(os.path.join(workdir, DONE_FILE), json.dumps({"step": step, "final": final,
                                                                            "eval": {k: float(v) for k, v in
                                                                                     eval_metrics.items()}}))
    finally:
        try:
            ckpt.close()        # waits for the last save to commit, SIGTERM still handled
        finally:
            writer.close()
    return RunResult(step=step, preempted=preempted, history=history, eval_metrics=eval_metrics)


def compile_train_step(config: mlc.ConfigDict, *, devices=None) -> dict:
    """Lowers + compiles the train step with abstract inputs only (no data, no weights).

    Returns ``{"params": int, "memory": CompiledMemoryStats | None, "flops": float | None,
    "mesh": dict}`` (memory/FLOPs as XLA reports them for one device).
    """
    s = build(config, devices=devices)
    step = make_train_step(s)
    state = ckpt_lib.abstract_with_shardings(s.abstract_state, s.state_shardings)
    ab = s.task.abstract_batch(config.batch_size, train=True)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s.batch_shardings[k]) for k, v in ab.items()}
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=NamedSharding(s.mesh, P()))
    compiled = step.lower(state, batch, key).compile()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    flops = float(cost.get("flops", 0.0)) if cost else None
    try:
        mem = compiled.memory_analysis()
    except Exception:  # some backends do not implement it
        mem = None
    return {"params": s.param_counts, "memory": mem, "flops": flops, "mesh": dict(s.mesh.shape)}
