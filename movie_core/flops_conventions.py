"""Named FLOPs conventions beyond `paper` and `all` (movie_core.flops), counted on the meta device.

`mobilediffusion`: the convention that reproduces MobileDiffusion's Table 1 (SD-1.5 392, SD-XL 710,
MobileDiffusion 182 "GFLOPs"). Its numbers are multiply-accumulates (one per multiply-add, not two) of
convolutions, linear layers *and* the attention matmuls (Q K^T and the weights times V), at 512x512 pixels
(a 64x64 latent) for every model, SD-XL included. Bias adds, norms, activations and softmax are not counted.
What fixes it: SD-1.5's UNet is 338.6 GMACs without attention matmuls at 512^2, far under 392; with them it is
about 400 (the paper's 392 is within 3%); counting FLOPs as 2 per multiply-add (677 / 801) or SD-XL at 1024^2
(about 2,990 GMACs) does not come near. `examples/mobilediffusion_table1.py` prints the comparison.

`deepspeed`: DeepSpeed's flops-profiler rules, see movie_core.flops_deepspeed.

The mobilediffusion counter is a torch-function mode (attention matmuls, whatever attention code runs them) plus
module forward hooks (convolutions and linear layers), so it counts any torch module, plugins' own included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

CONVENTIONS = {
    "mobilediffusion": "MobileDiffusion Table 1: multiply-accumulates of conv, linear and attention matmuls "
    "(1 per multiply-add), at 512x512 for its Table 1",
    "deepspeed": "DeepSpeed's flops-profiler rules (the counter the MoViE paper names): 2 per multiply-add of "
    "conv, linear and matmuls (attention included), plus bias adds, norms, activations, softmax, pooling, resizing",
}


def _layer_macs(module: torch.nn.Module, output: Any) -> int:
    if not isinstance(output, torch.Tensor):
        return 0
    if isinstance(module, torch.nn.Linear):
        return output.numel() * module.in_features
    if isinstance(module, torch.nn.modules.conv._ConvNd):
        kernel = 1
        for k in module.kernel_size:
            kernel *= k
        return output.numel() * (module.in_channels // module.groups) * kernel
    return 0


def _matmul_macs(a: torch.Tensor, b: torch.Tensor) -> int:
    """Multiply-adds of a (batched) matrix product a @ b."""
    if a.ndim == 1 or b.ndim == 1:
        return max(a.numel(), b.numel())
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    n = 1
    for s in batch:
        n *= s
    return n * a.shape[-2] * a.shape[-1] * b.shape[-1]


class _MatmulMode(TorchFunctionMode):
    """Counts the multiply-adds of attention and matrix products that are not nn.Linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0  # F.linear is not a matmul here: linear layers are counted by the module hook

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k, v = args[:3]
            lq, lk = q.shape[-2], k.shape[-2]
            heads = 1
            for s in q.shape[:-2]:
                heads *= s
            self.macs += heads * lq * lk * (q.shape[-1] + v.shape[-1])
        elif func in (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.Tensor.bmm):
            self.macs += _matmul_macs(args[0], args[1])
        elif func in (torch.baddbmm, torch.Tensor.baddbmm):
            self.macs += _matmul_macs(args[1], args[2])
        return func(*args, **kwargs)


def measure(fn: Callable[[], Any]) -> dict[str, int]:
    """Multiply-adds of one call: {'layers': conv + linear, 'attention': attention/matrix products}."""
    layers = 0

    def hook(module: torch.nn.Module, inputs: Any, output: Any) -> None:
        nonlocal layers
        layers += _layer_macs(module, output)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        with _MatmulMode() as mode:
            fn()
    finally:
        handle.remove()
    return {"layers": layers, "attention": mode.macs}


def count(name: str, fn: Callable[[], Any]) -> int:
    """One call's count in the named convention (an int: FLOPs as the convention defines them)."""
    if name not in CONVENTIONS:
        raise KeyError(name)
    if name == "deepspeed":
        from movie_core import flops_deepspeed

        return flops_deepspeed.count(fn)
    parts = measure(fn)
    return parts["layers"] + parts["attention"]


def parameters(module: Any) -> int | None:
    """Parameter count of a torch module (shared tensors once); None for a component that is not a torch module
    (the contracts list no parameters: such a component's count is unknown)."""
    if not isinstance(module, torch.nn.Module):
        return None
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())
