"""Options that a mode never reads are refused, not silently ignored: token dynamics' fields per
variant / attention / adaptive method, and the launchers' mode-specific flags; and an
override holding commas reaches launch.tpu whole."""
import json
import os
import shlex
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

import procs
from td_jax import compressors

T = 2
X = jnp.asarray(jax.random.normal(jax.random.key(0), (1, T, 2, 2, 8)))
QUICK = {"iters": 2, "n_init": 1}


@pytest.mark.parametrize("name,cfg,field", [
    ("base_only", {"num_heads": 2}, "num_heads"),
    ("base_only", {"dropout": 0.1}, "dropout"),
    ("base_map", {"attention": "paper"}, "attention"),
    ("base_map", {"mlp_ratio": 2.0}, "mlp_ratio"),
    ("token_dynamics", {"attention": "paper", "own_bias": 1.0}, "own_bias"),
    ("random_map", {"attention": "paper", "neighbours": 3}, "neighbours"),
    ("token_dynamics", {"k_min": 3}, "k_min"),
    ("token_dynamics", {"adaptive": "elbow", "threshold": 0.3}, "threshold"),
])
def test_token_dynamics_refuses_options_its_variant_does_not_read(name, cfg, field):
    comp = compressors.get(name, **QUICK, **cfg)
    budget = T + 2 if name == "base_map" else 2
    with pytest.raises(ValueError, match=rf"^{field}=.* is not used by {name}.*this configuration uses: "):
        comp.init(jax.random.key(1), X, budget=budget)


def test_motion_qa_arms_configs_still_validate():
    from experiments import motion_qa as m

    s = m.settings(m.options(""))
    for arm in m.ARMS:
        if arm["compressor"] in ("token_dynamics", "base_only", "base_map", "random_map", "random_base"):
            compressors.get(arm["compressor"], **m.arm_cfg(arm, s)).module(64)._validate()


def _cli(module, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=procs.ROOT, env=procs.env(None),
                          capture_output=True, text=True, timeout=timeout)


def test_sweep_tpu_keeps_an_override_with_commas_whole():
    """The adaptive_elbow point's compressor_cfg (a JSON object with commas) reaches the
    launch.train command that launch.tpu builds from the printed line as one flag."""
    r = _cli("launch.sweep", "--config=experiments/motion_qa.py", "--workdir=gs://b/mqa", "--mode=tpu", "--tpu=pod",
             "--zone=z")
    assert r.returncode == 0, r.stderr[-2000:]
    line = next(ln for ln in r.stdout.splitlines() if "--workdir=gs://b/mqa/adaptive_elbow_s0 " in ln)
    argv = shlex.split(line)
    assert argv[:3] == ["python", "-m", "launch.tpu"]
    r = _cli("launch.tpu", *argv[3:])
    assert r.returncode == 0, r.stderr[-2000:]
    ssh = [ln for ln in r.stdout.splitlines() if ln.startswith("gcloud compute tpus tpu-vm ssh")][-1]
    remote = next(a for a in shlex.split(ssh) if a.startswith("--command="))
    train = shlex.split(remote.split(" && ", 1)[1])
    cfgs = [a.partition("=")[2] for a in train if a.startswith("--config.task.compressor_cfg=")]
    assert len(cfgs) == 1 and json.loads(cfgs[0]) == {"adaptive": "elbow", "iters": 20, "n_init": 1,
                                                       "refine_iters": 2, "sample_size": 1024}
    assert train[-1] == "--config.warm_start=token_dynamics_s0"


@pytest.fixture
def config_file(tmp_path):
    """A config whose runs and prepare() fail at once, so a launcher that ignored the flag
    under test exits fast without training."""
    path = tmp_path / "cfg.py"
    path.write_text(textwrap.dedent("""\
        import ml_collections as mlc
        def get_config(arg=""):
            return mlc.ConfigDict({"seed": 0})
        def get_sweep(arg=""):
            return [{"_name": "a", "no_such_key": 1}]
        def prepare(arg=""):
            raise ValueError("prepare ran")
    """))
    return str(path)


@pytest.mark.parametrize("args,flag", [
    (["--train_args=--num_cpu_devices=8"], "train_args"),
    (["--run_timeout=60"], "run_timeout"),
    (["--mode=print", "--compilation_cache=/tmp/c"], "compilation_cache"),
])
def test_sweep_refuses_flags_its_mode_ignores(config_file, tmp_path, args, flag):
    r = _cli("launch.sweep", f"--config={config_file}", f"--workdir={tmp_path / 'w'}", *args)
    assert r.returncode != 0 and f"--{flag} is only used with" in r.stderr, r.stdout[-1000:] + r.stderr[-2000:]


def test_sweep_passes_train_args_where_they_are_used(config_file, tmp_path):
    r = _cli("launch.sweep", f"--config={config_file}", f"--workdir={tmp_path / 'w'}", "--mode=print",
             "--train_args=--num_cpu_devices=8")
    assert r.returncode == 0 and r.stdout.strip().endswith("--num_cpu_devices=8"), r.stderr[-2000:]


