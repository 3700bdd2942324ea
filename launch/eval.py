r"""Evaluate a training run, a converted checkpoint or a Hugging Face directory.

    # a run (config and architecture read back from its checkpoint; newest step, validation split)
    python -m launch.eval --workdir=/tmp/smoke
    python -m launch.eval --workdir=/tmp/smoke --step=20 --split=test
    # a launch.convert output (or a Hugging Face directory) on a video-QA folder
    python -m launch.eval --checkpoint=/ckpt/llava_ov_0_5b \
        --config=experiments/eval_video_qa.py:data=/data/nextqa/test.parquet,layout=nextqa --split=test
    # any compressor and budget on the same weights; open-ended answers by generation
    python -m launch.eval --checkpoint=/ckpt/llava_ov_0_5b --config=... --compressor=token_dynamics --budget=32
    python -m launch.eval --checkpoint=/ckpt/llava_ov_0_5b --config=... --mode=generate --max_new_tokens=16

The architecture (model config, compressor, budget) comes from the checkpoint: a run stores it
with every step, ``launch.convert`` writes ``model.json``, a Hugging Face directory has
``config.json``; ``--compressor`` / ``--budget`` / ``--compressor_cfg`` / ``--num_frames``
override it (a learned compressor's parameters missing from the weights are freshly
initialised, with a warning). ``--config`` supplies the data and evaluation settings (default
for a run: the config saved in its checkpoint).

Video-QA tasks write, to ``--output_dir`` (default: the run's workdir), ``eval_<split>_<step>``
``.json`` (metrics overall and per category), ``.md`` (tables) and ``.predictions.jsonl`` (one
line per example). ``--mode=mc``: option letters scored at the answer position (lmms-eval's
protocol), or with ``data.answer_format="text"`` each option's words (the video + prompt
decoded once), by the trainer's own evaluation program (``VideoQATask.eval_fn``: the numbers a
run reports while training, and its compiled program, read from JAX's cache when the run's
is there); only an example's own options can be predicted. ``--mode=generate``: batched,
jitted greedy (or ``--temperature``) decoding with the KV cache, scored by exact match /
contains / token F1 (multiple-choice questions: the parsed option);
``--judge=package.module:function`` adds an external judge's verdicts. Other tasks write their
own metrics table.
"""
from __future__ import annotations

import json
import os
import time

from absl import app, flags, logging
from ml_collections import config_flags

