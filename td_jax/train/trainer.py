"""Sharded train / eval steps and the training loop.

    setup = build(config)                 # mesh, task, optimizer, abstract state + shardings
    train_and_evaluate(config, workdir)   # resume, train, log, evaluate, checkpoint

The train state is a dict ``{"step": int32 [], "params": ..., "opt_state": ...}`` with
fp32 params (``config.param_dtype``); the task computes in ``config.compute_dtype``.
Step ``s`` uses the PRNG key ``fold_in(PRNGKey(seed), s)`` (then one fold per
micro-batch), so a resumed run draws exactly the keys of an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import signal
import threading
import time
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


def initial_state(s: Setup) -> dict:
    """Step-0 state: the task's pretrained params if it has them, else a random init."""
    pre = s.task.load_pretrained()
    if pre is None:
        return make_init_fn(s)(init_key(s.config.seed))
    params_abs = s.abstract_state["params"]
    if jax.tree.structure(pre) != jax.tree.structure(params_abs):
        raise ValueError("task.load_pretrained() params do not match the model's param tree")
    bad = [(mesh_lib.path_str(p), tuple(np.shape(x)), a.shape) for (p, x), a in
           zip(jax.tree_util.tree_flatten_with_path(pre)[0], jax.tree.leaves(params_abs)) if np.shape(x) != a.shape]
    if bad:
        raise ValueError(f"pretrained params have wrong shapes (path, got, want): {bad[:5]}")
    params = jax.tree.map(lambda x, a, sh: jax.device_put(np.asarray(x, a.dtype), sh), pre, params_abs,
                          s.state_shardings["params"])
    opt_init = jax.jit(s.tx.init, in_shardings=(s.state_shardings["params"],),
                       out_shardings=s.state_shardings["opt_state"])
    return {"step": jax.device_put(jnp.zeros((), jnp.int32), s.state_shardings["step"]), "params": params,
            "opt_state": opt_init(params)}


def make_train_step(s: Setup):
    """Jitted ``train_step(state, batch) -> (state, metrics)``; ``state`` is donated.

    ``batch`` holds ``config.batch_size`` examples; with ``optim.grad_accum = A`` they are
    split into A strided micro-batches whose gradients are averaged by a ``lax.scan``.
    """
    cfg = s.config
    accum = cfg.optim.grad_accum
    base_key = jax.random.key(cfg.seed)
    schedules = s.schedules

    def micro_spec(x):
        return NamedSharding(s.mesh, P(None, mesh_lib.BATCH_AXES, *([None] * (x.ndim - 2))))

    def step_fn(state, batch):
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
    return jax.jit(step_fn, in_shardings=(s.state_shardings, s.batch_shardings),
                   out_shardings=(s.state_shardings, replicated), donate_argnums=(0,))


def make_eval_step(s: Setup):
    """Jitted ``eval_step(params, batch) -> sums`` (replicated)."""
    def eval_fn(params, batch):
        with mesh_lib.logical_context(s.mesh, s.config.axis_rules):
            return s.task.eval_fn(params, batch)

    return jax.jit(eval_fn, in_shardings=(s.state_shardings["params"], s.eval_batch_shardings),
                   out_shardings=NamedSharding(s.mesh, P()))


def evaluate(s: Setup, eval_step, params, *, split: str = "validation") -> dict[str, float]:
    """One pass over ``split`` (``config.eval_steps`` batches if > 0); returns task metrics."""
    cfg = s.config
    it = s.task.make_data(split, batch_size=cfg.eval_batch_size // jax.process_count(), train=False,
                          seed=cfg.seed, shard_index=jax.process_index(), shard_count=jax.process_count())
    sums = None
    for i, batch in enumerate(it):
        if cfg.eval_steps and i >= cfg.eval_steps:
            break
        out = eval_step(params, data_lib.to_global(batch, s.eval_batch_shardings))
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    if sums is None:
        raise ValueError(f"evaluation split {split!r} yielded no batches")
    return {f"eval/{k}": v for k, v in s.task.finalize_eval(jax.device_get(sums)).items()}


