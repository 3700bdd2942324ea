"""Per-example video-QA evaluation: batched predictions, per-category scores, files.

Two modes over the same batches (``td_jax.data.pipeline``, ``valid`` / ``index`` per row):

* ``"mc"`` — multiple choice as lmms-eval scores it: the option letters' logits at the answer
  position, restricted to the example's own options (``num_options``); the likeliest letter is
  the prediction.  Also the answer's negative log-likelihood per example.
* ``"generate"`` — greedy (or temperature) decoding after each prompt with the KV cache,
  jitted and batched (``td_jax.models.vlm.generate``).  Open-ended answers are scored by
  exact match / contains / token F1 against the references (``td_jax.eval.openqa``); a
  multiple-choice question's generated answer is parsed to an option and scored as accuracy.
  An external judge (``openqa.load_judge``) adds ``judge_correct`` / ``judge_score``.

    # mc: the task's eval_fn (td_jax.train.video_qa) emits the per-example rows; generate:
    step = make_generate_step(model, compress_key, max_new_tokens=..., eos_id=..., pad_id=...)
    rows = collect(jax.jit(step, ...), params, batches, to_global)  # {index: per-example outputs}
    preds = mc_predictions(rows, records)                           # one dict per example
    metrics = summarize(preds, ["accuracy"])                        # overall and per category
    write_outputs(stem, record, preds, markdown)                    # .json, .md, .predictions.jsonl

``records`` are ``td_jax.data.video_folder`` records (id, question, options, answers, family,
groups) in split order; without them (TFDS sources) a row's metadata is its index and family.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from td_jax.eval import openqa

MODES = ("mc", "generate")
PASS_THROUGH = ("index", "valid", "num_options", "answer", "family")


def _passthrough(batch) -> dict:
    return {k: batch[k] for k in PASS_THROUGH if k in batch}


def _media(batch) -> dict:
    return {"visual_tokens": batch["visual_tokens"]} if "visual_tokens" in batch else {"frames": batch["frames"]}


def prompt_mask(attention_mask, loss_mask):
    """``[B, L]`` bool: the tokens before each row's first target token (its prompt)."""
    return attention_mask.astype(bool) & (jnp.cumsum(loss_mask > 0, axis=1) == 0)


def make_generate_step(model, compress_key: jax.Array, *, max_new_tokens: int, temperature: float = 0.0,
                       eos_id: int | None, pad_id: int, seed: int = 0, media: Callable = _media) -> Callable:
    """``step(params, batch) -> {"ids": [B, max_new_tokens], "lengths": [B], ...pass-through}``:
    decoding continues each row's prompt (its tokens before the first target token)."""
    from td_jax.models import vlm

    base = jax.random.key(seed)

    def step(params, batch):
        key = jax.random.fold_in(base, jnp.max(batch["index"]))      # sampling: a key per batch
        out = vlm.generate(model, {"params": params}, batch["input_ids"],
                           prompt_mask(batch["attention_mask"], batch["loss_mask"]),
                           max_new_tokens=max_new_tokens, temperature=temperature, eos_id=eos_id, pad_id=pad_id,
                           key=key if temperature > 0 else None, compress_key=compress_key, **media(batch))
        return {"ids": out["ids"], "lengths": out["lengths"], **_passthrough(batch)}

    return step


def collect(step, params, batches: Iterable[Mapping[str, np.ndarray]], to_device: Callable, *,
            max_batches: int = 0, progress: Callable[[int, int], None] | None = None) -> dict[int, dict]:
    """Runs ``step`` over ``batches``; returns ``{example index: {output: value}}`` for the valid
    rows (the step's outputs are global, so every process sees every row)."""
    rows: dict[int, dict] = {}
    for i, batch in enumerate(batches):
        if max_batches and i >= max_batches:
            break
        out = jax.device_get(step(params, to_device(batch)))
        valid = np.asarray(out["valid"], bool)
        for r in np.nonzero(valid)[0]:
            rows[int(out["index"][r])] = {k: np.asarray(v[r]) for k, v in out.items()}
        if progress is not None:
            progress(i + 1, len(rows))
    if not rows:
        raise ValueError("the evaluation split yielded no valid examples")
    return rows


def _meta(index: int, row: dict, records: Sequence[dict] | None, family_names: Sequence[str]) -> dict:
    if records is not None:
        r = records[index]
        return {"id": r["id"], **({"video": r["video"]} if r.get("video") else {}), "question": r["question"], "options": r["options"], "answers": r["answers"],
                "family": r["family"], "groups": r.get("groups") or {"family": r["family"]}}
    fam = family_names[int(row["family"])] if "family" in row and family_names else "all"
    return {"id": str(index), "question": "", "options": [], "answers": [], "family": fam, "groups": {"family": fam}}


