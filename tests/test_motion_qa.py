"""The main job on the tiny grid, through its command lines: prepare -> sweep -> report -> eval.

One uninterrupted job and one killed with SIGKILL mid-grid and run again share the dataset
and stores (``root=``) and JAX's compilation cache; the killed job must finish with the same
results, and ``launch.eval`` on a run's workdir must reproduce its reported accuracy.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import procs
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARMS = "token_dynamics+adaptive_elbow+none"   # a stored stage, an eval-only arm on its weights, all tokens


def _env(cache):
    return procs.env(8, JAX_COMPILATION_CACHE_DIR=str(cache))     # launch.eval's compiled programs too


CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"]      # the run's (tests/conftest.py), via --compilation_cache


def _job(root, results, cache, extra=()):
    """The main job on the tiny grid; every job of this module shares the data root and JAX's
    compilation cache."""
    return [sys.executable, "-m", "launch.motion_qa", f"--config=experiments/motion_qa.py:tiny,root={root},arms={ARMS}",
            f"--results_dir={results}", f"--compilation_cache={cache}", *extra]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    base = tmp_path_factory.mktemp("mqa")
    root, cache, results = base / "root", CACHE, base / "results"
    r = subprocess.run(_job(root, results, cache), cwd=REPO, env=_env(cache), capture_output=True, text=True,
                       timeout=1500)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return {"base": base, "root": root, "cache": cache, "results": results, "stdout": r.stdout}


def _arms(results):
    with open(os.path.join(results, "motion_qa.json")) as f:
        return {a["name"]: a for a in json.load(f)}


def test_results_follow_the_contract(job):
    arms = _arms(job["results"])
    assert set(arms) == {"token_dynamics", "adaptive_elbow", "none"}
    need = {"name", "method", "cfg", "visual_tokens", "percent_tokens", "accuracy", "accuracy_std",
            "accuracy_by_family", "accuracy_by_family_std", "seeds", "per_seed", "steps", "batch_size",
            "train_examples", "eval_examples", "init_from", "eval_only_of", "tokdense"}
    for a in arms.values():
        assert need <= set(a), need - set(a)
        for p in a["per_seed"]:
            assert {"seed", "accuracy", "accuracy_by_family", "workdir"} <= set(p)
            wd = p["workdir"] if os.path.isabs(p["workdir"]) else os.path.join(job["results"], p["workdir"])
            assert os.path.isdir(os.path.join(wd, "checkpoints")) and os.path.isfile(os.path.join(wd, "metrics.jsonl"))
        assert 0.0 <= a["accuracy"] <= 1.0 and a["eval_examples"] == 32
        assert np.mean([p["accuracy"] for p in a["per_seed"]]) == pytest.approx(a["accuracy"])
    td, none = arms["token_dynamics"], arms["none"]
    assert td["seeds"] == [0, 1] and none["seeds"] == [0]
    assert td["visual_tokens"] == 4 and td["percent_tokens"] == pytest.approx(100 * 4 / 128)
    assert none["visual_tokens"] == 128 and none["method"] == "none" and none["init_from"] == ""
    assert none["steps"] == td["steps"] == 6 and none["train_examples"] == td["train_examples"] == 48
    assert arms["adaptive_elbow"]["eval_only_of"] == "token_dynamics" and arms["adaptive_elbow"]["steps"] == 0
    assert arms["adaptive_elbow"]["visual_tokens"] <= 4
    meta = json.load(open(os.path.join(job["results"], "motion_qa_meta.json")))
    assert {c["status"] for c in meta["checks"]} <= {"met", "missed", "not measured"}
    from td_jax.eval import report as rep
    for a in arms.values():       # the "learned" flag is the 2-SE test against chance (1 in 4)
        want = rep.above_chance([p["accuracy"] for p in a["per_seed"]], a["eval_examples"], 0.25)["sign"] > 0
        assert a["above_chance"] == want
    if not td["above_chance"]:    # no accuracy loss can show against an arm at chance
        adaptive = [c for c in meta["checks"] if c["target"].startswith("adaptive K")]
        assert adaptive and all(c["status"] == "not measured" for c in adaptive)
    if not none["above_chance"]:
        assert not meta["reference_check"]["valid"] and "does not learn" in meta["reference_check"]["reason"]
    for name in ("motion_qa.md", "accuracy_vs_tokens.png", "accuracy_by_family.png", "example_dynamics.png",
                 "adaptive_k.png"):
        assert os.path.getsize(os.path.join(job["results"], name)) > 0
    assert "[sweep] run" in job["stdout"]


def test_above_chance_counts_seed_spread_and_test_size():
    from td_jax.eval import report as rep
    # 3 seeds at 27% on 768 questions: SE ~ 1.6 points -> +2 points is within 2 SE
    assert rep.above_chance([0.26, 0.27, 0.28], 768, 0.25)["sign"] == 0
    # 40% on 768 questions: 15 points over chance is ~12 SE
    assert rep.above_chance([0.40, 0.40, 0.40], 768, 0.25)["sign"] == 1
    # the same mean with a wide seed spread is not
    assert rep.above_chance([0.25, 0.25, 0.70], 768, 0.25)["sign"] == 0
    assert rep.above_chance([0.10, 0.10], 768, 0.25)["sign"] == -1


def test_all_questions_leave_the_control_family_out():
    from experiments import motion_qa_report as r
    m = {"accuracy": 0.4, "count": 1024.0, "accuracy/color": 0.25, "count/color": 256.0, "accuracy/direction": 0.3,
         "count/direction": 256.0, "accuracy/order": 0.5, "count/order": 256.0, "accuracy/lone_direction": 0.55,
         "count/lone_direction": 256.0, "accuracy/shape": float("nan"), "count/shape": 0.0}
    out = r.scored(m)
    assert out["count"] == 768.0 and out["accuracy"] == pytest.approx(0.35)
    assert out["accuracy/lone_direction"] == 0.55                 # kept as its own column
    plain = {k: v for k, v in m.items() if "lone" not in k}
    assert r.scored(plain) == plain                               # without a control: unchanged


def test_report_states_the_runs_settings_and_refuses_runs_trained_differently():
    """The header's training settings come from the runs' own configs (a --config override given
    to the job shows as run), and arms trained differently cannot share one report."""
    from experiments import motion_qa, motion_qa_report as mr

    plan_s = motion_qa.settings(motion_qa.options("tiny"))

    def run(name, steps, layers=1):
        cfg = {"total_steps": steps, "batch_size": 8, "optim": {"lr": 1e-3},
               "task": {"llm": {"num_layers": layers, "hidden_size": 32, "intermediate_size": 64, "num_heads": 4,
                                "num_kv_heads": 2}, "data": {"curriculum": ""}}}
        return {"dir": f"/runs/{name}", "config": cfg}

    s = mr.grid_settings(plan_s, [run("a_s0", 9), run("b_s0", 9), run("e_s0", 0, layers=5)])   # e: eval-only
    assert s["steps"] == 9 and s["layers"] == 1 and s["lr"] == 1e-3 and plan_s["steps"] == 6
    with pytest.raises(ValueError, match=r"not trained alike: \{'layers': \{1: \['a_s0'\], 2: \['b_s0'\]\}\}"):
        mr.grid_settings(plan_s, [run("a_s0", 9), run("b_s0", 9, layers=2)])


def test_eval_of_a_run_reproduces_its_reported_accuracy(job, tmp_path):
    arm = _arms(job["results"])["token_dynamics"]
    p = arm["per_seed"][1]
    wd = p["workdir"] if os.path.isabs(p["workdir"]) else os.path.join(job["results"], p["workdir"])
    r = subprocess.run([sys.executable, "-m", "launch.eval", f"--workdir={wd}", "--split=test",
                        f"--output_dir={tmp_path}"], cwd=REPO, env=_env(job["cache"]), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads(r.stdout.strip().splitlines()[-1])
    assert rec["metrics"]["accuracy"] == p["accuracy"]
    fresh = [json.loads(x) for x in open(tmp_path / f"eval_test_{rec['step']}.predictions.jsonl")]
    saved = [json.loads(x) for x in open(os.path.join(wd, f"eval_test_{rec['step']}.predictions.jsonl"))]
    assert len(saved) == 32 and len(fresh) == 32
    # the run's own records (trainer) and launch.eval's (with the question text) agree per example
    assert sorted((p["index"], p["prediction"], p["answer"]) for p in fresh) == \
        sorted((p["index"], p["prediction"], p["answer"]) for p in saved)


def test_killed_job_resumes_to_the_same_results(job):
    results = job["base"] / "killed"
    runs = results / "runs"
    proc = subprocess.Popen(_job(job["root"], results, job["cache"]), cwd=REPO, env=_env(job["cache"]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:   # kill mid-grid: none_s0 (after token_dynamics_s0, _s1) has a checkpoint but is not finished
        deadline = time.time() + 900
        while time.time() < deadline and proc.poll() is None:
            ck = runs / "none_s0" / "checkpoints"
            if ck.is_dir() and any(d.name.isdigit() for d in ck.iterdir()):
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the job ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (runs / "token_dynamics_s0" / "done.json").is_file() and not (runs / "none_s0" / "done.json").exists()
    r = subprocess.run(_job(job["root"], results, job["cache"]), cwd=REPO, env=_env(job["cache"]),
                       capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "already done" in r.stdout
    a, b = _arms(job["results"]), _arms(results)
    for name in a:
        assert [p["accuracy"] for p in a[name]["per_seed"]] == [p["accuracy"] for p in b[name]["per_seed"]], name
        assert a[name]["accuracy_by_family"] == b[name]["accuracy_by_family"], name
    for run in os.listdir(job["results"] / "runs"):
        if run.startswith(".") or not (job["results"] / "runs" / run).is_dir():
            continue
        for split in ("validation", "test"):
            f = [x for x in os.listdir(job["results"] / "runs" / run) if x.startswith(f"eval_{split}_")
                 and x.endswith(".predictions.jsonl")]
            assert f and open(job["results"] / "runs" / run / f[0]).read() == open(runs / run / f[0]).read(), run


def test_report_only_rewrites_results_and_readme(job, tmp_path):
    from experiments import motion_qa_report as mr

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{mr.README_BEGIN}\nold\n{mr.README_END}\n\ntail\n")
    r = subprocess.run(_job(job["root"], job["results"], job["cache"], ["--report_only", f"--readme={readme}"]),
                       cwd=REPO, env=_env(job["cache"]), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    text = readme.read_text()
    assert "old" not in text and text.endswith("tail\n") and "| token dynamics |" in text
    assert "accuracy_vs_tokens.png" in text


def test_report_from_stored_results_reapplies_the_rules(job, tmp_path):
    """--from_stored: the runs' records kept in motion_qa.json are enough to re-render the
    report under the current rules (here: an older report without the chance flags)."""
    import shutil

    from experiments import motion_qa, motion_qa_report as mr

    res = tmp_path / "res"
    shutil.copytree(job["results"], res, ignore=shutil.ignore_patterns("runs"))
    stored = json.load(open(res / "motion_qa.json"))
    for a in stored:
        del a["above_chance"], a["above_chance_by_family"]
    json.dump(stored, open(res / "motion_qa.json", "w"))
    readme = tmp_path / "README.md"
    readme.write_text(f"{mr.README_BEGIN}\nold\n{mr.README_END}\n")
    mr.write(motion_qa.plan(f"tiny,root={job['root']},arms={ARMS}"), str(job["results"] / "runs"), str(res),
             str(readme), stored=True)
    again, orig = _arms(res), _arms(job["results"])
    for name, a in orig.items():
        assert again[name]["above_chance"] == a["above_chance"], name
        assert again[name]["above_chance_by_family"] == a["above_chance_by_family"], name
    meta, orig_meta = (json.load(open(d / "motion_qa_meta.json")) for d in (res, job["results"]))
    assert [(c["target"], c["status"]) for c in meta["checks"]] == \
        [(c["target"], c["status"]) for c in orig_meta["checks"]]
    assert "old" not in readme.read_text() and "| token dynamics |" in readme.read_text()
    with pytest.raises(FileNotFoundError, match="no stored motion-QA report"):
        mr.from_json(str(tmp_path / "empty"), str(tmp_path))


def test_report_from_stored_adds_an_arm_finished_since(job, tmp_path):
    """--from_stored with the runs present: an arm the stored report lacks (here the all-token
    arm, as if it had not finished when the report was written) is read from its finished runs
    and added, with the numbers the full report gave it; a grid whose settings differ from the
    stored report's cannot add runs to it."""
    import shutil

    from experiments import motion_qa, motion_qa_report as mr

    res = tmp_path / "res"
    shutil.copytree(job["results"], res, ignore=shutil.ignore_patterns("runs"))
    stored = [a for a in json.load(open(res / "motion_qa.json")) if a["name"] != "none"]
    json.dump(stored, open(res / "motion_qa.json", "w"))
    meta = json.load(open(res / "motion_qa_meta.json"))
    meta["missing_runs"] = ["none_s0"]
    json.dump(meta, open(res / "motion_qa_meta.json", "w"))
    plan = motion_qa.plan(f"tiny,root={job['root']},arms={ARMS}")
    runs = str(job["results"] / "runs")
    arms, meta2 = mr.from_json(str(res), runs)                   # without the plan: as stored
    assert "none" not in {a["name"] for a in arms} and meta2["missing_runs"] == ["none_s0"]
    arms, meta2 = mr.from_json(str(res), runs, plan)
    orig = _arms(job["results"])
    assert [a["name"] for a in arms] == [a["name"] for a in json.load(open(job["results"] / "motion_qa.json"))]
    none = next(a for a in arms if a["name"] == "none")
    assert none["accuracy"] == orig["none"]["accuracy"]
    assert none["accuracy_by_family"] == orig["none"]["accuracy_by_family"]
    assert meta2["missing_runs"] == [] and meta2["added_runs"] == ["none_s0"]
    assert meta2["reference_check"] == json.load(open(job["results"] / "motion_qa_meta.json"))["reference_check"]
    meta["settings"]["steps"] += 1
    json.dump(meta, open(res / "motion_qa_meta.json", "w"))
    with pytest.raises(ValueError, match=r"settings differ from the stored ones in \['steps'\]"):
        mr.from_json(str(res), runs, plan)