def test_motion_qa_refuses_compilation_cache_without_in_process(config_file, tmp_path):
    r = _cli("launch.motion_qa", f"--config={config_file}", f"--results_dir={tmp_path}", "--in_process=false",
             f"--compilation_cache={tmp_path / 'c'}")
    assert r.returncode != 0 and "--compilation_cache is only used with --in_process" in r.stderr, r.stderr[-2000:]


def test_job_wide_overrides_of_what_the_experiment_fixes_are_refused():
    """A --config override given to the whole motion-QA job that would change the data, the
    stores or the per-arm settings (which prepare() and get_sweep() set) is an error naming it;
    one the runs can share (the learning rate) passes."""
    from td_jax.train import sweep

    mod, _ = sweep.load_module(f"{procs.ROOT}/experiments/motion_qa.py:tiny")
    for key in ("task.patch.temporal", "task.compressor_cfg", "task.compressor", "task.data.data_dir", "seed"):
        with pytest.raises(ValueError, match=f"--config.{key}: the experiment sets it per run"):
            sweep.check_overrides(mod, {key: 1})
    sweep.check_overrides(mod, {"optim.lr": 3e-4})
    sweep.check_overrides(object(), {"task.patch.temporal": True})      # a module without FIXED_KEYS


def test_motion_qa_tower_and_context_name_their_own_tower_and_stores():
    """The default tower is the pretrained one at context 1 (``tower=random`` the fixed random
    projection, ``context=N`` the window); each setting has its own tower file and stores; the
    stores keep the train split's first 8,192 videos; a bad value is an error."""
    from experiments import motion_qa as m

    s = m.settings(m.options(""))
    assert (s["tower"], s["context"]) == ("pretrained", 1)
    assert m.tower_path("/r", s).startswith("/r/tower/tower_")
    assert m.tower_path("/r", m.settings(m.options("tower=random"))) == ""
    assert m.tower_path("/r", m.settings(m.options("context=2"))) != m.tower_path("/r", s)
    arm = next(a for a in m.ARMS if a["name"] == "token_dynamics")
    plain = m.store_dir("/r", arm, m.settings(m.options("tower=random,warmup=0")))
    assert s["train_videos"] == 8192 and m.settings(m.options("tiny"))["train_videos"] == 0
    dirs = {m.store_dir("/r", arm, m.settings(m.options(a)))
            for a in ("", "tower=random", "tower=random,context=1", "context=2")}
    assert len(dirs) == 4 and plain not in dirs
    none = next(a for a in m.ARMS if a["name"] == "none")
    assert os.path.basename(m.store_dir("/r", none, s)).startswith("tokens_")
    c = m.get_config("arm=none")
    assert (c.task.vision, c.task.data.source, c.task.data.in_memory, c.task.budget) == ("none", "tokens", False,
                                                                                        4096)
    for bad in ("context=-1", "context=x", "tower=siglip"):
        with pytest.raises(ValueError, match="context=|tower="):
            m.options(bad)


def test_motion_qa_warmup_reads_the_curriculum_data_and_leads_with_the_lone_object():
    """``warmup=N``: the data is motion_curriculum (motion's three families plus the control
    lone_direction), the first N batches ask lone_direction (default 400); ``warmup=0``: the
    motion data, direction first; its own stores; refused with ``tiny`` or a bad value."""
    from experiments import motion_qa as m
    from td_jax.data import moving_shapes as ms
    from td_jax.data import moving_shapes_qa

    d = m.get_config("warmup=400").task.data
    assert (d.tfds_name, d.curriculum, d.families) == ("moving_shapes_qa/motion_curriculum", "lone_direction:400", "")
    assert m.get_config("").task.data.curriculum == "lone_direction:400"
    d0 = m.get_config("warmup=0").task.data
    assert (d0.tfds_name, d0.curriculum) == ("moving_shapes_qa/motion", "direction:600")
    assert m.get_config("tiny").task.data.tfds_name == "moving_shapes_qa/tiny"
    arm = next(a for a in m.ARMS if a["name"] == "token_dynamics")
    assert m.store_dir("/r", arm, m.settings(m.options("warmup=400"))) != m.store_dir("/r", arm, m.settings(
        m.options("warmup=0")))
    cur = {c.name: c for c in moving_shapes_qa.CONFIGS}["motion_curriculum"]
    assert cur.families == ("color", "direction", "order", "lone_direction")
    assert moving_shapes_qa.family_names(cur)[-1] == "lone_direction"
    assert moving_shapes_qa.family_names({c.name: c for c in moving_shapes_qa.CONFIGS}["motion"]) == list(
        ms.FAMILIES)                                                      # no control: the eight, no NaN column
    assert all(n % (4 * 4) == 0 for _, n in cur.split_sizes)           # family x letter balanced
    for bad in ("warmup=-1", "warmup=x", "tiny,warmup=10"):
        with pytest.raises(ValueError, match="warmup="):
            m.options(bad)
