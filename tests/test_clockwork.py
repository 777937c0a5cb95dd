"""Clockwork (issue 21): the denoiser's network split, the step clock in the sampler, and its FLOPs.

The split must reproduce the whole network exactly (the cut moves work, it changes no arithmetic); the clock
must run the low-resolution core only on its full steps, and a clock that runs every step full must equal
no clock at all.
"""

from __future__ import annotations

import pytest
import torch

from movie_core import plugins
from movie_core.components import BuildContext

pytestmark = pytest.mark.usefixtures("one_thread")

STAGES = ("instruct-pix2pix", "mobile-pix2pix", "mobile-pix2pix-mmg", "mobile-pix2pix-1step")


def nano_denoiser(stage: str):
    spec = plugins.get_registry().get("denoiser", stage)
    return spec.load_factory()(BuildContext(size="nano", seed=3), spec.make_config())


def unet_inputs(den, batch: int, h: int, w: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, h, w, generator=g)
    img = torch.randn(batch, 4, h, w, generator=g)
    text = torch.randn(batch, 77, den.unet.config.cross_attention_dim, generator=g)
    return den.graph_inputs(x, torch.tensor(501), img, text, 1.5, 7.5)


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("hw", [(16, 16), (12, 20)])  # 12x20: not a multiple of 8, the upsamplers get sizes
def test_split_reproduces_the_network_exactly(stage, hw):
    den = nano_denoiser(stage)
    split = den.network_split()
    assert split is not None
    inputs = unet_inputs(den, 3, *hw)
    net = den.networks()["unet"].module
    with torch.no_grad(), net.active():
        full = net(*inputs)
    with torch.no_grad():
        r_in, *context = split.head(*inputs)
        r_out = split.core(r_in, *context)
        out = split.tail(r_out, *context)
    top = den.unet.config.block_out_channels
    assert r_in.shape[1] == top[0] and r_in.shape[-2:] == tuple((d + 1) // 2 for d in hw)
    assert r_out.shape[-2:] == hw and r_out.shape[1] == top[1]
    assert torch.equal(out, full)  # the same operations in the same order: bit for bit
    # the cut is real: the tail reads r_out (another r_out gives another output)
    with torch.no_grad():
        other = split.tail(torch.zeros_like(r_out), *context)
    assert (other - full).abs().max() > 1e-3


def test_base_class_says_not_supported():
    from movie_core.components import Denoiser

    assert Denoiser().network_split() is None
