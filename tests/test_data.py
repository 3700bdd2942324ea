"""The moving-shapes benchmark (TFDS builder, checker, balance) and the Grain pipelines."""
import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from td_jax.data import moving_shapes as ms
from td_jax.data import pipeline, qa_checker
from td_jax.data.moving_shapes_qa import MovingShapesQa
from td_jax.data.tokenizer import WordTokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"train": 64, "validation": 32, "test": 32}
VERSION = str(MovingShapesQa.VERSION)


def _run(code_or_args, timeout=240):
    args = code_or_args if isinstance(code_or_args, list) else ["-c", code_or_args]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """moving_shapes_qa/tiny built by the CLI in a fresh process, with 2 generator workers."""
    d = str(tmp_path_factory.mktemp("tfds"))
    out = _run(["-m", "launch.build_data", "--dataset=moving_shapes_qa/tiny", f"--data_dir={d}",
                "--num_workers=2"])
    assert f"moving_shapes_qa/tiny/{VERSION}" in out
    return d


@pytest.fixture(scope="session")
def tiny_source(tiny_dir):
    import tensorflow_datasets as tfds

    return {s: tfds.builder_from_directory(os.path.join(tiny_dir, f"moving_shapes_qa/tiny/{VERSION}")).as_data_source(s)
            for s in TINY}


def test_reads_back_in_fresh_process(tiny_dir):
    # By name (the builder registered by importing td_jax.data) and from the directory alone (no td_jax).
    code = f"""
import json, tensorflow_datasets as tfds
import td_jax.data
out = {{}}
for s in {list(TINY)}:
    src = tfds.data_source("moving_shapes_qa/tiny", split=s, data_dir={tiny_dir!r}, try_gcs=False, download=False)
    out[s] = len(src)
ex = src[0]
out["keys"] = sorted(ex)
out["frames"] = [list(ex["frames"].shape), str(ex["frames"].dtype)]
out["tracks"] = [list(ex["objects"]["positions"].shape[1:]), list(ex["objects"]["visible"].shape[1:])]
print(json.dumps(out))
"""
    got = json.loads(_run(code).strip().splitlines()[-1])
    assert {s: got[s] for s in TINY} == TINY
    assert got["keys"] == ["answer", "family", "family_id", "frames", "id", "objects", "options", "question"]
    assert got["frames"] == [[8, 32, 32, 3], "uint8"]
    assert got["tracks"] == [[8, 2], [8]]
    code2 = f"""
import tensorflow_datasets as tfds
b = tfds.builder_from_directory({os.path.join(tiny_dir, f'moving_shapes_qa/tiny/{VERSION}')!r})
print(len(b.as_data_source("test")), b.info.metadata["families"])
"""
    assert _run(code2).strip().splitlines()[-1].startswith("32 ['color', 'shape', 'count'")


def test_splits_disjoint(tiny_source):
    digests, ids = {}, {}
    for s, src in tiny_source.items():
        digests[s] = {ms.frames_digest(src[i]["frames"]) for i in range(len(src))}
        ids[s] = {src[i]["id"] for i in range(len(src))}
        assert len(digests[s]) == len(src), f"duplicate videos inside {s}"
    for a in TINY:
        for b in TINY:
            if a < b:
                assert not digests[a] & digests[b], (a, b)
                assert not ids[a] & ids[b], (a, b)


def test_every_family_balanced(tiny_source):
    for s, src in tiny_source.items():
        counts = collections.Counter((src[i]["family"].decode(), int(src[i]["answer"])) for i in range(len(src)))
        per = len(src) // (len(ms.FAMILIES) * ms.NUM_OPTIONS)
        assert counts == {(f, a): per for f in ms.FAMILIES for a in range(ms.NUM_OPTIONS)}, s


def test_answer_values_balanced():
    # Over 16 examples of a family every (letter, value) pair occurs: values are uniform.
    cfg = ms.SceneConfig(num_frames=8, resolution=32)
    per_family = collections.defaultdict(collections.Counter)
    for i in range(len(ms.FAMILIES) * 16):
        ex = ms.make_example(cfg, 3, "train", i)
        per_family[ex["family"]][ex["options"][ex["answer"]]] += 1
    for fam, values in [("shape", ms.SHAPES), ("count", ms.COUNT_WORDS), ("direction", ms.DIRECTIONS),
                        ("motion", ms.MOTIONS), ("position", ms.QUADRANTS)]:
        assert per_family[fam] == {v: 4 for v in values}, fam


