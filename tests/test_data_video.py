"""Video decoding, video folders (pipeline and TFDS manual_dir builder), tokenizers, token stores."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from td_jax.data import patch_embed as pe
from td_jax.data import pipeline, tokens_store, video
from td_jax.data import tokenizer as tok_lib
from td_jax.data.video_folder import read_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _clip(n_frames, size=32, seed=0):
    """A clip whose frame t has brightness 8t and a red square moving right: frames differ."""
    rng = np.random.default_rng(seed)
    fr = np.zeros((n_frames, size, size, 3), np.uint8)
    for t in range(n_frames):
        fr[t] = 8 * t + rng.integers(0, 4)
        fr[t, 8:16, t:t + 8] = (255, 0, 0)
    return fr


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A video-QA folder: 5 train clips (one truncated) and 3 validation clips."""
    d = tmp_path_factory.mktemp("vqa")
    os.makedirs(d / "clips")
    clips = {}
    for split, n in (("train", 5), ("validation", 3)):
        with open(d / f"{split}.jsonl", "w") as f:
            for i in range(n):
                name = f"clips/{split}{i}.mp4"
                clips[name] = _clip(20 + i, seed=i)
                video.encode_video(d / name, clips[name])
                rec = {"video": name, "question": f"What happens in clip {i}?", "options": ["red", "blue", "green"],
                       "answer": i % 3, "family": ["color", "motion"][i % 2]}
                f.write(json.dumps(rec) + "\n")
    data = open(d / "clips/train3.mp4", "rb").read()
    with open(d / "clips/train3.mp4", "wb") as f:
        f.write(data[: len(data) // 2])
    return d, clips


def test_mp4_decodes_to_expected_frames(tmp_path):
    fr = _clip(20)
    video.encode_video(tmp_path / "a.mp4", fr)
    out = video.decode_video(tmp_path / "a.mp4", 8, 32)
    idx = np.linspace(0, 19, 8, dtype=int)  # lmms-eval's uniform sampling
    assert out.shape == (8, 32, 32, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - fr[idx]).max() <= 3  # lossless codec up to colour conversion
    small = video.decode_video(tmp_path / "a.mp4", 4, 16)
    assert small.shape == (4, 16, 16, 3)
    assert (video.sample_indices(3, 6) == [0, 0, 0, 1, 1, 2]).all()  # short videos repeat frames


def test_truncated_and_missing_videos_name_the_file(tmp_path):
    video.encode_video(tmp_path / "a.mp4", _clip(16))
    data = open(tmp_path / "a.mp4", "rb").read()
    with open(tmp_path / "cut.mp4", "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(video.VideoDecodeError, match="cut.mp4"):
        video.decode_video(tmp_path / "cut.mp4", 8, 32)
    with pytest.raises(video.VideoDecodeError, match="nope.mp4: no such file"):
        video.decode_video(tmp_path / "nope.mp4", 8, 32)


def test_normalize_frames():
    x = video.normalize_frames(np.array([[0, 255, 51]], np.uint8))
    np.testing.assert_allclose(x, [[-1.0, 1.0, -0.6]], atol=1e-6)


def _folder_cfg(d, **kw):
    c = dict(source="folder", folder_jsonl=str(d / "{split}.jsonl"), num_frames=8, resolution=32, batch_size=4,
             shuffle=False, num_epochs=1, drop_remainder=False, max_text_len=48)
    c.update(kw)
    return c


def test_folder_pipeline_and_corrupt_video(folder):
    d, clips = folder
    val = list(pipeline.make_pipeline(_folder_cfg(d), "validation", process_index=0, process_count=1))
    assert len(val) == 1 and val[0]["valid"].tolist() == [True, True, True, False]
    for r in range(3):
        want = video.decode_video(d / f"clips/validation{r}.mp4", 8, 32)
        np.testing.assert_array_equal(val[0]["frames"][r], want)
    assert val[0]["answer"][:3].tolist() == [0, 1, 2] and val[0]["family"][:3].tolist() == [0, 1, 0]

    with pytest.raises(video.VideoDecodeError, match="train3.mp4"):
        list(pipeline.make_pipeline(_folder_cfg(d), "train", process_index=0, process_count=1))
    batches = list(pipeline.make_pipeline(_folder_cfg(d, skip_corrupt=True), "train", process_index=0,
                                          process_count=1))
    corrupt = np.concatenate([b["corrupt"] for b in batches])
    valid = np.concatenate([b["valid"] for b in batches])
    index = np.concatenate([b["index"] for b in batches])
    assert corrupt.sum() == 1 and index[corrupt].tolist() == [3] and not valid[corrupt].any()
    assert valid.sum() == 4


def test_jsonl_errors_name_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"video": "a.mp4", "question": "q", "options": ["x", "y"], "answer": "B"}\n'
                 '{"video": "b.mp4", "question": "q", "options": ["x", "y"], "answer": 2}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: 'answer'"):
        read_jsonl(str(p))
    p.write_text('{"video": "a.mp4", "question": "q", "options": ["x", "y"], "answer": "B"}\n')
    assert read_jsonl(str(p))[0]["answer"] == 1
    p.write_text('{"video": "a.mp4", "options": ["x", "y"], "answer": 0}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: missing keys \['question'\]"):
        read_jsonl(str(p))


def test_folder_tfds_builder_manual_dir(folder, tmp_path):
    import tensorflow_datasets as tfds

    from td_jax.data.video_folder import VideoQaFolder

    d, _ = folder
    dl = tfds.download.DownloadConfig(manual_dir=str(d))
    with pytest.raises(video.VideoDecodeError, match="train3.mp4"):
        VideoQaFolder(config="tiny", data_dir=str(tmp_path / "strict")).download_and_prepare(download_config=dl)
    b = VideoQaFolder(config="tiny", data_dir=str(tmp_path / "lenient"), skip_corrupt=True)
    b.download_and_prepare(download_config=dl)
    assert b.info.splits["train"].num_examples == 4 and b.info.splits["validation"].num_examples == 3
    reread = tfds.builder_from_directory(b.data_dir)
    assert dict(reread.info.metadata["skipped"]) == {"train": 1}
    src = reread.as_data_source("validation")
    by_id = {src[i]["id"].decode(): src[i] for i in range(len(src))}
    ex = by_id["validation.jsonl:2"]
    np.testing.assert_array_equal(ex["frames"], video.decode_video(d / "clips/validation1.mp4", 8, 32))
    assert [o.decode() for o in ex["options"]] == ["red", "blue", "green"] and ex["answer"] == 1
    # the prepared folder feeds the same pipeline as the benchmark
    batch = next(pipeline.make_pipeline(dict(tfds_dir=b.data_dir, batch_size=2, max_text_len=48), "train",
                                        process_index=0, process_count=1))
    assert batch["frames"].shape == (2, 8, 32, 32, 3)


def test_word_tokenizer_prompt_and_errors(tmp_path):
    tok = tok_lib.WordTokenizer.for_moving_shapes()
    enc = tok_lib.encode_mc(tok, "Which object appears first?", ["red circle", "blue square", "cyan cross",
                                                                  "green triangle"], 2, 40)
    ids = enc["input_ids"]
    assert tok.unk_id not in ids[enc["attention_mask"]]
    assert (ids == tok.video_token_id).sum() == 1
    pos = np.flatnonzero(enc["loss_mask"])
    assert ids[pos].tolist() == [tok.option_ids[2], tok.eos_id]
    assert tok.decode(ids).endswith("answer : C <eos>")
    with pytest.raises(ValueError, match="longer than max_text_len=10"):
        tok_lib.encode_mc(tok, "Which object appears first?", ["a", "b"], 0, 10)
    with pytest.raises(ValueError, match="options"):
        tok.prompt_ids("q", ["a", "b", "c", "d", "e"])
    own = tok_lib.WordTokenizer.from_texts(["Where is the dog?", "a cat", "the dog"], num_options=2)
    assert own.decode(own.encode("Where is the cat?")) == "where is the cat ?" and own.option_ids.tolist() == [5, 6]
    tok.save(str(tmp_path / "w.json"))
    again = tok_lib.make_tokenizer(f"word:{tmp_path / 'w.json'}")
    assert again.vocab == tok.vocab


def test_hf_tokenizer_chat_template(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<video>"]
    t.train_from_iterator(["system user assistant what color is the ball? A. red B. blue\n Answer with"] * 4,
                          trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    t.save(str(tmp_path / "tokenizer.json"))
    tok = tok_lib.make_tokenizer(str(tmp_path / "tokenizer.json"), num_options=2)
    enc = tok_lib.encode_mc(tok, "What color is the ball?", ["red", "blue"], 1, 128)
    ids = enc["input_ids"][enc["attention_mask"]]
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<video>\n")
    assert "What color is the ball?\nA. red\nB. blue\nAnswer with the option's letter" in text
    assert text.endswith("<|im_start|>assistant\nB<|im_end|>")
    pos = np.flatnonzero(enc["loss_mask"])
    assert enc["input_ids"][pos].tolist() == [tok.option_ids[1], tok.im_end]
    assert (ids == tok.video_token_id).sum() == 1 and tok.pad_id == t.token_to_id("<|endoftext|>")
    with pytest.raises(ValueError, match="no token '<image>'"):
        tok_lib.HFTokenizer(str(tmp_path / "tokenizer.json"), video_token="<image>")


def test_patch_embed_fixed_and_keeps_colour():
    fr = np.zeros((2, 3, 16, 16, 3), np.uint8)
    fr[0, :, :8, :8] = (255, 0, 0)
    fr[0, :, 8:, 8:] = (0, 0, 255)
    tok = np.asarray(pe.patch_embed(fr, patch_size=8, dim=32, seed=0))
    assert tok.shape == (2, 3, 2, 2, 32)
    np.testing.assert_array_equal(tok, np.asarray(pe.make_patch_embed(8, 32, 0)(fr)))
    assert not np.allclose(tok[0, 0, 0, 0], tok[0, 0, 1, 1])  # red vs blue patch
    # The same (black) pixels at another place differ by exactly the position embedding ...
    pos = pe.position_embedding(3, 2, 2, 32)
    np.testing.assert_allclose(tok[0, 0, 0, 1] - pos[0, 0, 1], tok[1, 0, 0, 0] - pos[0, 0, 0], atol=1e-6)
    assert np.abs(tok[0, 0, 0, 1] - tok[1, 0, 0, 0]).max() > 0.05
    # ... and at the same place they are equal (no temporal embedding by default) ...
    np.testing.assert_allclose(tok[1, 0, 0, 0], tok[1, 2, 0, 0], atol=1e-6)
    # ... which "none" leaves out and temporal=True adds per frame.
    flat = np.asarray(pe.patch_embed(fr, patch_size=8, dim=32, pos_embed="none"))
    np.testing.assert_allclose(flat[0, 0, 0, 1], flat[1, 0, 0, 0], atol=1e-6)
    timed = np.asarray(pe.patch_embed(fr, patch_size=8, dim=32, temporal=True))
    assert np.abs(timed[1, 0, 0, 0] - timed[1, 2, 0, 0]).max() > 0.05
    assert np.sqrt(np.mean(pos ** 2)) == pytest.approx(0.1, rel=1e-5)    # per-entry RMS = pos_scale
    assert not np.allclose(tok, np.asarray(pe.patch_embed(fr, patch_size=8, dim=32, seed=1)))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        pe.patch_embed(np.zeros((1, 1, 12, 12, 3), np.uint8), patch_size=8)
    with pytest.raises(ValueError, match="pos_embed"):
        pe.patch_embed(fr, patch_size=8, dim=32, pos_embed="learned")


def test_patch_embed_context_sees_the_neighbourhood():
    """context=1: a token is the projection of its 3x3-patch window (zero beyond the frame), so
    two patches with the same pixels but different surroundings (the inside of a red square
    vs. the inside of a red cross) get different tokens; context=0 is the patch alone."""
    fr = np.zeros((1, 2, 12, 12, 3), np.uint8)
    fr[0, 0, 0:12, 0:12] = (255, 0, 0)                       # frame 0: all red
    fr[0, 1, 4:8, :] = (255, 0, 0)                           # frame 1: a red cross
    fr[0, 1, :, 4:8] = (255, 0, 0)
    alone = np.asarray(pe.patch_embed(fr, patch_size=4, dim=32))
    ctx = np.asarray(pe.patch_embed(fr, patch_size=4, dim=32, context=1))
    np.testing.assert_allclose(alone[0, 0, 1, 1], alone[0, 1, 1, 1], atol=1e-6)   # the same centre patch ...
    assert np.abs(ctx[0, 0, 1, 1] - ctx[0, 1, 1, 1]).max() > 0.1                  # ... different windows
    # exactly the projection of the window's pixels (row-major patch offsets), plus the position embedding
    x = fr.astype(np.float32) / 127.5 - 1.0
    xpad = np.pad(x, ((0, 0), (0, 0), (4, 4), (4, 4), (0, 0)))
    w = pe.projection(4, 32, 0, 9).reshape(3, 3, 48, 32)
    win = xpad[0, 1, 4:16, 4:16]                              # the window of patch (1, 1) in frame 1
    want = sum(win[4 * i:4 * i + 4, 4 * j:4 * j + 4].reshape(-1) @ w[i, j] for i in range(3) for j in range(3))
    np.testing.assert_allclose(ctx[0, 1, 1, 1], want + pe.position_embedding(2, 3, 3, 32)[1, 1, 1], atol=1e-5)
    np.testing.assert_array_equal(alone, np.asarray(pe.patch_embed(fr, patch_size=4, dim=32, context=0)))
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="context"):
            pe.patch_embed(fr, patch_size=4, dim=32, context=bad)


def test_extract_tokens_cli_and_token_pipeline(folder, tmp_path):
    d, _ = folder
    out = tmp_path / "tokens"
    env = dict(os.environ, PYTHONPATH=REPO)
    run = subprocess.run([sys.executable, "-m", "launch.extract_tokens", f"--folder_jsonl={d}/{{split}}.jsonl",
                          "--num_frames=8", "--resolution=32", "--splits=train,validation", f"--out_dir={out}",
                          "--patch_size=8", "--dim=16", "--batch_size=2", "--skip_corrupt", "--dtype=float32"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    meta = tokens_store.read_meta(str(out))
    assert meta["arrays"]["visual_tokens"]["shape"] == [8, 4, 4, 16]
    assert meta["counts"] == {"train": 4, "validation": 3}
    cfg = dict(source="tokens", tokens_dir=str(out), batch_size=4, shuffle=False, num_epochs=1,
               drop_remainder=False, max_text_len=48)
    batches = list(pipeline.make_pipeline(cfg, "validation", process_index=0, process_count=1))
    b = batches[0]
    assert b["visual_tokens"].shape == (4, 8, 4, 4, 16) and b["valid"].tolist() == [True] * 3 + [False]
    frames = np.stack([video.decode_video(d / f"clips/validation{i}.mp4", 8, 32) for i in range(3)])
    np.testing.assert_allclose(b["visual_tokens"][:3], np.asarray(pe.patch_embed(frames, patch_size=8, dim=16)),
                               atol=1e-5)
    with pytest.raises(FileNotFoundError, match="missing"):
        tokens_store.read_meta(str(tmp_path / "none"))


def test_text_answers_and_option_scoring_rows():
    """The "text" answer format: the target is the option's words; encode_mc_options gives one
    row per option, and sequence_logprob over those rows picks the likeliest option."""
    import jax.numpy as jnp
    from td_jax.models.vlm import sequence_logprob

    tok = tok_lib.WordTokenizer.for_moving_shapes()
    opts = ["red circle", "blue square", "cyan cross", "green triangle"]
    enc = tok_lib.encode_mc(tok, "Which object appears first?", opts, 2, 40, "text", list_options=False)
    pos = np.flatnonzero(enc["loss_mask"])
    assert enc["input_ids"][pos].tolist() == tok.encode("cyan cross") + [tok.eos_id]
    assert tok.decode(enc["input_ids"]).endswith("question : which object appears first ? answer : cyan cross <eos>")
    listed = tok_lib.encode_mc(tok, "Which object appears first?", opts, 2, 40, "text")
    assert "options : A . red circle" in tok.decode(listed["input_ids"])
    rows = tok_lib.encode_mc_options(tok, "Which object appears first?", opts, 40, list_options=False)
    assert rows["input_ids"].shape == (4, 40)
    np.testing.assert_array_equal(rows["input_ids"][2], enc["input_ids"])
    # A model whose logits put all mass on row 1's tokens scores row 1 highest.
    logits = np.full((4, 40, tok.vocab_size), -5.0, np.float32)
    tgt = rows["input_ids"][1]
    logits[:, np.arange(39), tgt[1:]] = 5.0
    scores = np.asarray(sequence_logprob(jnp.asarray(logits), jnp.asarray(rows["input_ids"]),
                                         jnp.asarray(rows["loss_mask"])))
    assert scores.argmax() == 1 and scores[1] > -0.01 * rows["loss_mask"][1].sum()
    with pytest.raises(ValueError, match="answer_format"):
        tok_lib.encode_mc(tok, "q", opts, 0, 40, "word")
    with pytest.raises(ValueError, match="list_options=True"):
        tok_lib.encode_mc(tok, "q", opts, 0, 40, "letter", list_options=False)


def test_compressed_store_holds_the_compressor_stage(folder, tmp_path):
    """launch.extract_tokens --compressor stores the parameter-free stage once per video, with
    the video's own key (so batching does not matter); an interrupted store is completed by
    the same call, one with other settings is refused; the pipeline serves it as pre/*."""
    import jax
    from td_jax import compressors
    from td_jax.data import extract

    d, _ = folder
    out = tmp_path / "td"
    src = dict(source="folder", folder_jsonl=f"{d}/{{split}}.jsonl", num_frames=8, resolution=32, skip_corrupt=True)
    embed = ("patch", dict(patch_size=8, dim=16))
    comp = {"name": "token_dynamics", "budget": 3, "cfg": {"iters": 5, "n_init": 1}, "seed": 0}
    env = dict(os.environ, PYTHONPATH=REPO)
    run = subprocess.run([sys.executable, "-m", "launch.extract_tokens", f"--folder_jsonl={d}/{{split}}.jsonl",
                          "--num_frames=8", "--resolution=32", "--splits=train,validation", f"--out_dir={out}",
                          "--patch_size=8", "--dim=16", "--batch_size=2", "--skip_corrupt",
                          "--compressor=token_dynamics", "--budget=3", '--compressor_cfg={"iters": 5, "n_init": 1}'],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    meta = tokens_store.read_meta(str(out))
    assert meta["arrays"]["pre/base"] == {"shape": [3, 16], "dtype": "float32"}
    assert meta["arrays"]["pre/dynamics_map"]["shape"] == [8, 4, 4] and "visual_tokens" not in meta["arrays"]
    assert meta["compressor"]["stage"]["k"] == 3 and meta["counts"] == {"train": 4, "validation": 3}
    # one batch of 3 gives the same records as batches of 2
    again = tmp_path / "td_b3"
    extract.build_store(str(again), src, ["validation"], embed=embed, compressor=comp, batch_size=3, log=lambda m: None)
    read = lambda p, s: [tokens_store.decode_record(r) for r in __import__("grain").sources.ArrayRecordDataSource(  # noqa: E731
        [tokens_store.split_path(str(p), s)])]
    for a, b in zip(read(out, "validation"), read(again, "validation")):
        for k in a:
            np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
    # the stage equals the registry's precompute on the tower's tokens with the video's key
    frames = np.stack([video.decode_video(d / f"clips/validation{i}.mp4", 8, 32) for i in range(3)])
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(np.arange(3))
    want = compressors.get("token_dynamics", iters=5, n_init=1).precompute(
        pe.patch_embed(frames, patch_size=8, dim=16), keys=keys, budget=3)
    for i, rec in enumerate(read(out, "validation")):
        np.testing.assert_allclose(rec["pre/base"], np.asarray(want["base"][i]), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(rec["pre/dynamics_map"], np.asarray(want["dynamics_map"][i]))
    # served by the pipeline (per record and in memory alike)
    for in_memory in (False, True):
        cfg = dict(source="tokens", tokens_dir=str(out), batch_size=4, shuffle=False, num_epochs=1,
                   drop_remainder=False, max_text_len=48, in_memory=in_memory)
        b = next(pipeline.make_pipeline(cfg, "validation", process_index=0, process_count=1))
        assert b["pre/dynamics_map"].shape == (4, 8, 4, 4) and b["pre/dynamics_map"].dtype == np.int16
        np.testing.assert_allclose(b["pre/base"][:3], np.asarray(want["base"]), rtol=1e-5, atol=1e-6)
    # an interrupted store: the split that did not finish is redone, the other kept
    m = json.load(open(out / "meta.json"))
    del m["counts"]["validation"]
    json.dump(m, open(out / "meta.json", "w"))
    t_train = os.path.getmtime(tokens_store.split_path(str(out), "train"))
    extract.build_store(str(out), src, ["train", "validation"], embed=embed, compressor=comp, batch_size=2,
                        log=lambda m: None)
    assert tokens_store.read_meta(str(out))["counts"] == {"train": 4, "validation": 3}
    assert os.path.getmtime(tokens_store.split_path(str(out), "train")) == t_train
    with pytest.raises(ValueError, match="other settings"):
        extract.build_store(str(out), src, ["test"], embed=embed, compressor={**comp, "budget": 4}, log=lambda m: None)
    # limits: a split's first n videos only, recorded; a store built without the limit is refused
    short = tmp_path / "td_short"
    extract.build_stores([(str(short), comp, ["validation"])], src, embed=embed, limits={"validation": 2},
                         log=lambda m: None)
    got = tokens_store.read_meta(str(short))
    assert got["counts"] == {"validation": 2} and got["limits"] == {"validation": 2}
    for a, b in zip(read(short, "validation"), read(out, "validation")):
        np.testing.assert_array_equal(a["pre/dynamics_map"], b["pre/dynamics_map"])
    with pytest.raises(ValueError, match="other settings"):
        extract.build_stores([(str(short), comp, ["train"])], src, embed=embed, log=lambda m: None)
    with pytest.raises(ValueError, match="limits must be >= 1"):
        extract.build_stores([(str(short), comp, ["train"])], src, embed=embed, limits={"train": 0})