def init_key(seed: int) -> jax.Array:
    """Key for parameter init; distinct from the per-step keys ``fold_in(key(seed), step)``."""
    return jax.random.split(jax.random.key(seed))[1]


class _StopFlag:
    """Set by SIGTERM (preemption); checked at every step boundary."""

    def __init__(self):
        self.set = False
        self._prev = None

    def install(self):
        if threading.current_thread() is threading.main_thread():
            self._prev = signal.signal(signal.SIGTERM, self._handle)

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


def train_and_evaluate(config: mlc.ConfigDict, workdir: str, *, devices=None, stop_at: int | None = None
                       ) -> RunResult:
    """Trains ``config`` in ``workdir``, resuming from its newest complete checkpoint.

    ``stop_at``: end this run after that step (saving a checkpoint), as a preemption
    would; a later call with the same workdir continues to ``config.total_steps``.
    """
    s = build(config, devices=devices)
    cfg = s.config
    pid, nproc = jax.process_index(), jax.process_count()
    writer = metrics_lib.MetricWriter(workdir)
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.checkpoint.keep,
                                 keep_best=cfg.checkpoint.keep_best, best_metric=cfg.checkpoint.best_metric,
                                 best_mode=cfg.checkpoint.best_mode, async_save=cfg.checkpoint.async_save)
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
    if pid == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(cfg.to_json_best_effort(indent=2))
        logging.info("params: %s", s.param_counts)

    train_step = make_train_step(s)
    eval_step = make_eval_step(s)
    start = int(jax.device_get(state["step"]))
    progress = metrics_lib.Progress(cfg.total_steps, start)
    stop = _StopFlag()
    stop.install()
    history, eval_metrics, acc, n_acc = [], {}, None, 0
    meta = {"config": cfg.to_dict(), "task": cfg.task.name, **s.task.checkpoint_meta()}
    step = start
    preempted = False
    try:
        while step < cfg.total_steps:
            batch = data_lib.to_global(next(train_iter), s.batch_shardings)
            state, m = train_step(state, batch)
            step += 1
            acc = m if acc is None else jax.tree.map(jnp.add, acc, m)
            n_acc += 1
            last = step == cfg.total_steps
            rec = {}
            if step % cfg.log_every_steps == 0 or last:
                rec = {k: v / n_acc for k, v in jax.device_get(acc).items()}
                rec["learning_rate"] = jax.device_get(m["learning_rate"])
                rec.update(progress.update(step, rec))
                acc, n_acc = None, 0
            do_eval = (cfg.eval_every_steps and step % cfg.eval_every_steps == 0) or last
            if do_eval:
                eval_metrics = evaluate(s, eval_step, state["params"])
                rec.update(eval_metrics)
            if rec:      # one record per step: train metrics and, at eval steps, eval metrics
                history.append(writer.write(step, rec))
            preempt = stop.any_process() or (stop_at is not None and step >= stop_at)
            if step % cfg.checkpoint_every_steps == 0 or last or preempt:
                ckpt.save(step, state, data_iter=train_iter, meta={**meta, "step": step},
                          metrics=eval_metrics if do_eval else None)
            if preempt and not last:
                logging.warning("stopping early (SIGTERM or stop_at): saved step %d in %s", step, workdir)
                preempted = True
                break
    finally:
        stop.uninstall()
        ckpt.close()
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
    compiled = step.lower(state, batch).compile()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    flops = float(cost.get("flops", 0.0)) if cost else None
    try:
        mem = compiled.memory_analysis()
    except Exception:  # some backends do not implement it
        mem = None
    return {"params": s.param_counts, "memory": mem, "flops": flops, "mesh": dict(s.mesh.shape)}
