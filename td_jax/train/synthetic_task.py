"""``synthetic_mc``: a small multiple-choice classification task for exercising the framework.

Each example is a feature vector ``x [F]`` drawn around one of ``num_classes`` random
class centres; the model (an MLP with logical axis names) picks the class. Classes are
grouped into ``num_families`` families so evaluation reports per-family accuracy exactly
as the video-QA task does. Data are generated deterministically from ``task.data_seed``
and served through Grain, so iterator state checkpoints and resumes like real data.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from td_jax.dense import Dense
from td_jax.eval import mc
from td_jax.train import data as data_lib
from td_jax.train.task import Task, register_task


class MLP(nn.Module):
    """``x [B, F] -> logits [B, C]``; params fp32 (``param_dtype``), compute in ``dtype``."""

    hidden: int
    depth: int
    num_classes: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, deterministic: bool = True, dropout: float = 0.0):
        x = nn.with_logical_constraint(x.astype(self.dtype), ("act_batch", None))
        for i in range(self.depth):
            # Later layers' input dim stays unsharded: sharding it over "fsdp" while the incoming
            # activation is split over "tensor" hits an XLA SPMD miscompile (wrong grads) in jax 0.10.2.
            names = ("embed", "mlp") if i == 0 else (None, "mlp")
            x = Dense(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype, name=f"hidden_{i}",
                      kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), names),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)))(x)
            x = nn.gelu(x)
            x = nn.Dropout(dropout)(x, deterministic=deterministic)
            x = nn.with_logical_constraint(x, ("act_batch", "act_mlp"))
        x = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="norm",
                         scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("mlp",)),
                         bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)))(x)
        return Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head",
                     kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("mlp", "vocab")),
                     bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)))(x)


@functools.lru_cache(maxsize=8)
def _dataset(seed: int, n: int, features: int, classes: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, features)).astype(np.float32)
    labels = rng.integers(0, classes, size=n).astype(np.int32)
    x = centres[labels] + noise * rng.normal(size=(n, features)).astype(np.float32)
    return x, labels


class _Source:
    """Random-access source of ``{"x", "label"}`` examples (what Grain reads)."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "label": self.y[i]}


@register_task("synthetic_mc")
class SyntheticMC(Task):
    activation_axes = ("act_batch", "act_mlp")

    @classmethod
    def default_config(cls) -> mlc.ConfigDict:
        c = mlc.ConfigDict()
        c.name = "synthetic_mc"
        c.features = 16
        c.num_classes = 8
        c.num_families = 2
        c.hidden = 32
        c.depth = 2
        c.dropout = 0.0
        c.noise = 1.0
        c.data_seed = 1234
        c.train_examples = 512
        c.eval_examples = 128
        return c

    def __init__(self, config):
        super().__init__(config)
        t = config.task
        if t.num_classes % t.num_families:
            raise ValueError(f"task.num_classes ({t.num_classes}) must be divisible by task.num_families "
                             f"({t.num_families})")
        self.model = MLP(hidden=t.hidden, depth=t.depth, num_classes=t.num_classes,
                         dtype=jnp.dtype(config.compute_dtype), param_dtype=jnp.dtype(config.param_dtype))

    def family(self, labels):
        t = self.config.task
        return labels // (t.num_classes // t.num_families)

    def abstract_batch(self, batch_size: int, *, train: bool = True):
        out = {"x": jax.ShapeDtypeStruct((batch_size, self.config.task.features), jnp.float32),
               "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
        if not train:
            out["valid"] = jax.ShapeDtypeStruct((batch_size,), jnp.bool_)
        return out

    def init_params(self, rng, batch):
        return self.model.init({"params": rng}, batch["x"])["params"]

    def loss_fn(self, params, batch, rng):
        logits = self.model.apply({"params": params}, batch["x"], deterministic=False,
                                  dropout=self.config.task.dropout, rngs={"dropout": rng})
        logits = logits.astype(jnp.float32)
        logp = jax.nn.log_softmax(logits)
        nll = -jnp.take_along_axis(logp, batch["label"][:, None], axis=-1)[:, 0]
        acc = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        return nll.mean(), {"accuracy": acc.mean()}

    def eval_fn(self, params, batch):
        logits = self.model.apply({"params": params}, batch["x"]).astype(jnp.float32)
        return mc.mc_sums(logits, batch["label"], self.family(batch["label"]), batch["valid"],
                          num_families=self.config.task.num_families)

    def finalize_eval(self, sums):
        return mc.mc_metrics(sums, family_names=[f"family_{i}" for i in range(self.config.task.num_families)])

    def eval_report(self, metrics):
        return mc.markdown_table(metrics, [f"family_{i}" for i in range(self.config.task.num_families)],
                                 title="synthetic_mc accuracy")

    def make_data(self, split, *, batch_size, train, seed, shard_index, shard_count):
        t = self.config.task
        if split == "train":
            x, y = _dataset(t.data_seed, t.train_examples, t.features, t.num_classes, t.noise)
        elif split in ("validation", "test"):
            x, y = _dataset(t.data_seed, t.train_examples + t.eval_examples, t.features, t.num_classes, t.noise)
            x, y = x[t.train_examples:], y[t.train_examples:]
        else:
            raise ValueError(f"synthetic_mc has splits train/validation/test, not {split!r}")
        src = _Source(x, y)
        if train:
            return data_lib.train_iterator(src, dict, batch_size=batch_size, seed=seed, shard_index=shard_index,
                                           shard_count=shard_count)
        return data_lib.eval_iterator(src, dict, batch_size=batch_size, shard_index=shard_index,
                                      shard_count=shard_count)
