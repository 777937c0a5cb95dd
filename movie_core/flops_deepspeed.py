"""FLOPs by DeepSpeed's flops-profiler rules, the counter the MoViE paper names.

The project's `paper` convention (convolutions and linear layers, 2 FLOPs per multiply-add) reproduces the
paper's Table 1; DeepSpeed's profiler counts more: bias adds of convolutions, activations, normalisations,
softmax, pooling, resizing and matrix products (the attention matmuls among them).
This module counts one call by those rules, as DeepSpeed's profiler states them (its `flops_profiler/profiler.py`,
read at commit 009c548): per operator,

- linear: 2 x input elements x out_features (bias not counted)
- convolution (and transposed): 2 x multiply-adds, plus one add per output element when there is a bias
- relu, prelu, elu, leaky_relu, relu6, silu, gelu, softmax, pooling: one per input element
- layer, group and instance norm: 5 per element with an affine weight, 4 without; batch norm (inference) 2 or 1
- interpolate: the product of `size` when given, else one per input element
- matmul, mm, bmm: 2 x elements of the first operand x last dimension of the second; addmm and baddbmm add one
  per element of the added tensor
- einsum: numpy's optimised path count

`F.scaled_dot_product_attention` is not patched by the profiler at that commit, so on PyTorch-2 attention it
counts nothing for the attention matmuls. Here it is counted as what it computes and what the profiler counts for
the classic attention processor (bmm, softmax, bmm): 2*B*H*Lq*Lk*d + B*H*Lq*Lk + 2*B*H*Lq*Lk*d_v.
Two more differences from running the profiler: a matrix product written `a @ b` is counted like `torch.matmul`
(PyTorch reports both as the same method), and elementwise `torch.mul`/`torch.add` are left out: the profiler
counts only their explicit calls, PyTorch reports `a * b` and `a.mul(b)` alike, and diffusers' UNets add and
scale with the operators.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


def _numel(t: Any) -> int:
    return t.numel() if isinstance(t, torch.Tensor) else 1


def _arg(args: tuple, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


def _linear(args, kw) -> int:
    x, w = args[0], _arg(args, kw, 1, "weight")
    return 2 * x.numel() * w.shape[0]


def _conv(args, kw) -> int:
    w, bias, out = _arg(args, kw, 1, "weight"), _arg(args, kw, 2, "bias"), _CONV_OUT[0]
    positions = out.numel() // out.shape[1]  # batch x output pixels
    return 2 * positions * w.shape[0] * math.prod(w.shape[1:]) + (out.numel() if bias is not None else 0)


def _conv_transpose(args, kw) -> int:
    x, w, bias, out = args[0], _arg(args, kw, 1, "weight"), _arg(args, kw, 2, "bias"), _CONV_OUT[0]
    groups = _arg(args, kw, 6, "groups", 1)
    positions = x.numel() // x.shape[1]  # batch x input pixels
    macs = positions * x.shape[1] * (w.shape[1] // groups) * math.prod(w.shape[2:])
    return 2 * macs + (out.numel() if bias is not None else 0)


def _per_element(args, kw) -> int:
    return _numel(args[0])


def _norm(args, kw, weight_at: int) -> int:
    return _numel(args[0]) * (5 if _arg(args, kw, weight_at, "weight") is not None else 4)


def _batch_norm(args, kw) -> int:
    return _numel(args[0]) * (2 if _arg(args, kw, 3, "weight") is not None else 1)


def _interpolate(args, kw) -> int:
    size = _arg(args, kw, 1, "size")
    if size is None:
        return _numel(args[0])
    return math.prod(size) if isinstance(size, (tuple, list)) else int(size)


def _matmul(args, kw) -> int:
    a, b = args[0], args[1] if len(args) > 1 else kw.get("other", kw.get("mat2"))
    return 2 * a.numel() * b.shape[-1]


def _addmm(args, kw) -> int:
    base, m1, m2 = args[0], args[1], args[2]
    return 2 * m1.numel() * m2.shape[-1] + _numel(base)


def _einsum(args, kw) -> int:
    import numpy as np

    equation, *ops = args
    if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
        ops = list(ops[0])
    path = np.einsum_path(equation, *[np.empty(o.shape, dtype=np.int8) for o in ops], optimize="optimal")[1]
    line = next(x for x in path.splitlines() if "optimized flop" in x.lower())
    return int(float(line.split(":")[-1]))


def _sdpa(args, kw) -> int:
    q, k, v = args[0], args[1], args[2]
    lead = math.prod(q.shape[:-2])
    lq, d, lk, dv = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
    return lead * (2 * lq * lk * d + lq * lk + 2 * lq * lk * dv)


_CONV_OUT: list[Any] = [None]  # the output of the convolution being counted (its shape gives the positions)

RULES: dict[Callable[..., Any], Callable[[tuple, dict], int]] = {
    F.linear: _linear,
    F.conv1d: _conv, F.conv2d: _conv, F.conv3d: _conv,
    F.conv_transpose1d: _conv_transpose, F.conv_transpose2d: _conv_transpose, F.conv_transpose3d: _conv_transpose,
    F.relu: _per_element, F.prelu: _per_element, F.elu: _per_element, F.leaky_relu: _per_element,
    F.relu6: _per_element, F.silu: _per_element, F.gelu: _per_element, F.softmax: _per_element,
    F.avg_pool1d: _per_element, F.avg_pool2d: _per_element, F.avg_pool3d: _per_element,
    F.max_pool1d: _per_element, F.max_pool2d: _per_element, F.max_pool3d: _per_element,
    F.adaptive_avg_pool1d: _per_element, F.adaptive_avg_pool2d: _per_element, F.adaptive_avg_pool3d: _per_element,
    F.layer_norm: lambda a, k: _norm(a, k, 2), F.group_norm: lambda a, k: _norm(a, k, 2),
    F.instance_norm: lambda a, k: _norm(a, k, 3), F.batch_norm: _batch_norm,
    F.interpolate: _interpolate,
    torch.matmul: _matmul, torch.Tensor.matmul: _matmul, torch.mm: _matmul, torch.Tensor.mm: _matmul,
    torch.bmm: _matmul, torch.Tensor.bmm: _matmul,
    torch.addmm: _addmm, torch.Tensor.addmm: _addmm, torch.baddbmm: _addmm, torch.Tensor.baddbmm: _addmm,
    torch.einsum: _einsum,
    F.scaled_dot_product_attention: _sdpa,
}
_CONVS = {F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d}


class DeepSpeedCounter(TorchFunctionMode):
    """Counts FLOPs by DeepSpeed's rules for the calls made inside it (`with DeepSpeedCounter() as c: ...`)."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)  # the mode is off inside: nested calls are not counted twice
        rule = RULES.get(func)
        if rule is not None:
            _CONV_OUT[0] = out if func in _CONVS else None
            self.flops += int(rule(args, kwargs))
        return out


def count(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of `fn` by DeepSpeed's rules."""
    with DeepSpeedCounter() as counter:
        fn()
    return counter.flops
