"""The DeepSpeed-rules FLOPs counter (issue 28, item 6): each rule against its formula on small modules."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from movie_core.flops_deepspeed import count


def test_linear_and_conv_rules():
    lin = torch.nn.Linear(16, 8)
    x = torch.randn(2, 5, 16)
    assert count(lambda: lin(x)) == 2 * x.numel() * 8  # the bias is not counted for linear

    conv = torch.nn.Conv2d(4, 6, 3, padding=1, stride=2)
    img = torch.randn(1, 4, 10, 10)
    out = conv(img)
    macs = out.shape[2] * out.shape[3] * 6 * 4 * 9
    assert count(lambda: conv(img)) == 2 * macs + out.numel()  # plus one add per output for the bias


def test_norms_activations_and_elementwise():
    gn = torch.nn.GroupNorm(2, 4)
    x = torch.randn(1, 4, 3, 3)
    assert count(lambda: gn(x)) == 5 * x.numel()
    assert count(lambda: F.group_norm(x, 2)) == 4 * x.numel()
    assert count(lambda: F.silu(x)) == x.numel()
    assert count(lambda: x * 2.0 + x) == 0  # elementwise arithmetic is left out
    assert count(lambda: F.interpolate(x, scale_factor=2.0)) == x.numel()


def test_attention_counts_its_matmuls():
    q = torch.randn(2, 3, 7, 8)
    k = torch.randn(2, 3, 11, 8)
    v = torch.randn(2, 3, 11, 5)
    sdpa = count(lambda: F.scaled_dot_product_attention(q, k, v))
    classic = count(lambda: torch.matmul(F.softmax(q @ k.transpose(-1, -2), -1), v))
    assert classic == sdpa  # the classic form: q @ k, softmax, matmul with v
    assert sdpa == 2 * 3 * (2 * 7 * 11 * 8 + 7 * 11 + 2 * 7 * 11 * 5)


def test_nested_calls_are_counted_once():
    mod = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.SiLU(), torch.nn.Linear(4, 2))
    x = torch.randn(3, 4)
    assert count(lambda: mod(x)) == 2 * 12 * 4 + 12 + 2 * 12 * 2
