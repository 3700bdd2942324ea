"""The library's dense layer: ``Dense`` is ``flax.linen.Dense`` multiplying ``x [..., D] @ W [D, F]``
as one 2-D GEMM (every dense layer of td_jax is this one).

``flat_dot_general`` is ``lax.dot_general`` for a dense layer's contraction (the last axis
of ``x`` with the first of ``W``, no batch axes) with the leading axes merged first:
``[B, S, D] -> [B·S, D]``.  The forward pass is the same GEMM either way, but the weight
gradient of the 3-D form contracts over two axes (B and S), and XLA on CPU lowers that with
a transposed copy of the activations or the output gradient; merged, it is a plain
``[B·S, D]ᵀ @ [B·S, F]`` GEMM.  Measured on the motion-QA all-token train step (32 videos ×
4,096 memory tokens): see ``experiments/benchmarks/train_step_bench.py``.  Parameter names
and shapes are nn.Dense's, so checkpoints and Hugging Face parity are unchanged; results
agree with the 3-D form to float32 rounding (the weight gradient's summation order).
"""
from __future__ import annotations

import contextlib
import functools
import math

import flax.linen as nn
from jax import lax

_FLATTEN = [True]


@contextlib.contextmanager
def flattening(enabled: bool):
    """Within the block, functions traced use the 2-D form (True) or ``lax.dot_general``'s
    3-D one (False): the A/B switch of ``train_step_bench`` (it acts when a function is
    traced, so build and compile inside the block)."""
    prev = _FLATTEN[0]
    _FLATTEN[0] = bool(enabled)
    try:
        yield
    finally:
        _FLATTEN[0] = prev


def flat_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """``lax.dot_general`` with a dense layer's ``lhs [..., D]`` flattened to 2-D (other
    contractions go to ``lax.dot_general`` unchanged)."""
    (lc, rc), (lb, rb) = dimension_numbers
    dense = (_FLATTEN[0] and lhs.ndim > 2 and rhs.ndim == 2 and tuple(lc) == (lhs.ndim - 1,) and tuple(rc) == (0,)
             and not lb and not rb)
    if not dense:
        return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)
    lead = lhs.shape[:-1]
    y = lax.dot_general(lhs.reshape(math.prod(lead), lhs.shape[-1]), rhs, (((1,), (0,)), ((), ())), precision=precision,
                        preferred_element_type=preferred_element_type)
    return y.reshape(*lead, rhs.shape[1])


# ``nn.Dense`` with the flattened matmul (same fields, parameter names and shapes).
Dense = functools.partial(nn.Dense, dot_general=flat_dot_general)
