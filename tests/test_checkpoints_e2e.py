"""The paper's workflow as a user types it, on a tiny random LLaVA-OneVision saved by transformers:

    launch.convert (pool)  ->  launch.eval MC on NExT-QA's parquet layout (== transformers' letter logits)
                           ->  launch.eval --mode=generate on ActivityNet-QA's layout (== transformers' greedy ids)
    launch.train experiments/llava_ov_td.py (token dynamics, LLaVA-Video-178K-style rows)
                           ->  launch.eval --workdir (architecture and weights from the run)

and the one-line errors of those commands. Subprocesses share the run's compilation cache (tests/conftest.py).
"""
import json
import os
import subprocess
import sys

import numpy as np
import procs
import pytest

import tiny_llava

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMES = 4
SLOTS = FRAMES * 4 + 1          # 4x4 grid pooled to 2x2 per frame, plus the newline


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    hf = root / "hf"
    hf.mkdir()
    model = tiny_llava.save_model(str(hf))
    data = tiny_llava.make_folder(str(root / "data"))
    return {"root": root, "hf": str(hf), "model": model, "data": data}


def run(world, module, *args, timeout=600):
    env = procs.env(2)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def eval_config(world, data, **kw):
    arg = ",".join([f"data={data}", f"frames={FRAMES}", "dtype=float32", "batch=4"] + [f"{k}={v}" for k, v in kw.items()])
    return f"--config=experiments/eval_video_qa.py:{arg}"


def _prompt_with_slots(tok, ids):
    i = ids.index(tok.video_token_id)
    return ids[:i] + [tok.video_token_id] * SLOTS + ids[i + 1:]


