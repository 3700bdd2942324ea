"""Never silently wrong, as a user meets it: launch.eval on damaged / missing checkpoints, SIGTERM at
the worst moments of launch.train, metrics.jsonl after a resume, one-line CLI errors.

Subprocesses share the run's persistent compilation cache (tests/conftest.py); the training run
the eval tests read is made in-process.
"""
import glob
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap

import ml_collections as mlc
import procs
import pytest

from td_jax.train import trainer
from td_jax.train.metrics import MetricWriter, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_env = procs.env


def run(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def last_line(r) -> str:
    return r.stderr.strip().splitlines()[-1]


def _config(**over) -> mlc.ConfigDict:
    c = mlc.ConfigDict({
        "seed": 0, "total_steps": 8, "log_every_steps": 1, "checkpoint_every_steps": 4, "eval_every_steps": 4,
        "batch_size": 16, "eval_batch_size": 32, "compute_dtype": "float32",
        "mesh": {"data": -1, "fsdp": 1, "tensor": 1},
        "optim": {"lr": 1e-2, "warmup_frac": 0.1},
        "checkpoint": {"keep": 3},
        "task": {"name": "synthetic_mc", "hidden": 16, "depth": 1}})
    c.update(over)
    return trainer.resolve_config(c)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("run") / "w")
    trainer.train_and_evaluate(_config(), d)
    return d


