"""Grain helpers shared by tasks: sharded train / eval iterators and host -> global arrays.

Train: ``source -> shard by process -> shuffle(seed) -> repeat (reshuffled each epoch) ->
map -> batch``. Eval: one pass, padded with ``valid=False`` copies of the last example
so that every process yields the same number of whole batches.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import grain
import jax
import numpy as np
from jax.sharding import NamedSharding


def _read_options(num_threads: int, prefetch: int) -> grain.ReadOptions:
    return grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)


def train_iterator(source: Sequence, map_fn: Callable[[Any], Mapping[str, np.ndarray]], *, batch_size: int,
                   seed: int, shard_index: int = 0, shard_count: int = 1, num_threads: int = 0,
                   prefetch: int = 0):
    """Infinite shuffled iterator of batches ``{key: [batch_size, ...]}`` for one process.

    ``source`` supports ``len`` and ``__getitem__`` (e.g. a TFDS ``as_data_source``).
    """
    if len(source) < shard_count:
        raise ValueError(f"train source has {len(source)} examples, fewer than {shard_count} processes")
    ds = grain.MapDataset.source(source)[shard_index::shard_count]
    if len(ds) < batch_size:
        raise ValueError(f"train shard {shard_index}/{shard_count} has {len(ds)} examples, fewer than the "
                         f"per-process batch {batch_size}")
    ds = ds.shuffle(seed=seed).repeat(None).map(map_fn).batch(batch_size, drop_remainder=True)
    return iter(ds.to_iter_dataset(_read_options(num_threads, prefetch)))


def eval_iterator(source: Sequence, map_fn: Callable[[Any], Mapping[str, np.ndarray]], *, batch_size: int,
                  shard_index: int = 0, shard_count: int = 1, limit: int = 0, num_threads: int = 0,
                  prefetch: int = 0):
    """One pass over ``source`` in order, as whole batches with a ``valid [B] bool`` field.

    The global length is padded to a multiple of ``batch_size * shard_count`` with copies
    marked ``valid=False``; ``limit`` > 0 caps the number of examples first.
    """
    n = len(source) if not limit else min(limit, len(source))
    if n == 0:
        raise ValueError("eval source is empty")
    per_round = batch_size * shard_count
    padded = -(-n // per_round) * per_round

    def get(i):
        ex = dict(map_fn(source[min(i, n - 1)]))
        ex["valid"] = np.asarray(i < n)
        return ex

    ds = grain.MapDataset.range(padded)[shard_index::shard_count].map(get).batch(batch_size, drop_remainder=True)
    return iter(ds.to_iter_dataset(_read_options(num_threads, prefetch)))


def to_global(batch: Mapping[str, np.ndarray], shardings: Mapping[str, NamedSharding]) -> dict[str, jax.Array]:
    """Process-local numpy batch -> global jax Arrays laid out by ``shardings``."""
    missing = sorted(set(shardings) - set(batch))
    if missing:
        raise ValueError(f"batch is missing keys {missing}; has {sorted(batch)}")
    return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(batch[k])) for k in shardings}
