"""The generic experiment framework on the synthetic multiple-choice task (MLP + Grain).

Covers: config validation, mesh sizes, optimizer groups / frozen params / schedule /
accumulation, training lowers the loss, resume is bit-identical, 8 devices (data, fsdp,
tensor) match 1 device, restore onto another mesh, half-written checkpoints are ignored,
keep-latest + keep-best, metrics.jsonl + TensorBoard, multiple-choice scoring.
"""
import glob
import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest

from td_jax.eval import mc
from td_jax.train import checkpoint as ckpt_lib
from td_jax.train import mesh as mesh_lib
from td_jax.train import optim as optim_lib
from td_jax.train import trainer
from td_jax.train.metrics import read_metrics


def user_config(**over) -> mlc.ConfigDict:
    c = mlc.ConfigDict()
    c.seed = 0
    c.total_steps = 12
    c.log_every_steps = 1
    c.checkpoint_every_steps = 6
    c.eval_every_steps = 6
    c.batch_size = 16
    c.eval_batch_size = 32
    c.compute_dtype = "float32"
    c.mesh = mlc.ConfigDict({"data": 2, "fsdp": 2, "tensor": 2})
    c.optim = mlc.ConfigDict({"lr": 1e-2, "warmup_frac": 0.1, "weight_decay": 1e-4, "clip_norm": 1.0,
                              "groups": {"head": {"pattern": "^head/", "lr": 2e-2}}, "frozen": "^norm/"})
    c.checkpoint = mlc.ConfigDict({"keep": 1, "keep_best": 1, "best_metric": "eval/accuracy"})
    c.task = mlc.ConfigDict({"name": "synthetic_mc", "hidden": 32, "depth": 2})
    d = c.to_dict()
    for k, v in over.items():
        node = d
        parts = k.split(".")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = v.to_dict() if isinstance(v, mlc.ConfigDict) else v
    return mlc.ConfigDict(d)


def resolved(**over):
    return trainer.resolve_config(user_config(**over))


def losses(history):
    return {r["step"]: r["loss"] for r in history if "loss" in r}


def final_params(workdir, cfg, devices=None):
    s = trainer.build(cfg, devices=devices)
    ck = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    try:
        step, state, _ = ck.restore_latest(ckpt_lib.abstract_with_shardings(s.abstract_state, s.state_shardings))
    finally:
        ck.close()
    return step, state


# ---------------------------------------------------------------- config

def test_config_typo_names_the_key():
    c = user_config()
    c.optim.warmup_fracc = 0.2
    with pytest.raises(ValueError, match=r"'optim\.warmup_fracc'.*did you mean 'optim\.warmup_frac'"):
        trainer.resolve_config(c)


def test_config_wrong_type_and_missing_key_named():
    with pytest.raises(TypeError, match="'total_steps' must be int"):
        resolved(total_steps="ten")
    with pytest.raises(TypeError, match=r"'optim\.groups\.head\.lr' must be float"):
        resolved(**{"optim.groups": mlc.ConfigDict({"head": {"pattern": "x", "lr": "fast"}})})
    with pytest.raises(ValueError, match=r"'task\.hiddenn'"):
        resolved(**{"task": mlc.ConfigDict({"name": "synthetic_mc", "hiddenn": 3})})
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        resolved(**{"task": mlc.ConfigDict({"name": "nope"})})
    c = user_config()
    del c["seed"]
    with pytest.raises(ValueError, match="'seed' is required"):
        trainer.resolve_config(c)
    with pytest.raises(ValueError, match="'batch_size'.*divisible by 'optim.grad_accum'"):
        resolved(batch_size=10, **{"optim.grad_accum": 4})


def test_config_fills_defaults_and_locks():
    cfg = resolved()
    assert cfg.optim.b2 == 0.999 and cfg.task.depth == 2 and cfg.task.features == 16
    with pytest.raises(AttributeError):
        cfg.not_a_key = 1


# ---------------------------------------------------------------- mesh

def test_mesh_shape_resolves_minus_one_and_rejects_bad_sizes():
    assert mesh_lib.mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)
    assert mesh_lib.mesh_shape({"data": 1, "fsdp": -1, "tensor": 1}, 8) == (1, 8, 1)
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        mesh_lib.mesh_shape({"data": -1, "fsdp": -1, "tensor": 1}, 8)
    with pytest.raises(ValueError, match="needs 12 devices, have 8"):
        mesh_lib.mesh_shape({"data": 3, "fsdp": 2, "tensor": 2}, 8)
    with pytest.raises(ValueError, match="not divisible"):
        mesh_lib.mesh_shape({"data": -1, "fsdp": 3, "tensor": 1}, 8)
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": -1})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}


