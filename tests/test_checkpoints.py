"""Real checkpoints in (any compressor, abstract init, dtypes, paths, mismatches), video-QA layouts,
chat encodings, open-QA scoring and per-example evaluation — the pieces behind issue 17's commands
(tests/test_checkpoints_e2e.py drives the commands themselves)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_llava
import td_jax
from td_jax import compressors
from td_jax.convert import check_params, fit_params, load_hf
from td_jax.convert import params as params_lib
from td_jax.data import chat, video_folder
from td_jax.data import tokenizer as tok_lib
from td_jax.eval import openqa, predict
from td_jax.models import vlm as vlm_lib


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tiny_llava"))
    model = tiny_llava.save_model(path)
    return model, path


# ----------------------------------------------------------------------------- single frames
def test_single_frame_trajectory_features():
    """A 1-frame video (an image): every cluster's trajectory has one step and no velocity (the
    map-reading compressors run on it: test_load_hf_with_a_learned_compressor_is_abstract)."""
    feats, present = td_jax.trajectory_features(jnp.zeros((2, 1, 4, 4), jnp.int32).at[:, 0, :2].set(1), 3)
    assert feats.shape == (2, 3, 1, 8) and present.shape == (2, 3, 1)
    np.testing.assert_array_equal(np.asarray(present[:, :, 0]), [[True, True, False]] * 2)
    np.testing.assert_array_equal(np.asarray(feats[..., 6:]), 0.0)              # no velocity in one frame
    np.testing.assert_allclose(np.asarray(feats[:, 1, 0, 1]), np.sqrt(8 / 16))  # area of cluster 1
    two, _ = td_jax.trajectory_features(jnp.zeros((1, 2, 4, 4), jnp.int32).at[:, 1, :2].set(1), 2)
    np.testing.assert_allclose(np.asarray(two[0, 1, 1, 6:]), [0.0, 0.0])          # appears: no velocity yet


# ----------------------------------------------------------------------------- loading
def test_load_hf_with_a_learned_compressor_is_abstract(tiny, monkeypatch, tmp_path):
    """token_dynamics on a LLaVA-OV directory: the whole model is only traced (no concrete init of
    it), the checkpoint's weights equal pool's, the compressor's own parameters are fresh, dtype
    given as a JAX dtype, the path with ~, and images (1-frame videos) run."""
    _, path = tiny
    monkeypatch.setenv("HOME", os.path.dirname(path))
    concrete = []
    orig = vlm_lib.VideoLLM.init

    def init(self, *a, **kw):
        out = orig(self, *a, **kw)
        concrete.extend(x for x in jax.tree.leaves(out) if not isinstance(x, jax.core.Tracer))
        return out

    monkeypatch.setattr(vlm_lib.VideoLLM, "init", init)
    home_path = "~/" + os.path.basename(path)
    m_td, p_td = load_hf(home_path, jnp.bfloat16, compressor="token_dynamics", budget=8, num_frames=2,
                         compressor_cfg={"iters": 5, "n_init": 1})
    assert not concrete, "VideoLLM.init ran on concrete arrays"
    m_pool, p_pool = load_hf(path, np.float32)
    assert m_td.cfg.dtype == "bfloat16" and m_pool.cfg.dtype == "float32"
    assert set(p_td) == set(p_pool) | {"compressor"}
    for k in p_pool:
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b.astype(jnp.bfloat16))),
                     p_td[k], p_pool[k])
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(p_td["compressor"]))
    # the default budget of pool follows the frame count: 2 frames x (4x4 pooled to 2x2)
    assert load_hf(path, num_frames=2)[0].cfg.budget == 8 and m_pool.cfg.budget == 32 * 4
    rs = np.random.RandomState(0)
    frames = jnp.asarray(rs.randint(0, 255, (2, 1, 56, 56, 3)).astype(np.uint8))
    ids = jnp.asarray([[5, 6, m_td.cfg.video_token_id, 7]] * 2)
    logits = jax.jit(lambda p, i, f: m_td.apply({"params": p}, i, None, f, rngs={"compress": jax.random.key(0)}))(
        p_td, ids, frames)
    assert logits.shape == (2, 4, 128) and np.isfinite(np.asarray(logits, np.float32)).all()


def test_every_registered_compressor_traces_on_a_checkpoint_with_one_frame(tiny):
    """Any compressor in front of a LLaVA-OV directory's LLM, on a 1-frame video (shapes only)."""
    from td_jax.convert import hf_model_config

    _, path = tiny
    for name in compressors.names():
        cfg = hf_model_config(path, compressor=name, budget=16, num_frames=1)
        abstract, init_compressor = params_lib.abstract_video_llm(vlm_lib.VideoLLM(cfg), 1)
        assert {"llm", "vision", "projector", "image_newline"} <= set(abstract), name
        assert (init_compressor is not None) == ("compressor" in abstract), name