def test_family_subset_cycles_balanced_and_checked():
    """A family subset (the ``motion`` config asks color, direction, order): example i asks
    families[i % 3], letters and values stay balanced, the checker agrees, ids stay global."""
    cfg = ms.SceneConfig(num_frames=16, resolution=64)
    fams = ("color", "direction", "order")
    per_family = collections.defaultdict(collections.Counter)
    for i in range(3 * 16):
        ex = ms.make_example(cfg, 0, "train", i, fams)
        assert ex["family"] == fams[i % 3] and ex["family_id"] == ms.FAMILIES.index(ex["family"])
        assert qa_checker.check_answer(ex) == ex["answer"], (ex["question"], ex["options"])
        per_family[ex["family"]][ex["answer"]] += 1
    assert all(per_family[f] == {a: 4 for a in range(4)} for f in fams)
    assert per_family.keys() == set(fams)
    with pytest.raises(ValueError, match="unknown question families"):
        ms.make_example(cfg, 0, "train", 0, ("colour",))


def test_checker_recomputes_stored_answers(tiny_source):
    n = 0
    for src in tiny_source.values():
        for i in range(len(src)):
            ex = src[i]
            assert qa_checker.check_answer(ex) == ex["answer"], (ex["id"], ex["question"], ex["options"])
            n += 1
    assert n == sum(TINY.values())


@pytest.mark.parametrize("frames,res", [(16, 64), (64, 64)])
def test_checker_agrees_at_default_and_long_sizes(frames, res):
    cfg = ms.SceneConfig(num_frames=frames, resolution=res)
    for i in range(48):
        ex = ms.make_example(cfg, 1, "validation", i)
        assert qa_checker.check_answer(ex) == ex["answer"], (ex["question"], ex["options"])


def test_control_family_shows_the_asked_object_alone():
    """``lone_direction`` (the control): one object, the direction question's words, every
    direction and letter equally often, the checker agrees; its id follows the 8 families;
    the default cycle of 8 families does not ask it."""
    cfg = ms.SceneConfig(num_frames=16, resolution=64)
    fams = ("color", "direction", "order", "lone_direction")
    answers = collections.Counter()
    for i in range(3, 4 * 32, 4):
        ex = ms.make_example(cfg, 0, "train", i, fams)
        assert ex["family"] == "lone_direction" and ex["family_id"] == len(ms.FAMILIES)
        assert len(ex["objects"]["color"]) == 1 and ex["question"].startswith("In which direction does the ")
        assert qa_checker.check_answer(ex) == ex["answer"]
        answers[(ex["answer"], ex["options"][ex["answer"]])] += 1
    assert len(answers) == 16 and set(answers.values()) == {2}
    assert "lone_direction" not in {ms.family_of(i) for i in range(64)}
    assert qa_checker.object_answers(ex) == [ex["options"][ex["answer"]]]


def test_checker_detects_tampered_tracks():
    cfg = ms.SceneConfig(num_frames=8, resolution=32)
    ex = ms.make_example(cfg, 0, "train", ms.FAMILIES.index("direction"))
    assert qa_checker.check_answer(ex) == ex["answer"]
    ex["objects"]["positions"] = ex["objects"]["positions"][:, ::-1].copy()  # play the motion backwards
    assert qa_checker.check_answer(ex) != ex["answer"]
    ex = ms.make_example(cfg, 0, "train", ms.FAMILIES.index("order"))
    ex["objects"]["visible"][:] = ex["objects"]["visible"][:, ::-1]
    first = int(np.argmin([np.argmax(v) for v in ex["objects"]["visible"]]))
    assert ex["options"][qa_checker.check_answer(ex)] == " ".join((ex["objects"]["color"][first],
                                                                  ex["objects"]["shape"][first]))


def test_generation_deterministic_and_seeded():
    cfg = ms.SceneConfig(num_frames=8, resolution=32)
    a, b = ms.make_example(cfg, 0, "train", 5), ms.make_example(cfg, 0, "train", 5)
    np.testing.assert_array_equal(a["frames"], b["frames"])
    assert a["question"] == b["question"] and a["options"] == b["options"]
    c = ms.make_example(cfg, 1, "train", 5)
    assert not np.array_equal(a["frames"], c["frames"])
    with pytest.raises(ValueError, match="split"):
        ms.make_example(cfg, 0, "dev", 0)
    with pytest.raises(ValueError, match="num_frames"):
        ms.SceneConfig(num_frames=4)