def test_logical_rules_shard_params_over_fsdp_and_tensor():
    s = trainer.build(resolved())
    kernel = s.state_shardings["params"]["hidden_0"]["kernel"]     # ("embed", "mlp")
    assert kernel.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    mu = s.state_shardings["opt_state"]
    # Adam moments of the kernel carry the kernel's sharding (found by path suffix).
    specs = [x.spec for x in jax.tree.leaves(mu)]
    assert specs.count(jax.sharding.PartitionSpec("fsdp", "tensor")) == 2   # mu, nu of hidden_0's kernel
    with pytest.raises(ValueError, match="unknown mesh axes"):
        mesh_lib.axis_rules([("embed", "model")])


# ---------------------------------------------------------------- optimizer

def test_schedule_warmup_then_cosine():
    sched = optim_lib.schedule(1.0, 100, warmup_frac=0.1, end_lr_frac=0.1)
    assert float(sched(0)) == 0.0
    assert float(sched(5)) == pytest.approx(0.5)
    assert float(sched(10)) == pytest.approx(1.0)
    assert float(sched(100)) == pytest.approx(0.1)
    assert float(sched(55)) == pytest.approx(0.1 + 0.9 * 0.5, rel=1e-5)


def test_groups_frozen_and_clipping():
    cfg = {"name": "adamw", "lr": 1.0, "schedule": "constant", "warmup_frac": 0.0, "end_lr_frac": 0.0,
           "weight_decay": 0.0, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "momentum": 0.0, "clip_norm": 0.0,
           "grad_accum": 1, "groups": {"slow": {"pattern": "^vision/", "lr": 0.1}}, "frozen": "^llm/embed"}
    params = {"vision": {"w": jnp.ones((2, 2))}, "llm": {"embed": jnp.ones((3, 2)), "out": jnp.ones((2,))}}
    labels = optim_lib.label_params(params, cfg)
    assert labels == {"vision": {"w": "slow"}, "llm": {"embed": "frozen", "out": "default"}}
    tx, _ = optim_lib.make_optimizer(cfg, 10)
    grads = jax.tree.map(jnp.ones_like, params)
    upd, _ = tx.update(grads, tx.init(params), params)
    # Adam's first step moves every param by -lr (sign of the gradient).
    np.testing.assert_allclose(upd["vision"]["w"], -0.1, rtol=1e-5)
    np.testing.assert_allclose(upd["llm"]["out"], -1.0, rtol=1e-5)
    np.testing.assert_array_equal(upd["llm"]["embed"], 0.0)
    # Clipping uses the trainable gradients only: huge frozen grads do not shrink the rest.
    sgd = dict(cfg, name="sgd", clip_norm=1.0, groups={}, frozen="^llm/embed")
    tx, _ = optim_lib.make_optimizer(sgd, 10)
    grads = {"vision": {"w": jnp.full((2, 2), 0.1)}, "llm": {"embed": jnp.full((3, 2), 1e6), "out": jnp.zeros((2,))}}
    upd, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(upd["vision"]["w"], -0.1, rtol=1e-5)
    grads["vision"]["w"] = jnp.full((2, 2), 10.0)   # global norm 20 -> scaled to 1
    upd, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(upd["vision"]["w"], -0.5, rtol=1e-4)


