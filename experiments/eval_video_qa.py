r"""Evaluate any checkpoint x any compressor x any budget on a video-QA benchmark folder.

The data and evaluation settings for ``launch.eval``; the weights and the architecture come from
``--checkpoint`` (a ``launch.convert`` output or a Hugging Face directory) or ``--workdir`` (a
training run). Question lists are read in the layouts lmms-eval uses (``td_jax.data.video_folder``
documents every field mapping): NExT-QA multiple choice (``nextqa``: video, question, a0..a4,
answer, type -> ``NExTVideo/{video}.mp4``), MVBench (``mvbench``: ``json/<task>.json`` with video,
question, candidates, answer -> ``video/<task folder>/<video>``), Video-MME (``videomme``: videoID,
question, options, answer, duration, domain, task_type -> ``data/{videoID}.mp4``), ActivityNet-QA
(``activitynetqa``, open-ended), and our own ``mc`` / ``open`` JSONL. Scores are reported overall and
per category (NExT-QA question type, MVBench task, Video-MME duration / domain / sub-category /
task type). Writes ``eval_<split>_<step>.json`` (metrics), ``.md`` (tables) and
``.predictions.jsonl`` (one line per question), batched over every device.

    # NExT-QA (lmms-lab/NExTQA MC parquet + NExTVideo/ videos), LLaVA-OV's own pooling
    python -m launch.eval --checkpoint=/ckpt/llava_ov_0_5b --split=test --output_dir=/results/nextqa/pool \
        --config=experiments/eval_video_qa.py:data=/data/nextqa/MC/{split}.parquet,layout=nextqa,video_root=/data/nextqa/NExTVideo
    # the same weights with token dynamics at 16 / 32 tokens, ToMe at 32 (any registered compressor)
    for c in token_dynamics:16 token_dynamics:32 tome:32; do
      python -m launch.eval --checkpoint=/ckpt/llava_ov_0_5b --split=test --output_dir=/results/nextqa/${c/:/_} \
          --compressor=${c%:*} --budget=${c#*:} --config=experiments/eval_video_qa.py:data=...,layout=nextqa
    done
    # MVBench (all tasks of json/), Video-MME (4 options), a fine-tuned run
    python -m launch.eval --checkpoint=/ckpt/llava_ov_0_5b --split=test --output_dir=/results/mvbench \
        --config=experiments/eval_video_qa.py:data=/data/MVBench/json,layout=mvbench
    python -m launch.eval --workdir=/runs/llava_ov_td --split=test --output_dir=/results/videomme_td \
        --config=experiments/eval_video_qa.py:data=/data/videomme/videomme/{split}-00000-of-00001.parquet,layout=videomme
    # open-ended answers (ActivityNet-QA), generated and scored by exact match / contains / token F1
    python -m launch.eval --checkpoint=/ckpt/llava_ov_0_5b --mode=generate --max_new_tokens=16 --split=test \
        --output_dir=/results/anetqa --config=experiments/eval_video_qa.py:data=/data/anetqa/{split}.jsonl,layout=activitynetqa

(A pattern without ``{split}`` names the list of every split: MVBench's ``json/`` directory is read
whatever ``--split`` says.) The paper's ActivityNet-QA numbers come from a GPT judge; plug one in
with ``--judge=package.module:function`` (we cannot call it here).

``arg`` is a comma-separated list of ``key=value``:

    data=PATH        question list (file, directory, or pattern with {split}); layout=auto|nextqa|mvbench|...
    video_root=PATH  where the videos are (default: the layout's folder next to the list)
    ckpt=PATH        weights when launch.eval gets --pretrained instead of --checkpoint
    tokenizer=PATH   tokenizer.json (default: the one next to the weights)
    frames=32        frames sampled uniformly per video (lmms-eval's sampling); res=0 (the tower's size)
    batch=8          questions per batch (global); options=5 (max options per question); max_len=512
    dtype=bfloat16   compute dtype (float32 on CPU for exact comparisons)
    limit=0          batches to evaluate (0: all)
    workers=0        Grain worker processes that read and decode the videos (0: in this process)
"""
import ml_collections as mlc

_KEYS = {"data": str, "layout": str, "video_root": str, "ckpt": str, "tokenizer": str, "frames": int, "res": int,
         "batch": int, "options": int, "max_len": int, "dtype": str, "limit": int, "workers": int}


def get_config(arg: str = "") -> mlc.ConfigDict:
    import importlib.util
    import os

    from td_jax.train.trainer import default_config

    spec = importlib.util.spec_from_file_location("_llava_ov_td", os.path.join(os.path.dirname(__file__),
                                                                                 "llava_ov_td.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    a = mod.parse_arg(arg, _KEYS)

    c = default_config("video_qa")
    c.seed = 0
    c.total_steps = 1                 # unused by evaluation; the schema requires it
    c.log_every_steps = 1
    c.checkpoint_every_steps = 1
    c.compute_dtype = a.get("dtype", "bfloat16")
    c.param_dtype = "float32"
    c.mesh = mlc.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.batch_size = c.eval_batch_size = a.get("batch", 8)
    c.eval_steps = a.get("limit", 0)
    t = c.task
    t.model = ""
    t.init_from = a.get("ckpt", "")
    t.resize_vocab = False
    mod.set_folder_data(t, a, frames=32, max_len=512, workers=0, tokenizer="init_from")
    return c