from launch import cli, common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config: data and evaluation settings (default for "
                                "--workdir: the one saved in the checkpoint).", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory holding checkpoints/ (evaluate a training run).")
flags.DEFINE_string("checkpoint", None, "A launch.convert output directory or a Hugging Face model directory.")
flags.DEFINE_integer("step", -1, "--workdir: checkpoint step (-1: the newest complete one).")
flags.DEFINE_string("split", "validation", "Dataset split to evaluate.")
flags.DEFINE_bool("pretrained", False, "Evaluate the weights the config's task.init_from names.")
flags.DEFINE_string("output_dir", None, "Where to write the results (default: --workdir).")
flags.DEFINE_integer("eval_steps", -1, "Batches to evaluate (-1: the config's eval_steps; 0: whole split).")
flags.DEFINE_enum("mode", "mc", ["mc", "generate"], "Video QA: score the option letters, or generate answers.")
flags.DEFINE_string("compressor", None, "Override the checkpoint's compressor (a registered name).")
flags.DEFINE_integer("budget", None, "Override the number of visual slots.")
flags.DEFINE_string("compressor_cfg", None, "Override the compressor's fields (a JSON object).")
flags.DEFINE_integer("num_frames", None, "Override the frames sampled per video.")
flags.DEFINE_integer("max_new_tokens", 16, "--mode=generate: tokens to generate per answer.")
flags.DEFINE_float("temperature", 0.0, "--mode=generate: 0 = greedy, else sampling temperature.")
flags.DEFINE_string("judge", None, "--mode=generate: an external judge, 'package.module:function'.")


# flag -> (the flag whose value makes it meaningless, that value, what it needs)
_INERT_WITH = {"max_new_tokens": ("mode", "mc", "--mode=generate"), "temperature": ("mode", "mc", "--mode=generate"),
               "judge": ("mode", "mc", "--mode=generate"), "step": ("workdir", None, "--workdir")}


def _check_flag_combinations() -> None:
    """A flag set to a non-default value where it has no effect is a usage error naming it."""
    for name, (other, inert, needs) in _INERT_WITH.items():
        if FLAGS[name].value != FLAGS[name].default and FLAGS[other].value == inert:
            raise app.UsageError(f"--{name}={FLAGS[name].value} has no effect without {needs}")


def _apply_overrides(config, *, model_path, init_from, overrides):
    """A copy of ``config`` with the architecture source and the user's overrides set."""
    import ml_collections as mlc

    c = mlc.ConfigDict(config.to_dict())
    t = c.task
    if model_path is not None:
        t.model = model_path
    if init_from is not None:
        t.init_from, t.model = init_from, ""
    if overrides.get("compressor") is not None:
        t.compressor = overrides["compressor"]
        t.compressor_cfg = "{}"        # the run's compressor options do not carry over to another method
        t.budget = 0
    if overrides.get("compressor_cfg") is not None:
        t.compressor_cfg = overrides["compressor_cfg"]
    if overrides.get("budget") is not None:
        t.budget = overrides["budget"]
    if overrides.get("num_frames") is not None:
        t.data.num_frames = overrides["num_frames"]
    return c


def _restore_run_params(s, ck, step: int):
    """The run's params at ``step`` fitted to ``s``'s model (other compressor: fresh parameters)."""
    import jax
    from td_jax.convert import fit_params, params as params_lib
    from td_jax.convert.checkpoint import restore_params, saved_params

    source = f"{ck.directory}/{step}"
    state_dir = os.path.join(ck.directory, str(step), "state")
    saved = saved_params(state_dir)
    shardings = s.state_shardings["params"]
    if s.config.task.name != "video_qa":
        params_lib.check_params(saved, s.abstract_state["params"], source=source)
        return restore_params(state_dir, s.abstract_state["params"], shardings)
    abstract, init_compressor = s.task.abstract_params()
    keep = (params_lib.COMPRESSOR in abstract and params_lib.COMPRESSOR in saved
            and not params_lib.tree_problems(saved[params_lib.COMPRESSOR], abstract[params_lib.COMPRESSOR]))
    want = {k: v for k, v in abstract.items() if k != params_lib.COMPRESSOR or keep}
    rest = {k: v for k, v in saved.items() if k != params_lib.COMPRESSOR}
    params_lib.check_params(rest, {k: v for k, v in abstract.items() if k != params_lib.COMPRESSOR}, source=source)
    params = restore_params(state_dir, want, {k: shardings[k] for k in want})
    params = fit_params(params, abstract, init_compressor, key=jax.random.key(s.config.seed), source=source)
    return jax.tree.map(lambda x, sh: jax.device_put(x, sh), params, shardings)


def _pretrained_params(s):
    import jax
    import numpy as np

    pre = s.task.load_pretrained()
    if pre is None:
        raise ValueError(f"task {s.config.task.name!r} has no pretrained weights configured (task.init_from)")
    return jax.tree.map(lambda x, a, sh: jax.device_put(np.asarray(x, a.dtype), sh), pre,
                        s.abstract_state["params"], s.state_shardings["params"])


def _video_qa(s, params, *, split: str, mode: str, gen: dict, max_batches: int, label: str) -> tuple[list, dict, str]:
    """Per-example predictions, metrics and markdown for the video_qa task."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    from td_jax.data import pipeline
    from td_jax.eval import openqa, predict
    from td_jax.train import data as data_lib
    from td_jax.train import mesh as mesh_lib
    from td_jax.train import trainer

    cfg, task = s.config, s.task
    tok = task.tokenizer
    eos = getattr(tok, "im_end", None)
    eos = getattr(tok, "eos_id", None) if eos is None else eos
    shardings = s.eval_batch_shardings
    if mode == "mc":      # the trainer's own evaluation program; its per-example rows
        eval_step = trainer.make_eval_step(s)

        def run_step(params, batch):
            _, rows = trainer.split_per_example(jax.device_get(eval_step(params, batch)))
            return {**rows, "valid": rows["index"] >= 0}
    else:
        step = predict.make_generate_step(task.model, jax.random.key(cfg.task.eval_compress_seed),
                                          media=task.model_inputs, max_new_tokens=gen["max_new_tokens"],
                                          temperature=gen["temperature"], eos_id=eos, pad_id=int(tok.pad_id),
                                          seed=cfg.seed)

        def wrapped(params, batch):
            with mesh_lib.logical_context(s.mesh, cfg.axis_rules):
                return step(params, batch)

        run_step = jax.jit(wrapped, in_shardings=(s.state_shardings["params"], shardings),
                           out_shardings=NamedSharding(s.mesh, P()))
    batches = task.make_data(split, batch_size=cfg.eval_batch_size // jax.process_count(), train=False,
                             seed=cfg.seed, shard_index=jax.process_index(), shard_count=jax.process_count())
    t0 = time.time()

    def progress(i, n):
        if i == 1 or i % 10 == 0:
            logging.info("eval %s: %d batches, %d examples, %.1f s", split, i, n, time.time() - t0)

    rows = predict.collect(run_step, params, batches, lambda b: data_lib.to_global(b, shardings),
                           max_batches=max_batches, progress=progress)
    records = pipeline.example_records(cfg.task.data.to_dict(), split)
    fams = task.family_names()
    if mode == "mc":
        preds = predict.mc_predictions(rows, records, fams)
        names = ["accuracy", "answer_nll"]
    else:
        judge = openqa.load_judge(gen["judge"]) if gen.get("judge") else None
        preds = predict.generate_predictions(rows, records, tok.decode, eos_id=eos, family_names=fams, judge=judge)
        names = ["accuracy", *openqa.SCORERS, "judge_correct", "judge_score"]
    metrics = predict.summarize(preds, names)
    m = task.model_cfg
    title = (f"{label} + {m.compressor} (budget {m.budget}): {split} split, "
             f"{'option letters' if mode == 'mc' else 'generated answers'}")
    rates = [n for n in names if n not in ("answer_nll", "judge_score")]
    md = predict.markdown(metrics, preds, rates, title=title)
    if len(preds) < len(records):
        why = f"the first {max_batches} batches" if max_batches else "videos that failed to decode were skipped"
        md += f"\nScored {len(preds)} of the split's {len(records)} questions ({why}).\n"
        if not max_batches:
            logging.warning("scored %d of %d questions: %d skipped (undecodable videos)", len(preds), len(records),
                            len(records) - len(preds))
    return preds, metrics, md, len(records)


def run(config, *, workdir: str | None, step: int, split: str, output_dir: str, checkpoint: str | None = None,
        pretrained: bool = False, eval_steps: int = -1, mode: str = "mc", overrides: dict | None = None,
        gen: dict | None = None) -> dict:
    """Restores params, evaluates ``split``, writes the results; returns the JSON record."""
    import jax
    import ml_collections as mlc
    from td_jax.convert import expand_path
    from td_jax.eval import predict
    from td_jax.train import checkpoint as ckpt_lib
    from td_jax.train import trainer

    sources = [x for x in (workdir, checkpoint) if x] + (["--pretrained"] if pretrained else [])
    if len(sources) != 1:
        raise app.UsageError("give exactly one of --workdir, --checkpoint, --pretrained")
    overrides, gen = dict(overrides or {}), dict(gen or {})
    ck, model_path, init_from, source = None, None, None, None
    if workdir:
        from etils import epath

        workdir = expand_path(workdir)
        if not epath.Path(workdir).is_dir():          # local or gs://
            raise FileNotFoundError(f"--workdir={workdir}: no such directory")
        # Read-only (creates and renames nothing); the step is checksum-verified, a damaged newest
        # one is skipped (and named in the record), a damaged explicit --step is an error.
        ck = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
        try:
            step = ck.newest_intact_step(step if step >= 0 else None)
            meta = ck.read_meta(step)
        except BaseException:
            ck.close()
            raise
        run_cfg = mlc.ConfigDict(meta["config"])
        if config is None:
            config = run_cfg
        elif config.task.name == run_cfg.task.name == "video_qa":
            # the data are --config's; the weights' tokenizer and origin are the run's
            config = mlc.ConfigDict(config.to_dict())
            config.task.init_from = run_cfg.task.init_from
            if config.task.data.tokenizer == "init_from":
                config.task.data.tokenizer = run_cfg.task.data.tokenizer
        if meta.get("model") is not None and config.task.name == "video_qa":
            os.makedirs(output_dir, exist_ok=True)
            model_path = os.path.join(output_dir, f"model_{step}.json")   # the architecture evaluated
            with open(model_path, "w") as f:
                json.dump(meta["model"], f, indent=1)
        source = workdir
    else:
        if config is None:
            raise app.UsageError("--config is required with --checkpoint / --pretrained (the data and evaluation "
                                 "settings, e.g. experiments/eval_video_qa.py:data=...)")
        if checkpoint:
            init_from = expand_path(checkpoint)
            if not os.path.isdir(init_from):
                raise FileNotFoundError(f"--checkpoint={checkpoint}: no such directory")
        source, step = init_from or config.task.get("init_from", ""), 0
    if mode not in predict.MODES:
        raise ValueError(f"--mode={mode!r}; expected one of {predict.MODES}")
    cfg = trainer.resolve_config(_apply_overrides(config, model_path=model_path, init_from=init_from,
                                                  overrides=overrides))
    if eval_steps >= 0:
        with cfg.unlocked():
            cfg.eval_steps = eval_steps
    s = trainer.build(cfg)
    damaged = {}
    if ck is not None:
        try:
            params = _restore_run_params(s, ck, step)
            damaged = {str(k): v for k, v in sorted(ck.damaged.items())}
        finally:
            ck.close()
    else:
        params = _pretrained_params(s)

    stem = os.path.join(output_dir, f"eval_{split}_{step}" + ("" if mode == "mc" else "_generate"))
    record = {"split": split, "step": int(step), "task": cfg.task.name, "mode": mode, "source": source,
              **({"damaged_steps": damaged} if damaged else {})}
    if cfg.task.name == "video_qa":
        preds, metrics, md, n_split = _video_qa(s, params, split=split, mode=mode, gen=gen, max_batches=cfg.eval_steps,
                                                label=f"{source} step {step}" if ck is not None else source)
        m = s.task.model_cfg
        record.update(model={"compressor": m.compressor, "budget": m.budget, "compressor_cfg": dict(m.compressor_cfg),
                             "dtype": m.dtype},
                      examples={"scored": len(preds), "in_split": n_split, "max_batches": cfg.eval_steps or None},
                      metrics=metrics)
        if jax.process_index() == 0:
            paths = predict.write_outputs(stem, record, preds, md)
            logging.info("wrote %s", ", ".join(paths.values()))
        return record
    if mode != "mc":
        raise ValueError(f"--mode={mode} needs a video_qa task, got {cfg.task.name!r}")
    metrics = trainer.evaluate(s, trainer.make_eval_step(s), params, split=split)
    plain = {k.removeprefix("eval/"): float(v) for k, v in metrics.items()}
    record["metrics"] = plain
    if jax.process_index() == 0:
        os.makedirs(output_dir, exist_ok=True)
        with open(stem + ".json", "w") as f:
            json.dump(record, f, indent=2)
        with open(stem + ".md", "w") as f:
            f.write(f"## {cfg.task.name}: {split} split, step {step}\n\n" + s.task.eval_report(plain))
        logging.info("wrote %s.json and %s.md", stem, stem)
    return record


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    _check_flag_combinations()
    common.init_runtime()
    out = FLAGS.output_dir or FLAGS.workdir
    if not out:
        raise app.UsageError("--output_dir is required (or --workdir, where the results then go)")
    from td_jax.convert import expand_path
    overrides = {"compressor": FLAGS.compressor, "budget": FLAGS.budget, "compressor_cfg": FLAGS.compressor_cfg,
                 "num_frames": FLAGS.num_frames}
    gen = {"max_new_tokens": FLAGS.max_new_tokens, "temperature": FLAGS.temperature, "judge": FLAGS.judge}
    record = run(FLAGS.config, workdir=FLAGS.workdir, step=FLAGS.step, split=FLAGS.split, output_dir=expand_path(out),
                 checkpoint=FLAGS.checkpoint, pretrained=FLAGS.pretrained, eval_steps=FLAGS.eval_steps,
                 mode=FLAGS.mode, overrides=overrides, gen=gen)
    import jax
    if jax.process_index() == 0:
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    cli.run(main)
