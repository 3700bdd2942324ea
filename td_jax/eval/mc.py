"""Multiple-choice scoring: accuracy overall and per question family.

Jit-side, :func:`mc_sums` turns option scores into summable counts; host-side,
:func:`mc_metrics` turns the summed counts into accuracies, and :func:`markdown_table`
renders them.

    scores  [B, n_options]  (e.g. the LLM's logits of the option letters before the answer)
    answer  [B] int32        index of the correct option
    family  [B] int32        question family id in [0, num_families)
    valid   [B] bool         False on padding examples
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def option_scores(logits: jax.Array, option_ids: jax.Array) -> jax.Array:
    """``logits [B, V]`` at the answer position -> ``[B, n_options]`` letter logits."""
    if logits.ndim != 2:
        raise ValueError(f"option_scores expects logits [B, V], got shape {tuple(logits.shape)}")
    return jnp.take(logits, jnp.asarray(option_ids), axis=-1)


def mc_sums(scores: jax.Array, answer: jax.Array, family: jax.Array, valid: jax.Array, *,
            num_families: int) -> dict[str, jax.Array]:
    """Per-family correct / count vectors ``[num_families]`` (float32, summable across batches)."""
    if scores.ndim != 2 or answer.shape != scores.shape[:1]:
        raise ValueError(f"mc_sums expects scores [B, n] and answer [B], got {tuple(scores.shape)} and "
                         f"{tuple(answer.shape)}")
    if family.shape != answer.shape or valid.shape != answer.shape:
        raise ValueError(f"mc_sums: family {tuple(family.shape)} and valid {tuple(valid.shape)} must match "
                         f"answer {tuple(answer.shape)}")
    correct = (jnp.argmax(scores, axis=-1) == answer) & valid
    onehot = jax.nn.one_hot(family, num_families, dtype=jnp.float32) * valid[:, None].astype(jnp.float32)
    return {"correct": onehot.T @ correct.astype(jnp.float32), "count": onehot.sum(0)}


def mc_metrics(sums: Mapping[str, np.ndarray], family_names: Sequence[str]) -> dict[str, float]:
    """``accuracy``, ``count`` and ``accuracy/<family>`` from summed :func:`mc_sums` outputs."""
    correct = np.asarray(sums["correct"], np.float64)
    count = np.asarray(sums["count"], np.float64)
    if correct.shape != (len(family_names),):
        raise ValueError(f"mc_metrics: {len(family_names)} family names for sums of shape {correct.shape}")
    total = count.sum()
    out = {"accuracy": float(correct.sum() / total) if total else float("nan"), "count": float(total)}
    for name, c, n in zip(family_names, correct, count):
        out[f"accuracy/{name}"] = float(c / n) if n else float("nan")
        out[f"count/{name}"] = float(n)
    return out


def markdown_table(metrics: Mapping[str, float], family_names: Sequence[str], *, title: str = "") -> str:
    """A markdown table of accuracy (%) and count per family plus the overall row.

    ``metrics`` as returned by :func:`mc_metrics` (an ``eval/`` prefix is accepted).
    """
    def get(k):
        return metrics.get(k, metrics.get(f"eval/{k}", float("nan")))

    lines = [f"### {title}", ""] if title else []
    lines += ["| family | accuracy (%) | examples |", "|---|---|---|"]
    for name in family_names:
        lines.append(f"| {name} | {100 * get(f'accuracy/{name}'):.2f} | {int(get(f'count/{name}'))} |")
    lines.append(f"| **all** | {100 * get('accuracy'):.2f} | {int(get('count'))} |")
    return "\n".join(lines) + "\n"