def test_frames_show_the_tracks():
    # Each visible object's colour is drawn at its stored centre (unless another object is close).
    cfg = ms.SceneConfig(num_frames=8, resolution=32)
    checked = 0
    for i in range(16):
        ex = ms.make_example(cfg, 2, "test", i)
        o = ex["objects"]
        for t in range(cfg.num_frames):
            vis = np.flatnonzero(o["visible"][:, t])
            for k in vis:
                p = o["positions"][k, t]
                if all(np.hypot(*(p - o["positions"][j, t])) > 2 * cfg.r + 2 for j in vis if j != k):
                    x, y = np.round(p).astype(int)
                    assert tuple(ex["frames"][t, y, x]) == ms.COLORS[o["color"][k]], (i, k, t)
                    checked += 1
    assert checked > 100


# ----------------------------------------------------------------------------- pipelines


def _cfg(tiny_dir, **kw):
    c = dict(tfds_name="moving_shapes_qa/tiny", data_dir=tiny_dir, batch_size=8, max_text_len=48)
    c.update(kw)
    return c


def test_batch_follows_the_convention(tiny_dir, tiny_source):
    tok = WordTokenizer.for_moving_shapes()
    b = next(pipeline.make_pipeline(_cfg(tiny_dir), "train", process_index=0, process_count=1))
    assert b["frames"].shape == (8, 8, 32, 32, 3) and b["frames"].dtype == np.uint8
    assert b["input_ids"].shape == (8, 48) and b["input_ids"].dtype == np.int32
    assert b["attention_mask"].dtype == bool and b["loss_mask"].dtype == np.float32
    assert (b["input_ids"] == tok.video_token_id).sum(1).tolist() == [1] * 8
    assert b["valid"].all() and not b["corrupt"].any()
    for r in range(8):
        ex = tiny_source["train"][int(b["index"][r])]
        np.testing.assert_array_equal(b["frames"][r], ex["frames"])
        pos = np.flatnonzero(b["loss_mask"][r])
        assert b["input_ids"][r, pos[0]] == tok.option_ids[ex["answer"]] == tok.option_ids[b["answer"][r]]
        assert b["input_ids"][r, pos[1]] == tok.eos_id and len(pos) == 2
        assert b["family"][r] == ex["family_id"]
        n = b["attention_mask"][r].sum()
        assert b["attention_mask"][r, :n].all() and (b["input_ids"][r, n:] == tok.pad_id).all()


def test_default_sharding_is_this_jax_process(tiny_dir):
    cfg = _cfg(tiny_dir, shuffle=False)
    a = next(iter(pipeline.make_dataset(cfg, "test")))  # grain.sharding.ShardByJaxProcess: 1 process here
    b = next(pipeline.make_pipeline(cfg, "test", process_index=0, process_count=1))
    np.testing.assert_array_equal(a["index"], b["index"])
    np.testing.assert_array_equal(a["index"], np.arange(8))


def test_resolution_and_frame_overrides(tiny_dir):
    b = next(pipeline.make_pipeline(_cfg(tiny_dir, num_frames=4, resolution=16), "test", process_index=0,
                                    process_count=1))
    assert b["frames"].shape == (8, 4, 16, 16, 3)


def test_resume_with_get_state_set_state(tiny_dir):
    cfg = _cfg(tiny_dir, batch_size=4)
    it = pipeline.make_pipeline(cfg, "train", process_index=0, process_count=1)
    for _ in range(19):  # crosses the first epoch boundary (16 batches per epoch)
        next(it)
    state = it.get_state()
    want = [next(it) for _ in range(4)]
    it2 = pipeline.make_pipeline(cfg, "train", process_index=0, process_count=1)
    it2.set_state(state)
    for w in want:
        g = next(it2)
        for k in w:
            np.testing.assert_array_equal(g[k], w[k])
    # epochs reshuffle: epoch 2's order differs from epoch 1's but covers the same examples
    it3 = pipeline.make_pipeline(cfg, "train", process_index=0, process_count=1)
    e1 = np.concatenate([next(it3)["index"] for _ in range(16)])
    e2 = np.concatenate([next(it3)["index"] for _ in range(16)])
    assert sorted(e1) == sorted(e2) == list(range(64)) and not np.array_equal(e1, e2)