@pytest.fixture(scope="module")
def converted(world):
    out = world["root"] / "ckpt"
    r = run(world, "launch.convert", f"--hf_dir={world['hf']}", f"--out={out}", f"--num_frames={FRAMES}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "budget 16" in r.stdout and os.path.isfile(out / "tokenizer.json")
    return str(out)


def test_eval_multiple_choice_matches_transformers(world, converted):
    from td_jax.data import tokenizer as tok_lib
    from td_jax.data import video

    out = world["root"] / "eval_mc"
    r = run(world, "launch.eval", f"--checkpoint={converted}", f"--output_dir={out}", "--split=test",
            eval_config(world, world["data"]["root"] + "/nextqa/{split}.parquet", layout="nextqa"))
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.load(open(out / "eval_test_0.json"))
    assert rec["metrics"]["count"] == 6 and rec["model"]["compressor"] == "pool" and rec["model"]["budget"] == 16
    assert rec["examples"] == {"scored": 6, "in_split": 6, "max_batches": None}
    assert rec["metrics"]["count/CW"] == 3 and "accuracy/DC" in rec["metrics"]
    preds = [json.loads(line) for line in open(out / "eval_test_0.predictions.jsonl")]
    assert [p["id"] for p in preds] == [f"{1000 + i}_{i}" for i in range(6)]
    tok = tok_lib.HFTokenizer(os.path.join(world["hf"], "tokenizer.json"), num_options=5)
    for p in preds:
        ids = _prompt_with_slots(tok, tok.prompt_ids(p["question"], p["options"]))
        frames = video.decode_video(p["video"], FRAMES, tiny_llava.RES)[None]
        logits = tiny_llava.torch_video_logits(world["model"], np.array([ids]), frames)[0, -1]
        letters = logits[tok.option_ids[:5]]
        assert int(np.argmax(letters)) == p["prediction"]
        np.testing.assert_allclose(p["scores"], letters, atol=2e-4)
    md = open(out / "eval_test_0.md").read()
    assert "| CW |" in md and "| **all** |" in md


def test_eval_generate_matches_transformers_greedy(world, converted):
    from td_jax.data import chat
    from td_jax.data import tokenizer as tok_lib
    from td_jax.data import video

    out = world["root"] / "eval_gen"
    r = run(world, "launch.eval", f"--checkpoint={converted}", f"--output_dir={out}", "--split=test",
            "--mode=generate", "--max_new_tokens=5",
            eval_config(world, world["data"]["root"] + "/anetqa/{split}.jsonl", layout="activitynetqa"))
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.load(open(out / "eval_test_0_generate.json"))
    assert rec["mode"] == "generate" and {"exact_match", "contains", "token_f1"} <= set(rec["metrics"])
    preds = [json.loads(line) for line in open(out / "eval_test_0_generate.predictions.jsonl")]
    tok = tok_lib.HFTokenizer(os.path.join(world["hf"], "tokenizer.json"), num_options=5)
    for p in preds:
        assert p["answers"] == [world["data"]["truth"][p["index"]][0]]
        ids = _prompt_with_slots(tok, chat.open_prompt_ids(tok, p["question"]))
        frames = video.decode_video(p["video"], FRAMES, tiny_llava.RES)[None]
        ref = tiny_llava.torch_greedy(world["model"], np.array([ids]), frames, 5, tok.im_end)[0]
        assert p["ids"] == ref[:len(p["ids"])].tolist() and 1 <= len(p["ids"]) <= 5


@pytest.mark.slow    # faster: test_checkpoints.py (HF init + token dynamics), test_train_video.py (train -> eval)
def test_finetune_with_token_dynamics_then_evaluate_the_run(world):
    run_dir = world["root"] / "run"
    data = world["data"]["root"]
    r = run(world, "launch.train", f"--workdir={run_dir}",
            f"--config=experiments/llava_ov_td.py:hf_dir={world['hf']},data={data}/{{split}}.json,tiny,frames={FRAMES}")
    assert r.returncode == 0, r.stderr[-3000:]
    done = json.loads(r.stdout.strip().splitlines()[-1])
    assert done["status"] == "done" and done["step"] == 3 and done["eval/count"] == 12
    meta = json.load(open(run_dir / "checkpoints" / "3" / "meta" / "metadata"))
    assert meta["model"]["config"]["compressor"] == "token_dynamics" and meta["model"]["config"]["budget"] == 4
    out = world["root"] / "eval_run"
    r = run(world, "launch.eval", f"--workdir={run_dir}", f"--output_dir={out}", "--split=test",
            eval_config(world, data + "/{split}.jsonl"))
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.load(open(out / "eval_test_3.json"))
    assert rec["model"]["compressor"] == "token_dynamics" and rec["metrics"]["count"] == 12
    assert rec["metrics"]["count/color"] == 6 and rec["metrics"]["count/direction"] == 6
    # the same run's weights with another compressor: base_only (no cross-attention parameters)
    r = run(world, "launch.eval", f"--workdir={run_dir}", f"--output_dir={out}", "--split=test",
            "--compressor=base_only", "--budget=4", eval_config(world, data + "/{split}.jsonl"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.load(open(out / "eval_test_3.json"))["model"]["compressor"] == "base_only"


@pytest.mark.parametrize("module,args,message", [
    ("launch.convert", ["--hf_dir=/no/such/dir", "--out=OUT"], "/no/such/dir: no such directory"),
    ("launch.convert", ["--hf_dir=HF", "--out=OUT", "--compressor=tdyn", "--budget=8"], "unknown compressor 'tdyn'"),
    ("launch.convert", ["--hf_dir=HF", "--out=OUT", "--budget=2", "--num_frames=4"], "more than budget=2"),
    ("launch.eval", ["--checkpoint=HF", "--output_dir=OUT", "--config=experiments/eval_video_qa.py:data=DATA,"
                     "layout=videomme,frames=4"], "test.jsonl:1: missing keys ['videoID']"),
])
def test_user_mistakes_end_in_one_line(world, module, args, message):
    args = [a.replace("HF", world["hf"]).replace("OUT", str(world["root"] / "err"))
            .replace("DATA", world["data"]["root"] + "/test.jsonl") for a in args]
    r = run(world, module, *args)
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