def test_load_hf_user_errors_are_clear_and_early(tiny, tmp_path, monkeypatch):
    _, path = tiny
    from td_jax.convert import safetensors_io
    import td_jax.convert as convert

    def no_read(p):
        raise AssertionError("the checkpoint was read before the arguments were checked")

    monkeypatch.setattr(convert, "read_checkpoint", no_read)
    with pytest.raises(ValueError, match="unsupported dtype 'int8'"):
        load_hf(path, "int8")
    with pytest.raises(ValueError, match="unknown dtype 3"):
        load_hf(path, 3)
    with pytest.raises(KeyError, match="unknown compressor 'tdyn'.*token_dynamics"):
        load_hf(path, compressor="tdyn", budget=4)
    with pytest.raises(TypeError, match="unknown config keys \\['k'\\]"):
        load_hf(path, compressor="token_dynamics", budget=4, compressor_cfg={"k": 3})
    with pytest.raises(ValueError, match="budget must be a positive int"):
        load_hf(path, budget=0)
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_hf(str(tmp_path / "missing"))
    monkeypatch.setattr(convert, "read_checkpoint", safetensors_io.read_checkpoint)
    with pytest.raises(ValueError, match="token_dynamics.*needs a budget"):
        load_hf(path, compressor="token_dynamics")
    with pytest.raises(ValueError, match=r"pool: 4 frames .* more than budget=2"):
        load_hf(path, budget=2, num_frames=4)


def test_parameter_mismatch_lists_the_paths():
    want = {"a": {"kernel": jax.ShapeDtypeStruct((2, 3), jnp.float32)}, "b": jax.ShapeDtypeStruct((4,), jnp.float32),
            "compressor": {"w": jax.ShapeDtypeStruct((3,), jnp.float32)}}
    got = {"a": {"kernel": np.zeros((3, 2))}, "c": np.zeros(1), "compressor": {"w": np.zeros(3)}}
    with pytest.raises(ValueError, match=r"(?s)missing from the checkpoint \(1\): b.*not in the model \(1\): c"
                                         r".*mis-shaped \(1\): a/kernel \(3, 2\) vs model \(2, 3\)"):
        check_params(got, want, source="ckpt")
    # a compressor's parameters are refitted, the rest must match exactly
    fresh = lambda key: {"w": jnp.ones(3)}
    ok = fit_params({"a": {"kernel": np.zeros((2, 3))}, "b": np.zeros(4), "compressor": {"v": np.zeros(2)}}, want,
                    fresh, source="ckpt")
    np.testing.assert_array_equal(np.asarray(ok["compressor"]["w"]), 1.0)
    dropped = fit_params({"a": {"kernel": np.zeros((2, 3))}, "b": np.zeros(4), "compressor": {"v": np.zeros(2)}},
                         {k: v for k, v in want.items() if k != "compressor"}, None, source="ckpt")
    assert "compressor" not in dropped


def test_abstract_video_llm_initialises_only_the_compressor():
    """The abstract tree has every parameter; the standalone compressor init fills exactly its
    subtree with its own initialisers (zero output projections: an untrained attention returns
    the base) and the same key gives the same values."""
    from td_jax.models import configs as C

    cfg = C.TINY_VLM.replace(compressor="token_dynamics", budget=4, compressor_cfg=(("iters", 4), ("n_init", 1),
                                                                                     ("num_heads", 4)))
    abstract, init_compressor = params_lib.abstract_video_llm(vlm_lib.VideoLLM(cfg), 3)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))
    assert {"llm", "vision", "projector", "image_newline", "compressor"} == set(abstract)
    fresh = init_compressor(jax.random.key(2))
    assert not params_lib.tree_problems(fresh, abstract["compressor"])
    np.testing.assert_array_equal(np.asarray(fresh["cross_dynamics"]["out"]["kernel"]), 0.0)
    assert np.abs(np.asarray(fresh["cross_dynamics"]["query"]["kernel"])).sum() > 0
    again = init_compressor(jax.random.key(2))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), fresh, again)