def test_resume_through_orbax(tiny_dir, tmp_path):
    import grain
    import orbax.checkpoint as ocp

    cfg = _cfg(tiny_dir, batch_size=4)
    it = pipeline.make_pipeline(cfg, "train", process_index=0, process_count=1)
    for _ in range(5):
        next(it)
    mgr = ocp.CheckpointManager(str(tmp_path / "ckpt"), item_handlers={"data": grain.checkpoint.CheckpointHandler()})
    mgr.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mgr.wait_until_finished()
    want = [next(it)["index"] for _ in range(3)]
    it2 = pipeline.make_pipeline(cfg, "train", process_index=0, process_count=1)
    mgr2 = ocp.CheckpointManager(str(tmp_path / "ckpt"), item_handlers={"data": grain.checkpoint.CheckpointHandler()})
    mgr2.restore(mgr2.latest_step(), args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it2)))
    got = [next(it2)["index"] for _ in range(3)]
    assert mgr2.latest_step() == 5
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_multiprocess_workers_resume(tiny_dir):
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    cfg = _cfg(tiny_dir, batch_size=4, worker_count=2)
    it = pipeline.make_pipeline(cfg, "train", process_index=0, process_count=1)
    first = [next(it)["index"] for _ in range(3)]
    state = it.get_state()
    want = [next(it)["index"] for _ in range(3)]
    it2 = pipeline.make_pipeline(cfg, "train", process_index=0, process_count=1)
    it2.set_state(state)
    got = [next(it2)["index"] for _ in range(3)]
    del it, it2
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert len(set(np.concatenate(first + want).tolist())) == 24  # 6 batches of one epoch: no repeats


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_two_processes_disjoint_shards(tiny_dir, drop_remainder):
    # validation has 32 examples; batch 10 per host pair -> 5 per process, eval pads the last batch.
    cfg = _cfg(tiny_dir, batch_size=10, shuffle=not drop_remainder, num_epochs=1, drop_remainder=drop_remainder)
    seen, n_batches = [], []
    for p in range(2):
        batches = list(pipeline.make_pipeline(cfg, "validation", process_index=p, process_count=2))
        n_batches.append(len(batches))
        idx = np.concatenate([b["index"] for b in batches])
        valid = np.concatenate([b["valid"] for b in batches])
        assert (idx[valid] >= 0).all() and (idx[~valid] == -1).all()
        assert all(b["frames"].shape[0] == 5 for b in batches)
        seen.append(set(idx[valid].tolist()))
        assert len(seen[-1]) == valid.sum()
    assert not seen[0] & seen[1]
    assert n_batches[0] == n_batches[1]
    if drop_remainder:
        assert n_batches == [3, 3] and len(seen[0] | seen[1]) == 30
    else:
        assert seen[0] | seen[1] == set(range(32)) and n_batches == [4, 4]


def test_config_errors(tiny_dir):
    with pytest.raises(KeyError, match="batchsize"):
        pipeline.make_pipeline({"batchsize": 4}, "train", process_index=0, process_count=1)
    with pytest.raises(ValueError, match="not divisible"):
        pipeline.make_pipeline(_cfg(tiny_dir, batch_size=5), "train", process_index=0, process_count=2)
    with pytest.raises(ValueError, match="split 'dev'"):
        pipeline.make_pipeline(_cfg(tiny_dir), "dev", process_index=0, process_count=1)
    with pytest.raises(ValueError, match="source="):
        pipeline.make_pipeline(_cfg(tiny_dir, source="webdataset"), "train", process_index=0, process_count=1)


def test_curriculum_draws_its_families_first_then_all_and_resumes(tiny_dir, tiny_source):
    fams = {f: i for i, f in enumerate(ms.FAMILIES)}
    cfg = _cfg(tiny_dir, batch_size=4, curriculum="direction,order:3")
    it = pipeline.make_pipeline(cfg, "train", process_index=0, process_count=1)
    first = [next(it) for _ in range(3)]
    for b in first:
        assert set(b["family"].tolist()) <= {fams["direction"], fams["order"]}
    state = it.get_state()
    later = [next(it) for _ in range(16)]
    assert len({int(f) for b in later for f in b["family"]}) > 2            # every family from here on
    it2 = pipeline.make_pipeline(cfg, "train", process_index=0, process_count=1)
    it2.set_state(state)
    np.testing.assert_array_equal(next(it2)["index"], later[0]["index"])
    with pytest.raises(ValueError, match="curriculum"):
        pipeline.make_pipeline(_cfg(tiny_dir, curriculum="direction"), "train", process_index=0, process_count=1)