def _damage(step_dir):
    files = glob.glob(os.path.join(step_dir, "state", "ocdbt.process_0", "d", "*"))
    f = max(files, key=os.path.getsize)
    with open(f, "r+b") as fh:
        fh.seek(os.path.getsize(f) // 2)
        fh.write(b"\xff" * 16)
    return f


# ------------------------------------------------------------------------------------------ launch.eval

def test_eval_skips_a_damaged_newest_step_and_says_which(workdir, tmp_path):
    w = str(tmp_path / "w")
    shutil.copytree(workdir, w)
    bad = _damage(os.path.join(w, "checkpoints", "8"))
    r = run("-m", "launch.eval", f"--workdir={w}", f"--output_dir={tmp_path}/out")
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads(r.stdout.strip().splitlines()[-1])
    assert rec["step"] == 4 and list(rec["damaged_steps"]) == ["8"]
    assert bad in rec["damaged_steps"]["8"] and "SHA-256 differs" in rec["damaged_steps"]["8"]
    assert "using step 4, the newest intact checkpoint" in r.stderr and bad in r.stderr
    assert os.path.exists(tmp_path / "out" / "eval_validation_4.json")
    assert sorted(os.listdir(os.path.join(w, "checkpoints"))) == ["4", "8"]     # eval renames nothing
    r = run("-m", "launch.eval", f"--workdir={w}", "--step=8", f"--output_dir={tmp_path}/out")
    assert r.returncode == 2 and "Traceback (most" not in r.stderr
    assert last_line(r).startswith(f"error: {bad}: SHA-256 differs")


def test_eval_on_missing_or_empty_workdir_creates_nothing(tmp_path):
    r = run("-m", "launch.eval", f"--workdir={tmp_path}/missing")
    assert r.returncode == 2 and "Traceback (most" not in r.stderr and "cannot schedule new futures" not in r.stderr
    assert last_line(r).startswith(f"error: --workdir={tmp_path}/missing: no such directory")
    assert not os.path.exists(tmp_path / "missing")
    os.makedirs(tmp_path / "empty" / "checkpoints" / "4.orbax-checkpoint-tmp")   # a save cut short
    r = run("-m", "launch.eval", f"--workdir={tmp_path}/empty")
    assert r.returncode == 2 and "Traceback (most" not in r.stderr and "cannot schedule new futures" not in r.stderr
    assert last_line(r).startswith(f"error: no complete checkpoint in {tmp_path}/empty/checkpoints")
    assert os.listdir(tmp_path / "empty" / "checkpoints") == ["4.orbax-checkpoint-tmp"]


# ------------------------------------------------------------------------------------ SIGTERM, any time

_DRIVER = textwrap.dedent("""
    import os, runpy, signal, sys
    when = sys.argv.pop(1)
    from td_jax.train import checkpoint as ck, trainer
    kill = lambda: os.kill(os.getpid(), signal.SIGTERM)
    if when == "startup":                    # while building the model, before any handler of old
        build = trainer.build
        trainer.build = lambda *a, **k: (kill(), build(*a, **k))[1]
    elif when == "save":                     # while the async save of step 4 is in flight
        save = ck.Checkpointer.save
        def patched(self, step, *a, **k):
            out = save(self, step, *a, **k)
            if step == 4:
                kill()
            return out
        ck.Checkpointer.save = patched
    elif when == "last_save":                # while the run waits for its final save to commit
        close = ck.Checkpointer.close
        ck.Checkpointer.close = lambda self: (kill(), close(self))[1]
    sys.argv[0] = "launch.train"
    runpy.run_module("launch.train", run_name="__main__")
""")


@pytest.mark.parametrize("when,status,steps", [("startup", "preempted", []), ("save", "preempted", ["4", "5"]),
                                               ("last_save", "done", ["4", "8"])])
def test_sigterm_at_any_moment_exits_0_with_a_complete_checkpoint(tmp_path, when, status, steps):
    w = tmp_path / "w"
    overrides = ["--config.total_steps=8", "--config.checkpoint_every_steps=4", "--config.eval_every_steps=4",
                 "--config.log_every_steps=2"]
    r = run("-c", _DRIVER, when, "--config=experiments/smoke.py:synthetic", f"--workdir={w}", *overrides)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["status"] == status
    ck = w / "checkpoints"
    assert (sorted(os.listdir(ck)) if ck.exists() else []) == steps     # no *.orbax-checkpoint-tmp left
    from td_jax.train.checkpoint import verify_manifest
    for s in steps:
        assert verify_manifest(ck / s) > 0
    if when == "startup":
        assert out["step"] == 0 and "nothing to save yet (no checkpoint)" in r.stderr
    if when == "save":          # the partial mean before the stop is logged, and says how many steps it has
        recs = read_metrics(str(w))
        assert [(x["step"], x["steps_in_mean"]) for x in recs if "loss" in x] == [(2, 2), (4, 2), (5, 1)]


# ---------------------------------------------------------------------------------- metrics after resume

def _tb_events(logdir):
    from tensorboardX.proto import event_pb2
    events = []
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        data = open(path, "rb").read()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            ev = event_pb2.Event()
            ev.ParseFromString(data[i + 12:i + 12 + n])
            events.append(ev)
            i += 12 + n + 4
    return events


def test_resume_keeps_one_metrics_record_per_step(tmp_path):
    w = str(tmp_path / "w")
    cfg = _config(total_steps=10, log_every_steps=3, checkpoint_every_steps=5, eval_every_steps=0)
    first = trainer.train_and_evaluate(cfg, w, stop_at=7)
    assert [(x["step"], x["steps_in_mean"]) for x in first.history] == [(3, 3), (6, 3), (7, 1)]
    # A kill after step 7 was logged but before its checkpoint committed: the run resumes at 5.
    shutil.rmtree(os.path.join(w, "checkpoints", "7"))
    with open(os.path.join(w, "metrics.jsonl"), "a") as f:
        f.write('{"step": 8, "loss": 1.')                  # and a record cut off mid-write
    second = trainer.train_and_evaluate(cfg, w)
    assert [(x["step"], x["steps_in_mean"]) for x in second.history] == [(6, 1), (9, 3), (10, 1)]
    lines = [json.loads(l) for l in open(os.path.join(w, "metrics.jsonl"))]
    assert [x["step"] for x in lines] == [3, 6, 9, 10]    # one record per step, the redone 6 replaced
    assert lines[1] == second.history[0]
    starts = [ev.step for ev in _tb_events(os.path.join(w, "tensorboard"))
              if ev.HasField("session_log") and ev.session_log.status == ev.session_log.START]
    assert 6 in starts                                    # TensorBoard discards its old steps >= 6


def test_metrics_reader_merges_repeats_and_names_bad_lines(tmp_path):
    w = str(tmp_path)
    with open(os.path.join(w, "metrics.jsonl"), "w") as f:
        f.write('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 1, "loss": 1.0, "eval/acc": 0.5}\n')
    assert read_metrics(w) == [{"step": 1, "loss": 1.0, "eval/acc": 0.5}, {"step": 2, "loss": 1.5}]
    MetricWriter(w, tensorboard=False, resume_step=1, enabled=True).close()
    assert [json.loads(l)["step"] for l in open(os.path.join(w, "metrics.jsonl"))] == [1, 1]
    with open(os.path.join(w, "metrics.jsonl"), "a") as f:
        f.write('not json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:3: bad metrics record"):
        read_metrics(w)


# ------------------------------------------------------------------------------------ one-line errors

@pytest.mark.parametrize("args,message", [
    (["--frames=0"], "error: --frames=0: must be >= 1"),
    (["--k=0"], "error: --k=0: must be >= 1"),
    (["--patch=0"], "error: --patch=0: must be >= 1"),
    (["--resolution=30", "--patch=8"], "error: --resolution=30: is not a multiple of --patch=8"),
    (["--adaptive=elbow", "--k=4", "--k_min=8"], "error: --k_min=8: must be <= --k=4"),
    (["--adaptive=threshold", "--threshold=-1"], "error: --threshold=-1.0: must be a cosine distance"),
    (["--video=VIDEO_DIR"], "error: --video=VIDEO_DIR: is a directory"),
    (["--video=VIDEO_DIR/missing/clip.mp4"], "error: VIDEO_DIR/missing/clip.mp4: no such file"),
    (["--vision_hf_dir=VIDEO_DIR/nope"], "error: --vision_hf_dir=VIDEO_DIR/nope: no such directory"),
])
def test_compress_flag_mistakes_are_one_line(tmp_path, args, message):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    args = [a.replace("VIDEO_DIR", str(tmp_path)) for a in args]
    args = args if any(a.startswith("--video=") for a in args) else [f"--video={video}", *args]
    r = run("-m", "launch.compress", f"--out={tmp_path}/out", *args, timeout=120)
    assert r.returncode == 2 and "Traceback (most" not in r.stderr, r.stderr[-2000:]
    assert last_line(r).startswith(message.replace("VIDEO_DIR", str(tmp_path)))
    assert not os.path.exists(tmp_path / "out")


def test_missing_config_file_and_manual_dir_are_one_line(tmp_path):
    r = run("-m", "launch.train", "--config=experiments/nope.py", f"--workdir={tmp_path}/w")
    assert r.returncode == 2 and "Traceback (most" not in r.stderr
    assert "experiments/nope.py" in last_line(r) and "No such file" in last_line(r)
    r = run("-m", "launch.build_data", "--dataset=video_qa_folder/tiny", f"--manual_dir={tmp_path}/none",
            f"--data_dir={tmp_path}/tfds")
    assert r.returncode == 2 and "Traceback (most" not in r.stderr
    assert last_line(r).startswith(f"error: --manual_dir={tmp_path}/none: no such directory")