def test_grad_accumulation_matches_one_big_batch():
    cfg1 = resolved(**{"optim.grad_accum": 1})
    cfg4 = resolved(**{"optim.grad_accum": 4, "mesh": mlc.ConfigDict({"data": 2, "fsdp": 2, "tensor": 2})})
    outs = []
    for cfg in (cfg1, cfg4):
        s = trainer.build(cfg)
        state = trainer.make_init_fn(s)(trainer.init_key(cfg.seed))
        rng = np.random.default_rng(0)
        batch = {"x": rng.normal(size=(16, 16)).astype(np.float32), "label": rng.integers(0, 8, 16).astype(np.int32)}
        from td_jax.train import data as data_lib
        state, m = trainer.make_train_step(s)(state, data_lib.to_global(batch, s.batch_shardings),
                                              trainer.seed_key(cfg.seed))
        outs.append((jax.device_get(state["params"]), float(m["loss"])))
    assert outs[0][1] == pytest.approx(outs[1][1], rel=1e-5)
    for a, b in zip(jax.tree.leaves(outs[0][0]), jax.tree.leaves(outs[1][0])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_steps_per_call_scans_the_same_steps():
    """S optimizer steps in one jitted call (a scan over [S, B, ...]) = S calls of one step."""
    from td_jax.train import data as data_lib

    cfg = resolved(**{"mesh": mlc.ConfigDict({"data": 2, "fsdp": 2, "tensor": 2})})
    s = trainer.build(cfg)
    rng = np.random.default_rng(1)
    batches = [{"x": rng.normal(size=(16, 16)).astype(np.float32), "label": rng.integers(0, 8, 16).astype(np.int32)}
               for _ in range(3)]
    key = trainer.seed_key(cfg.seed)
    one = trainer.make_init_fn(s)(trainer.init_key(cfg.seed))
    step1 = trainer.make_train_step(s)
    losses = []
    for b in batches:
        one, m = step1(one, data_lib.to_global(b, s.batch_shardings), key)
        losses.append(float(m["loss"]))
    three = trainer.make_init_fn(s)(trainer.init_key(cfg.seed))
    stacked = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
    three, m3 = trainer.make_train_step(s, 3)(three, data_lib.to_global(stacked, trainer.stacked_shardings(s)), key)
    assert int(three["step"]) == int(one["step"]) == 3
    np.testing.assert_allclose(np.asarray(m3["loss"]), losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(jax.device_get(one["params"])), jax.tree.leaves(jax.device_get(three["params"]))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_axis_rules_must_name_every_logical_axis():
    cfg = resolved()
    with cfg.unlocked():
        cfg.axis_rules = tuple(r for r in cfg.axis_rules if r[0] != "act_mlp")
    with pytest.raises(ValueError, match="act_mlp"):
        trainer.build(cfg)


# ---------------------------------------------------------------- training runs (shared)

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cfg = resolved()
    full = trainer.train_and_evaluate(cfg, str(root / "full"))
    part1 = trainer.train_and_evaluate(cfg, str(root / "resumed"), stop_at=6)
    part2 = trainer.train_and_evaluate(cfg, str(root / "resumed"))
    one = trainer.train_and_evaluate(resolved(**{"mesh": mlc.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})}),
                                     str(root / "one_device"), devices=jax.devices()[:1])
    return {"root": root, "cfg": cfg, "full": full, "part1": part1, "part2": part2, "one": one}


def test_training_lowers_loss_and_logs(runs):
    full = runs["full"]
    ls = losses(full.history)
    assert sorted(ls) == list(range(1, 13))
    assert np.mean([ls[11], ls[12]]) < 0.7 * np.mean([ls[1], ls[2]])
    recs = read_metrics(str(runs["root"] / "full"))
    assert [r["step"] for r in recs] == list(range(1, 13))      # one record per step
    assert all({"step", "loss", "learning_rate"} <= set(r) for r in recs)
    assert "eval/accuracy" in recs[5] and "eval/accuracy" in recs[11]
    assert recs[0]["learning_rate"] == pytest.approx(float(optim_lib.schedule(1e-2, 12, warmup_frac=0.1)(0)))
    assert "eval/accuracy/family_1" in full.eval_metrics
    assert full.eval_metrics["eval/accuracy"] > 0.4    # 8 classes: chance is 0.125
    assert glob.glob(str(runs["root"] / "full" / "tensorboard" / "events.out.tfevents.*"))
    assert json.load(open(runs["root"] / "full" / "config.json"))["task"]["name"] == "synthetic_mc"


def test_resume_is_bit_identical(runs):
    assert runs["part1"].preempted and runs["part1"].step == 6
    assert not runs["part2"].preempted and runs["part2"].step == 12
    full, resumed = losses(runs["full"].history), {**losses(runs["part1"].history), **losses(runs["part2"].history)}
    assert full == resumed                                      # exact float equality
    _, a = final_params(str(runs["root"] / "full"), runs["cfg"])
    _, b = final_params(str(runs["root"] / "resumed"), runs["cfg"])
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_eight_devices_match_one_device(runs):
    full, one = losses(runs["full"].history), losses(runs["one"].history)
    assert full.keys() == one.keys()
    np.testing.assert_allclose([full[k] for k in sorted(full)], [one[k] for k in sorted(one)], rtol=2e-4)