# ----------------------------------------------------------------------------- layouts
def test_layouts_map_every_field(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path
    (d / "NExTVideo").mkdir()
    pq.write_table(pa.Table.from_pylist([{"video": 42, "question": " why ", "a0": "x", "a1": "y", "a2": "z", "a3": "u",
                                          "a4": "v", "answer": 3, "type": "CW", "qid": 7}]), str(d / "nq.parquet"))
    r = video_folder.read_records(str(d / "nq.parquet"))[0]
    assert (r["video"], r["question"], r["options"], r["answer"], r["family"], r["id"]) == (
        str(d / "NExTVideo" / "42.mp4"), "why", ["x", "y", "z", "u", "v"], 3, "CW", "42_7")
    (d / "json").mkdir()
    (d / "video" / "clevrer" / "video_validation").mkdir(parents=True)
    (d / "json" / "moving_direction.json").write_text(json.dumps(
        [{"video": "a.mp4", "question": "q?", "candidates": ["left", "up", "down"], "answer": "up"}]))
    r = video_folder.read_records(str(d / "json"))[0]
    assert r["video"] == str(d / "video" / "clevrer" / "video_validation" / "a.mp4")
    assert (r["options"], r["answer"], r["family"]) == (["left", "up", "down"], 1, "moving_direction")
    (d / "data").mkdir()
    pq.write_table(pa.Table.from_pylist([{"videoID": "abc", "question": "q", "options": ["A. one", "B. two", "C. 3",
                                                                                           "D. four"],
                                          "answer": "C", "duration": "short", "domain": "Knowledge",
                                          "sub_category": "Law", "task_type": "OCR Problems", "question_id": "001-1"}]),
                   str(d / "vm.parquet"))
    r = video_folder.read_records(str(d / "vm.parquet"))[0]
    assert r["video"] == str(d / "data" / "abc.mp4") and r["options"] == ["one", "two", "3", "four"]
    assert r["answer"] == 2 and r["groups"] == {"family": "short", "duration": "short", "domain": "Knowledge",
                                                "sub_category": "Law", "task_type": "OCR Problems"}
    (d / "an.jsonl").write_text(json.dumps({"video_name": "xyz", "question": "what is it", "answer": "dog",
                                            "question_id": "v_1", "type": 3}) + "\n")
    r = video_folder.read_records(str(d / "an.jsonl"))[0]
    assert (r["video"], r["question"], r["options"], r["answers"], r["family"]) == (
        str(d / "v_xyz.mp4"), "What is it?", [], ["dog"], "3")
    (d / "it.json").write_text(json.dumps([{"video": "v/1.mp4", "data_source": "youcook", "conversations": [
        {"from": "human", "value": "<image>\nWhat happens?"}, {"from": "gpt", "value": "Cooking."},
        {"from": "human", "value": "Then?"}, {"from": "gpt", "value": "Eating."}]}]))
    r = video_folder.read_records(str(d / "it.json"))[0]
    assert r["conversations"][0] == {"role": "user", "text": "What happens?"} and r["family"] == "youcook"
    assert [t["role"] for t in r["conversations"]] == ["user", "assistant"] * 2 and r["video"] == str(d / "v/1.mp4")
    # errors name the file and row; a wrong forced layout says what is missing
    (d / "bad.json").write_text(json.dumps([{"video": "a", "question": "q", "candidates": ["x", "y"], "answer": "z"}]))
    with pytest.raises(ValueError, match=r"bad.json\[0\]: 'answer' 'z' is not one of the candidates"):
        video_folder.read_records(str(d / "bad.json"))
    with pytest.raises(ValueError, match=r"an.jsonl:1: missing keys \['videoID', 'options'\]"):
        video_folder.read_records(str(d / "an.jsonl"), layout="videomme")
    with pytest.raises(ValueError, match="unknown video-QA layout 'nextqa_mc'"):
        video_folder.read_records(str(d / "an.jsonl"), layout="nextqa_mc")


def test_chat_encodings_put_the_loss_on_the_answers(tiny):
    _, path = tiny
    tok = tok_lib.HFTokenizer(os.path.join(path, "tokenizer.json"), num_options=5)
    turns = [{"role": "user", "text": "What color is the square?"}, {"role": "assistant", "text": "red"},
             {"role": "user", "text": "Which way does the square move?"}, {"role": "assistant", "text": "left"}]
    enc = chat.encode_conversation(tok, turns, 96)
    ids, loss = enc["input_ids"], enc["loss_mask"]
    assert (ids == tok.video_token_id).sum() == 1
    targets = ids[loss > 0].tolist()
    assert targets == tok.encode("red") + [tok.im_end] + tok.encode("left") + [tok.im_end]
    # the first turn is exactly the open-ended prompt without the short-answer instruction
    first = chat.open_prompt_ids(tok, "What color is the square?", instruction="")
    assert ids[:len(first)].tolist() == first
    cut = chat.encode_conversation(tok, turns, len(first) + 3)
    assert cut["attention_mask"].all() and cut["loss_mask"].sum() == 2
    with pytest.raises(ValueError, match="first user turn is"):
        chat.encode_conversation(tok, turns, 10)
    wtok = tok_lib.WordTokenizer.from_texts(["what color is the square red"], 4)
    w = chat.encode_open(wtok, "what color is the square", "red", 16)
    assert w["input_ids"][w["loss_mask"] > 0].tolist() == wtok.encode("red") + [wtok.eos_id]


# ----------------------------------------------------------------------------- scoring
def test_open_qa_scores_and_judge(tmp_path, monkeypatch):
    assert openqa.exact_match("The Dog!", ["dog"]) == 1.0 and openqa.exact_match("dogs", ["dog"]) == 0.0
    assert openqa.contains("a brown dog runs", ["dog"]) == 1.0 and openqa.contains("hotdog", ["dog"]) == 0.0
    assert openqa.token_f1("brown dog", ["a dog", "cat"]) == pytest.approx(2 / 3)
    assert openqa.parse_option("(B) a cat", ["dog", "cat"]) == 1
    assert openqa.parse_option("I think A is right", list("abcde")) == 0
    assert openqa.parse_option("the cat", ["dog", "cat"]) == 1 and openqa.parse_option("?", ["x", "y"]) == -1
    (tmp_path / "myjudge.py").write_text("def judge(q, p, refs):\n    return {'correct': refs[0] in p, 'score': 5.0}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    j = openqa.load_judge("myjudge:judge")
    assert openqa.run_judge(j, "q", "a dog", ["dog"]) == {"judge_correct": 1.0, "judge_score": 5.0}
    with pytest.raises(ValueError, match="not found"):
        openqa.load_judge("myjudge:nope")


def test_predictions_are_scored_per_category():
    records = [{"id": f"q{i}", "video": f"v{i}.mp4", "question": "q", "options": ["a", "b", "c"][:2 + i % 2],
                "answers": ["a"], "family": "f" + str(i % 2), "groups": {"family": "f" + str(i % 2), "len": "s"}}
               for i in range(4)]
    rows = {i: {"scores": np.array([0.0, 1.0, 2.0, 9.0, 9.0]), "answer_nll": np.float32(1.0),
                "num_options": np.int32(len(records[i]["options"])), "answer": np.int32(i % 2 + 1),
                "family": np.int32(0)} for i in range(4)}
    preds = predict.mc_predictions(rows, records)
    # only the example's own options compete: 2 options -> b, 3 options -> c
    assert [p["prediction"] for p in preds] == [1, 2, 1, 2]
    assert [p["accuracy"] for p in preds] == [1.0] * 4
    m = predict.summarize(preds, ["accuracy"])
    assert m["count"] == 4 and m["count/f0"] == 2 and m["count/len=s"] == 4
    assert m["accuracy/f0"] == 1.0 and m["accuracy/f1"] == 1.0
    md = predict.markdown(m, preds, ["accuracy"], title="t")
    assert "| f0 | 100.00 | 2 |" in md and "| s | 100.00 | 4 |" in md


def test_video_qa_task_takes_architecture_and_weights_from_the_checkpoint(tiny, tmp_path):
    """task.model "" + task.init_from = an HF directory: the architecture is the checkpoint's, the
    step-0 params are its weights (cast to the param dtype) plus a fresh compressor, and the
    stored architecture (checkpoint_meta) rebuilds the same model."""
    import importlib.util

    from td_jax.convert.checkpoint import module_from_record
    from td_jax.train import trainer

    _, path = tiny
    spec = importlib.util.spec_from_file_location("cfg", os.path.join(os.path.dirname(__file__), os.pardir,
                                                                      "experiments", "llava_ov_td.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    (tmp_path / "train.jsonl").write_text(json.dumps({"video": "a.mp4", "question": "q", "answer": "a"}) + "\n")
    cfg = trainer.resolve_config(mod.get_config(f"hf_dir={path},data={tmp_path}/{{split}}.jsonl,tiny,frames=2"))
    s = trainer.build(cfg, devices=jax.devices()[:1])
    m = s.task.model_cfg
    assert (m.llm.vocab_size, m.vision.image_size, m.compressor, m.budget) == (128, 56, "token_dynamics", 4)
    assert s.task.media_shape() == (2, 56, 56, 3) and s.task.family_names() == ["all"]
    state = trainer.initial_state(s)
    _, hf = load_hf(path)
    for k in hf:
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), state["params"][k], hf[k])
    assert "cross_dynamics" in state["params"]["compressor"]
    rebuilt = module_from_record(json.loads(json.dumps(s.task.checkpoint_meta()["model"])))
    assert rebuilt.cfg == s.task.model_cfg


def test_folder_pipeline_reads_instruction_open_and_mc_lists(tiny, tmp_path):
    """One question-list pattern, three layouts: conversations (loss on both answers), open-ended
    (loss on the reference) and multiple choice (letter; num_options per row); one family
    vocabulary for every split; example_records in batch-index order."""
    from td_jax.data import pipeline

    _, path = tiny
    folder = tiny_llava.make_folder(str(tmp_path / "data"), n=3)
    tok = tok_lib.HFTokenizer(os.path.join(path, "tokenizer.json"), num_options=5)
    cfg = dict(source="folder", folder_jsonl=str(tmp_path / "data" / "{split}.json"), num_frames=2, resolution=56,
               max_text_len=96, batch_size=4, shuffle=False, num_epochs=1, drop_remainder=False)
    train = next(pipeline.make_pipeline(cfg, "train", process_index=0, process_count=1, tokenizer=tok))
    assert train["frames"].shape == (4, 2, 56, 56, 3) and train["valid"].tolist() == [True] * 3 + [False]
    assert train["num_options"].tolist() == [0, 0, 0, 0]
    for row in range(3):
        color, direction = folder["truth"][row]
        targets = train["input_ids"][row][train["loss_mask"][row] > 0].tolist()
        assert targets == tok.encode(color) + [tok.im_end] + tok.encode(direction) + [tok.im_end]
    val = next(pipeline.make_pipeline(cfg, "validation", process_index=0, process_count=1, tokenizer=tok))
    assert val["num_options"].tolist() == [4, 4, 4, 4]
    fams = video_folder.folder_family_names(cfg["folder_jsonl"])
    assert fams == ["color", "direction", "synthetic"] and val["family"].tolist() == [0, 0, 0, 1]
    recs = pipeline.example_records(cfg, "validation")
    assert [r["id"] for r in recs[:4]] == ["q0", "q1", "q2", "d0"] and recs[3]["options"] == ["left", "right", "up",
                                                                                            "down"]
    (tmp_path / "data" / "open.jsonl").write_text(json.dumps({"video": "videos/v0.mp4", "question": "What color is "
                                                                "the square?", "answer": "red"}) + "\n")
    one = next(pipeline.make_pipeline({**cfg, "folder_jsonl": str(tmp_path / "data" / "open.jsonl")}, "test",
                                      process_index=0, process_count=1, tokenizer=tok))
    assert one["input_ids"][0][one["loss_mask"][0] > 0].tolist() == tok.encode("red") + [tok.im_end]
    prompt = chat.open_prompt_ids(tok, "What color is the square?")
    assert one["input_ids"][0][:len(prompt)].tolist() == prompt


# ----------------------------------------------------------------------------- training checkpoints, optimizer groups
def test_misspelt_best_metric_is_an_error(tmp_path):
    """keep_best > 0 with a best_metric the evaluation does not report: an error naming both, not
    a save that silently never ranks."""
    from td_jax.train import checkpoint as ckpt_lib
    with ckpt_lib.Checkpointer(str(tmp_path / "ck"), keep_best=1, best_metric="eval/acuracy", async_save=False) as ck:
        with pytest.raises(ValueError, match=r"'eval/acuracy'.*\['eval/accuracy', 'eval/loss'\]"):
            ck.save(1, {"w": jnp.zeros(2)}, metrics={"eval/accuracy": 0.5, "eval/loss": 1.0})
        assert ck.save(2, {"w": jnp.zeros(2)}) and ck.all_steps() == [2]        # no metrics: nothing to rank


def test_keep_best_ranks_the_final_evaluation(tmp_path, monkeypatch):
    """eval_every_steps=0 with eval_split among final_eval_splits: the last save carries the final
    evaluation's metrics (best-N ranks it), and eval_split is evaluated once."""
    import ml_collections as mlc
    from td_jax.train import checkpoint as ckpt_lib
    from td_jax.train import trainer
    ranked, save = {}, ckpt_lib.Checkpointer.save

    def spy(self, step, state, *, metrics=None, **kw):
        ranked[int(step)] = metrics
        return save(self, step, state, metrics=metrics, **kw)

    monkeypatch.setattr(ckpt_lib.Checkpointer, "save", spy)
    cfg = trainer.resolve_config(mlc.ConfigDict({
        "seed": 0, "total_steps": 4, "log_every_steps": 2, "checkpoint_every_steps": 2, "eval_every_steps": 0,
        "final_eval_splits": ("validation",), "batch_size": 16, "eval_batch_size": 32, "compute_dtype": "float32",
        "checkpoint": {"keep": 1, "keep_best": 1, "best_metric": "eval/accuracy", "async_save": False},
        "task": {"name": "synthetic_mc", "hidden": 8, "depth": 1}}))
    res = trainer.train_and_evaluate(cfg, str(tmp_path / "run"))
    assert ranked[2] is None and ranked[4]["eval/accuracy"] == res.eval_metrics["eval/accuracy"]
    done = trainer.read_done(str(tmp_path / "run"))
    assert done["final"]["validation"]["accuracy"] == res.eval_metrics["eval/accuracy"]
    assert [r["step"] for r in res.history if "eval/accuracy" in r] == [4]


@pytest.mark.parametrize("best_mode", ["max", "min"])
def test_keep_best_survives_a_restart(tmp_path, best_mode):
    """The best step saved before a restart stays best-N after it: its metrics are on disk (and
    checksummed), so a new Checkpointer on the directory ranks it instead of deleting it as one
    of the latest-N. A step saved under another best_metric ranks last, without an error."""
    from td_jax.train import checkpoint as ckpt_lib
    sign = 1.0 if best_mode == "max" else -1.0
    score = {1: 0.9, 2: 0.5, 3: 0.4, 4: 0.3, 5: 0.2, 6: 0.1}
    kw = dict(keep=1, keep_best=1, best_metric="eval/score", best_mode=best_mode, async_save=False)
    d = str(tmp_path / "ck")
    with ckpt_lib.Checkpointer(d, **kw) as ck:
        for step in range(1, 5):
            ck.save(step, {"w": jnp.full(2, step, jnp.float32)}, metrics={"eval/score": sign * score[step]})
        assert ck.all_steps() == [1, 4]
    with ckpt_lib.Checkpointer(d, **kw) as ck:                  # resumed run, worse scores
        for step in (5, 6):
            ck.save(step, {"w": jnp.full(2, step, jnp.float32)}, metrics={"eval/score": sign * score[step]})
        assert ck.all_steps() == [1, 6]
        state, _ = ck.restore(1, {"w": jax.ShapeDtypeStruct((2,), jnp.float32)})    # verified
        np.testing.assert_array_equal(np.asarray(state["w"]), 1.0)
        manifest = json.loads((tmp_path / "ck" / "1" / ckpt_lib.MANIFEST).read_text())
        assert "metrics/metrics" in manifest["files"]
    with ckpt_lib.Checkpointer(d, **{**kw, "best_metric": "eval/other"}) as ck:
        ck.save(7, {"w": jnp.zeros(2)}, metrics={"eval/other": 0.0})
        assert ck.all_steps() == [7]
    with ckpt_lib.Checkpointer(d, read_only=True) as ck:
        assert ck.all_steps() == [7] and ck.read_meta(7) == {}


def test_overlapping_optimizer_groups_are_an_error():
    """A ConfigDict sorts its keys, so no written order can decide between two groups' patterns."""
    from td_jax.train import optim as optim_lib
    cfg = {"frozen": "", "groups": {"head": {"pattern": "^head/", "lr": 1.0},
                                    "kernels": {"pattern": "kernel$", "lr": 2.0}}}
    params = {"head": {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros(2)}, "body": {"kernel": jnp.zeros((2, 2))}}
    with pytest.raises(ValueError, match=r"'head/kernel'.*'head' and 'kernels'"):
        optim_lib.label_params(params, cfg)
    del params["head"]["kernel"]
    assert optim_lib.label_params(params, cfg) == {"head": {"bias": "head"}, "body": {"kernel": "kernels"}}