def mc_predictions(rows: Mapping[int, dict], records: Sequence[dict] | None, family_names: Sequence[str] = ()
                   ) -> list[dict]:
    """One dict per example: the chosen option (among the example's own), whether it is the
    answer, the option scores and the answer's NLL."""
    out = []
    for i in sorted(rows):
        row = rows[i]
        meta = _meta(i, row, records, family_names)
        n = int(row.get("num_options", 0)) or (len(meta["options"]) or row["scores"].shape[0])
        if n > row["scores"].shape[0]:
            raise ValueError(f"example {meta['id']} has {n} options, more than the tokenizer's "
                             f"{row['scores'].shape[0]} option letters (raise data.num_options)")
        scores = row["scores"][:n].astype(float)
        pred = int(np.argmax(scores))
        answer = int(row["answer"])
        out.append({"index": i, **meta, "answer": answer, "prediction": pred, "accuracy": float(pred == answer),
                    "scores": [round(float(x), 4) for x in scores], "answer_nll": float(row["answer_nll"])})
    return out


def generate_predictions(rows: Mapping[int, dict], records: Sequence[dict] | None, decode: Callable, *,
                         eos_id: int | None, family_names: Sequence[str] = (), judge=None) -> list[dict]:
    """One dict per example: the generated text and ids, and its scores (open-ended: exact
    match / contains / token F1; multiple choice: the parsed option and accuracy; a judge's
    verdict when one is given)."""
    out = []
    for i in sorted(rows):
        row = rows[i]
        meta = _meta(i, row, records, family_names)
        ids = [int(t) for t in row["ids"][:int(row["lengths"])]]
        text_ids = ids[:-1] if ids and eos_id is not None and ids[-1] == eos_id else ids
        text = decode(text_ids).strip()
        pred = {"index": i, **meta, "prediction": text, "ids": ids}
        if meta["options"]:
            choice = openqa.parse_option(text, meta["options"])
            answer = int(row["answer"])
            pred.update(answer=answer, parsed_option=choice, accuracy=float(choice == answer))
        refs = meta["answers"]
        if refs:
            pred.update(openqa.score(text, refs))
        if judge is not None and refs:
            pred.update(openqa.run_judge(judge, meta["question"], text, refs))
        out.append(pred)
    return out


def summarize(preds: Sequence[dict], metrics: Sequence[str]) -> dict[str, float]:
    """Means of each metric overall (``metric``, ``count``) and per category: the family
    (``metric/<family>``, ``count/<family>``) and any other group (``metric/<group>=<value>``).
    Metrics an example lacks (e.g. open-ended scores of a multiple-choice row) are skipped."""
    out: dict[str, float] = {"count": float(len(preds))}
    buckets: dict[str, list[dict]] = {"": list(preds)}
    for p in preds:
        for g, v in p["groups"].items():
            buckets.setdefault(v if g == "family" else f"{g}={v}", []).append(p)
    for name, ps in buckets.items():
        suffix = f"/{name}" if name else ""
        if name:
            out[f"count{suffix}"] = float(len(ps))
        for m in metrics:
            vals = [p[m] for p in ps if m in p]
            if vals:
                out[f"{m}{suffix}"] = float(np.mean(vals))
    return out


def markdown(metrics: Mapping[str, float], preds: Sequence[dict], metric_names: Sequence[str], *,
             title: str) -> str:
    """Tables of the metrics (in %) per category: one for the families, one per other group."""
    names = [m for m in metric_names if m in metrics]
    groups: dict[str, list[str]] = {}
    for p in preds:
        for g, v in p["groups"].items():
            if v not in groups.setdefault(g, []):
                groups[g].append(v)
    fmt = lambda x: "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"
    lines = [f"## {title}", ""]
    for g, values in groups.items():
        key = (lambda v: v) if g == "family" else (lambda v, g=g: f"{g}={v}")
        lines += ["", f"| {g} | " + " | ".join(f"{m} (%)" for m in names) + " | examples |",
                  "|---|" + "---|" * (len(names) + 1)]
        for v in sorted(values):
            lines.append(f"| {v} | " + " | ".join(fmt(metrics.get(f"{m}/{key(v)}")) for m in names)
                         + f" | {int(metrics.get(f'count/{key(v)}', 0))} |")
        lines.append("| **all** | " + " | ".join(f"**{fmt(metrics.get(m))}**" for m in names)
                     + f" | {int(metrics['count'])} |")
    return "\n".join(lines) + "\n"


def write_outputs(stem: str, record: dict, preds: Sequence[dict], md: str) -> dict[str, str]:
    """``stem.json`` (the record), ``stem.md`` and ``stem.predictions.jsonl`` (the names
    ``trainer.write_eval`` uses); returns the paths."""
    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    paths = {"json": stem + ".json", "md": stem + ".md", "predictions": stem + ".predictions.jsonl"}
    with open(paths["json"], "w") as f:
        json.dump(record, f, indent=2)
    with open(paths["md"], "w") as f:
        f.write(md)
    with open(paths["predictions"], "w") as f:
        for p in preds:
            f.write(json.dumps(p, default=_jsonable) + "\n")
    return paths


def _jsonable(x: Any):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