def test_curriculum_can_lead_with_a_family_the_run_then_leaves_out(tiny_dir):
    # A curriculum family outside ``families``: the first batches ask it, the selected families
    # follow; the in-memory reader holds the curriculum's examples too and serves the same batches.
    fams = {f: i for i, f in enumerate(ms.FAMILIES)}
    runs = []
    for in_memory in (False, True):
        cfg = _cfg(tiny_dir, batch_size=4, families="color,order", curriculum="direction:3", in_memory=in_memory)
        it = pipeline.make_pipeline(cfg, "train", process_index=0, process_count=1)
        runs.append([next(it) for _ in range(12)])
    for b in runs[0][:3]:
        assert set(b["family"].tolist()) == {fams["direction"]}
    assert {int(f) for b in runs[0][3:] for f in b["family"]} == {fams["color"], fams["order"]}
    for x, y in zip(*runs):
        np.testing.assert_array_equal(x["index"], y["index"])
        np.testing.assert_array_equal(x["frames"], y["frames"])
    with pytest.raises(ValueError, match="never asked"):
        pipeline.make_pipeline(_cfg(tiny_dir, curriculum="lone_direction:2"), "train", process_index=0,
                               process_count=1)


def test_in_memory_serves_the_same_batches(tiny_dir):
    for split, kw in (("train", {}), ("validation", dict(shuffle=False, num_epochs=1, drop_remainder=False,
                                                          batch_size=12))):
        a = pipeline.make_pipeline(_cfg(tiny_dir, **kw), split, process_index=0, process_count=1)
        b = pipeline.make_pipeline(_cfg(tiny_dir, in_memory=True, **kw), split, process_index=0, process_count=1)
        for _ in range(3):
            x, y = next(a), next(b)
            assert x.keys() == y.keys()
            for k in x:
                np.testing.assert_array_equal(x[k], y[k])
    with pytest.raises(ValueError, match="worker_count=0"):
        pipeline.make_pipeline(_cfg(tiny_dir, in_memory=True, worker_count=1), "train", process_index=0,
                               process_count=1)


def test_text_answers_option_rows_and_family_filter(tiny_dir, tiny_source):
    tok = WordTokenizer.for_moving_shapes()
    cfg = _cfg(tiny_dir, answer_format="text", list_options=False, with_options=True, families="color,order",
               shuffle=False, num_epochs=1, drop_remainder=False, batch_size=16)
    batches = list(pipeline.make_pipeline(cfg, "test", process_index=0, process_count=1))
    idx = np.concatenate([b["index"][b["valid"]] for b in batches])
    want = [i for i in range(len(tiny_source["test"])) if tiny_source["test"][i]["family"].decode() in ("color", "order")]
    assert idx.tolist() == want
    b = batches[0]
    assert b["opt_input_ids"].shape == (16, 4, 48)
    for r in range(int(b["valid"].sum())):
        ex = tiny_source["test"][int(b["index"][r])]
        a = int(ex["answer"])
        # the training target is the answer's words; option row a is exactly that sequence
        np.testing.assert_array_equal(b["opt_input_ids"][r, a], b["input_ids"][r])
        words = b["input_ids"][r][b["loss_mask"][r] > 0].tolist()
        assert words == tok.encode(ex["options"][a].decode()) + [tok.eos_id]
        assert "options" not in tok.decode(b["input_ids"][r])
    assert list(pipeline.make_pipeline(_cfg(tiny_dir, max_examples=5, shuffle=False, num_epochs=1,
                                            drop_remainder=False, batch_size=4), "test", process_index=0,
                                       process_count=1))[1]["index"].tolist() == [4, -1, -1, -1]
    with pytest.raises(ValueError, match="never asked"):
        pipeline.make_pipeline(_cfg(tiny_dir, families="colour"), "test", process_index=0, process_count=1)