def test_restore_onto_other_mesh(runs):
    # Saved from a (2, 2, 2) mesh; restore onto (1, 8, 1) and onto one device.
    workdir = str(runs["root"] / "full")
    _, ref = final_params(workdir, runs["cfg"])
    cfg = resolved(**{"mesh": mlc.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})})
    _, other = final_params(workdir, cfg)
    k = other["params"]["hidden_0"]["kernel"]
    assert k.sharding.spec == jax.sharding.PartitionSpec("fsdp", None) or k.sharding.spec[0] == "fsdp"
    _, single = final_params(workdir, trainer.resolve_config(user_config(**{"mesh": mlc.ConfigDict(
        {"data": -1, "fsdp": 1, "tensor": 1})})), devices=jax.devices()[:1])
    for x, y, z in zip(jax.tree.leaves(ref), jax.tree.leaves(other), jax.tree.leaves(single)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        np.testing.assert_array_equal(np.asarray(x), np.asarray(z))


def test_keep_latest_plus_best(runs):
    steps = ckpt_lib.Checkpointer(str(runs["root"] / "full" / "checkpoints")).all_steps()
    evals = {r["step"]: r["eval/accuracy"] for r in runs["full"].history if "eval/accuracy" in r}
    best = max(evals, key=evals.get)
    assert 12 in steps and best in steps and set(steps) <= {6, 12}


def test_half_written_checkpoint_is_ignored(runs, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(runs["root"] / "resumed", work)
    ck_dir = work / "checkpoints"
    # A save cut short: Orbax's temporary directory for step 18, with a partial state item.
    tmp = ck_dir / "18.orbax-checkpoint-tmp-1700000000000000"
    shutil.copytree(ck_dir / "12", tmp)
    shutil.rmtree(tmp / "state")
    # And a damaged newest step directory (arrays lost after the rename).
    shutil.copytree(ck_dir / "12", ck_dir / "24")
    shutil.rmtree(ck_dir / "24" / "state")
    step, state = final_params(str(work), runs["cfg"])
    assert step == 12 and int(state["step"]) == 12
    assert not tmp.exists()                                  # Orbax cleaned its temporary directory
    assert (ck_dir / "24.damaged").is_dir() and not (ck_dir / "24").exists()
    assert ckpt_lib.Checkpointer(str(ck_dir)).all_steps() == [12]


def test_warm_start_and_evaluate_only(runs, tmp_path):
    """total_steps=0 + warm_start: another run's params, evaluated as they are; a done.json
    marks the run finished; a model that does not fit is named by path."""
    cfg = resolved(**{"total_steps": 0, "warm_start": str(runs["root"] / "full"),
                      "final_eval_splits": ("validation",)})
    res = trainer.train_and_evaluate(cfg, str(tmp_path / "eval_only"))
    assert res.step == 0
    assert res.eval_metrics["eval/accuracy"] == pytest.approx(runs["full"].eval_metrics["eval/accuracy"], abs=0)
    done = trainer.read_done(str(tmp_path / "eval_only"))
    assert done["step"] == 0 and done["final"]["validation"]["accuracy"] == res.eval_metrics["eval/accuracy"]
    bad = resolved(**{"total_steps": 0, "warm_start": str(runs["root"] / "full"), "task.hidden": 16})
    with pytest.raises(ValueError, match="hidden_0"):
        trainer.train_and_evaluate(bad, str(tmp_path / "bad"))
    with pytest.raises(FileNotFoundError, match="no run directory"):
        trainer.train_and_evaluate(resolved(**{"warm_start": str(tmp_path / "nowhere")}), str(tmp_path / "x"))
    # a relative warm_start names a sibling of the workdir (what a sweep's printed commands rely on)
    rel = resolved(**{"total_steps": 0, "warm_start": "full", "final_eval_splits": ("validation",)})
    res = trainer.train_and_evaluate(rel, str(runs["root"] / "eval_sibling"))
    assert res.eval_metrics["eval/accuracy"] == pytest.approx(runs["full"].eval_metrics["eval/accuracy"], abs=0)


# ---------------------------------------------------------------- multiple-choice scoring

def test_mc_scores_per_family():
    scores = jnp.array([[0.1, 0.9, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.0, 3.0, 0.0], [5.0, 0, 0]])
    answer = jnp.array([1, 1, 2, 1, 0])
    family = jnp.array([0, 0, 1, 1, 1])
    valid = jnp.array([True, True, True, True, False])
    sums = mc.mc_sums(scores, answer, family, valid, num_families=2)
    np.testing.assert_array_equal(sums["correct"], [1, 2])
    np.testing.assert_array_equal(sums["count"], [2, 2])
    m = mc.mc_metrics(jax.device_get(sums), ["what", "where"])
    assert m["accuracy"] == 0.75 and m["accuracy/what"] == 0.5 and m["accuracy/where"] == 1.0
    table = mc.markdown_table(m, ["what", "where"])
    assert "| what | 50.00 | 2 |" in table and "| **all** | 75.00 | 4 |" in table
    logits = jnp.arange(20.0).reshape(2, 10)
    np.testing.assert_array_equal(mc.option_scores(logits, jnp.array([3, 7])), [[3, 7], [13, 17]])
    with pytest.raises(ValueError, match="answer"):
        mc.mc_sums(scores, answer[:3], family, valid, num_families=2)
