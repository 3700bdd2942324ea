"""The absl launchers end to end, as a user runs them (subprocesses on the synthetic config).

Covers: a config typo fails naming the key (file and --config override), SIGTERM mid-run
saves a checkpoint that resumes, two processes train together over jax.distributed
(gloo on 127.0.0.1), --compile_only, launch.eval writes JSON + markdown, a 2-point sweep
prints its table, and the TPU launcher's dry run for a v5e-16 pod.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import procs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "experiments/smoke.py:synthetic"


_env = procs.env


def run(module: str, *args: str, timeout: float = 180, devices: int = 8) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=_env(devices), capture_output=True,
                          text=True, timeout=timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_config_file_typo_fails_with_key_name(tmp_path):
    cfg = tmp_path / "typo.py"
    cfg.write_text(textwrap.dedent("""
        import ml_collections as mlc
        def get_config():
            c = mlc.ConfigDict()
            c.seed = 0; c.total_steps = 2; c.log_every_steps = 1; c.checkpoint_every_steps = 2
            c.task = mlc.ConfigDict({"name": "synthetic_mc"})
            c.optim = mlc.ConfigDict({"learning_rate": 0.1})
            return c
    """))
    r = run("launch.train", f"--config={cfg}", f"--workdir={tmp_path / 'w'}")
    assert r.returncode != 0
    assert "unknown config key 'optim.learning_rate'" in r.stderr
    r = run("launch.train", f"--config={CONFIG}", "--config.optim.lrr=0.1", f"--workdir={tmp_path / 'w'}")
    assert r.returncode != 0 and "lrr" in r.stderr and 'Did you mean "lr"' in r.stderr
    assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_sigterm_saves_and_resumes(tmp_path):
    workdir = str(tmp_path / "w")
    args = [f"--config={CONFIG}", f"--workdir={workdir}", "--config.total_steps=100000", "--config.log_every_steps=1",
            "--config.checkpoint_every_steps=100000", "--config.eval_every_steps=0"]
    proc = subprocess.Popen([sys.executable, "-m", "launch.train", *args], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while len(_metrics(workdir)) < 3:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline, "training did not start logging in time"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    status = json.loads(out.strip().splitlines()[-1])
    assert status["status"] == "preempted"
    stopped = status["step"]
    assert 3 <= stopped < 100000
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [str(stopped)]
    # Restart: continues from the saved step (stop two steps later via the library entry point).
    from td_jax.train import trainer
    import importlib.util
    spec = importlib.util.spec_from_file_location("smoke_cfg", os.path.join(ROOT, "experiments/smoke.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config("synthetic")
    c.total_steps, c.log_every_steps, c.checkpoint_every_steps, c.eval_every_steps = 100000, 1, 100000, 0
    res = trainer.train_and_evaluate(trainer.resolve_config(c), workdir, stop_at=stopped + 2)
    assert [r["step"] for r in res.history if "loss" in r] == [stopped + 1, stopped + 2]


def test_two_processes_train_together(tmp_path):
    workdir = str(tmp_path / "w")
    port = _free_port()
    common = [sys.executable, "-m", "launch.train", f"--config={CONFIG}", f"--workdir={workdir}",
              "--config.total_steps=8", "--config.log_every_steps=1", "--config.checkpoint_every_steps=4",
              "--config.eval_every_steps=0", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
              "--init_timeout=60"]
    procs = [subprocess.Popen(common + [f"--process_id={i}"], cwd=ROOT, env=_env(4), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=240))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    assert "process 0 of 2, 4 local / 8 global devices" in outs[0][1]
    # Only process 0 prints the status line and writes metrics (one record per step).
    assert '"status": "done"' in outs[0][0] and '"status"' not in outs[1][0]
    recs = [r for r in _metrics(workdir) if "loss" in r]
    assert [r["step"] for r in recs] == list(range(1, 9))
    assert recs[-1]["loss"] < recs[0]["loss"]
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "8"]


def test_compile_only_reports_params_memory_flops():
    r = run("launch.train", f"--config={CONFIG}", "--compile_only", "--config.mesh.data=2", "--config.mesh.fsdp=2",
            "--config.mesh.tensor=2", "--config.optim.grad_accum=2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mesh: {'data': 2, 'fsdp': 2, 'tensor': 2}" in r.stdout
    assert "parameters: 1,928" in r.stdout
    assert "memory per device" in r.stdout and "FLOPs per step" in r.stdout


def test_eval_and_sweep(tmp_path):
    root = str(tmp_path / "sweep")
    r = run("launch.sweep", f"--config={CONFIG}", f"--workdir={root}", "--config.total_steps=6",
            "--config.checkpoint_every_steps=3", "--config.eval_every_steps=3", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [l for l in r.stdout.splitlines() if l.startswith("| optim.lr=")]
    assert len(lines) == 2 and all("| 6 |" in l for l in lines)
    assert os.path.exists(os.path.join(root, "summary.md"))
    one = os.path.join(root, "optim.lr=0.001")
    r = run("launch.eval", f"--workdir={one}", "--split=test")
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.load(open(os.path.join(one, "eval_test_6.json")))
    assert rec["step"] == 6 and 0.0 <= rec["metrics"]["accuracy"] <= 1.0 and rec["metrics"]["count"] == 128
    md = open(os.path.join(one, "eval_test_6.md")).read()
    assert "| family_0 |" in md and "| **all** |" in md
    r = run("launch.sweep", f"--config={CONFIG}", f"--workdir={root}", "--mode=print", "--config.total_steps=6")
    cmds = r.stdout.strip().splitlines()
    assert len(cmds) == 2 and all("--config.optim.lr=" in c and "launch.train" in c for c in cmds)
    assert all(c.endswith("--config.total_steps=6") for c in cmds)
    # a finished grid is skipped as a whole: re-running trains nothing
    r = run("launch.sweep", f"--config={CONFIG}", f"--workdir={root}", "--config.total_steps=6", timeout=300)
    assert r.returncode == 0 and "2 already done, 0 to run" in r.stdout
    r = run("launch.sweep", f"--config={CONFIG}", f"--workdir={root}", "--mode=tpu", "--tpu=pod", "--zone=z")
    tpu = r.stdout.strip().splitlines()
    assert len(tpu) == 2 and all(c.startswith("python -m launch.tpu --tpu=pod --zone=z") for c in tpu)
    assert all("--train_args=--config.optim.lr=" in c for c in tpu)


def test_eval_flags_without_effect_are_usage_errors():
    """--judge / --max_new_tokens / --temperature need --mode=generate, --step needs --workdir; each
    set to a non-default value where it would be ignored fails naming it, before any work."""
    cases = [(["--workdir=w", "--judge=pkg.mod:fn"], "--judge=pkg.mod:fn has no effect without --mode=generate"),
             (["--workdir=w", "--max_new_tokens=32"], "--max_new_tokens=32 has no effect without --mode=generate"),
             (["--workdir=w", "--temperature=0.7"], "--temperature=0.7 has no effect without --mode=generate"),
             (["--checkpoint=c", "--output_dir=o", "--step=5"], "--step=5 has no effect without --workdir")]
    for args, message in cases:
        r = run("launch.eval", *args, timeout=60, devices=1)
        assert r.returncode != 0 and message in r.stderr, (args, r.stderr[-2000:])


def test_source_comments_name_existing_tests():
    """A ``tests/<file>.py[::test]`` a source comment points to exists (and defines that test)."""
    import re
    missing = []
    for top in ("td_jax", "launch"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for name in (f for f in files if f.endswith(".py")):
                path = os.path.join(dirpath, name)
                for ref, test in re.findall(r"(tests/\w+\.py)(?:::(\w+))?", open(path).read()):
                    target = os.path.join(ROOT, ref)
                    if not os.path.isfile(target) or (test and f"def {test}(" not in open(target).read()):
                        missing.append(f"{os.path.relpath(path, ROOT)}: {ref}{'::' + test if test else ''}")
    assert not missing, missing


def test_tpu_dry_run_for_v5e_16():
    r = run("launch.tpu", "--tpu=td-pod", "--zone=us-west4-a", "--accelerator_type=v5litepod-16",
            "--config=experiments/smoke.py", "--workdir=gs://bucket/runs/smoke", "--create",
            "--train_args=--config.total_steps=1000")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert ("gcloud compute tpus tpu-vm create td-pod --zone=us-west4-a --accelerator-type=v5litepod-16 "
            "--version=v2-alpha-tpuv5-lite") in out
    assert "gcloud compute tpus tpu-vm scp /tmp/td_jax_code.tgz td-pod:td_jax_code.tgz --zone=us-west4-a --worker=all" in out
    ssh = [l for l in out.splitlines() if l.startswith("gcloud compute tpus tpu-vm ssh td-pod")]
    assert len(ssh) == 2 and all("--worker=all" in l for l in ssh)
    assert "pip install -e ~/td-jax" in ssh[0]
    assert ("python3 -m launch.train --config=experiments/smoke.py --workdir=gs://bucket/runs/smoke "
            "--distributed=yes --config.total_steps=1000") in ssh[1]
    assert "xpk workload create --cluster=CLUSTER --workload=td-pod --tpu-type=v5litepod-16 --num-slices=1" in out
    r = run("launch.tpu", "--tpu=Bad_Name", "--zone=us-west4-a", "--config=experiments/smoke.py", "--workdir=gs://b/x")
    assert r.returncode != 0 and "--tpu='Bad_Name'" in r.stderr
