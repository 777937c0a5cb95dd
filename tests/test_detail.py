"""`--detail` (movie_core.detail): the colour map the model made at its working size, applied to the source's own
pixels at the output size (issue 24: the default model keeps real footage recognisable)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from movie_core import detail
from movie_core.errors import UsageError
from movie_core.recipe import make_recipe
from tests.cli_helpers import run_cli

SEPIA = torch.tensor([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]]) * 0.8


def textured(n: int = 2, h: int = 96, w: int = 128, seed: int = 0) -> torch.Tensor:
    """Frames in [-1, 1] with smooth colour gradients and fine texture (what an autoencoder blurs away)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([0.5 + 0.3 * torch.sin(6 * xx), 0.5 + 0.3 * torch.cos(5 * yy), 0.3 + 0.4 * xx * yy])
    frames = base[None] + 0.15 * torch.rand(n, 3, h, w, generator=g) * torch.rand(n, 1, 1, 1, generator=g)
    return frames.clamp(0, 1) * 2 - 1


def colour(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,njhw->nihw", m, (x + 1) / 2) * 2 - 1


def blurred_small(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The working-size frame as the model sees it, with the detail an autoencoder loses blurred out."""
    small = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
    return F.avg_pool2d(small, 5, stride=1, padding=2, count_include_pad=False)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(4 / ((a - b) ** 2).mean()))


@pytest.mark.parametrize("mode", ["global", "local"])
def test_a_colour_edit_comes_back_at_full_detail(mode: str) -> None:
    source = textured()
    small = F.interpolate(source, size=(48, 64), mode="bicubic", antialias=True, align_corners=False)
    for m, name in ((SEPIA, "sepia"), (-torch.eye(3), "invert")):
        want = colour(m, source) if name == "sepia" else -source
        model_out = colour(m, blurred_small(source, (48, 64))) if name == "sepia" else -blurred_small(source, (48, 64))
        plain = F.interpolate(model_out, size=(96, 128), mode="bicubic", align_corners=False)
        got = detail.transfer(mode, source, small, model_out)
        assert got.shape == source.shape
        # the texture the blur took is back: far closer to the exact edit than the resized model output
        assert psnr(got, want) > psnr(plain, want) + 4, (mode, name, psnr(got, want), psnr(plain, want))
        assert psnr(got, want) > 30 if mode == "global" else psnr(got, want) > 24


def test_each_frame_is_its_own_whatever_the_batch() -> None:
    source = textured(3)
    small = F.interpolate(source, size=(48, 64), mode="bicubic", antialias=True, align_corners=False)
    out = colour(SEPIA, small)
    for mode in ("global", "local"):
        batch = detail.transfer(mode, source, small, out)
        alone = detail.transfer(mode, source[1:2], small[1:2], out[1:2])
        assert torch.equal(batch[1:2], alone)
        assert not torch.equal(batch[0], batch[1])  # frames differ, so the check can fail


def test_box_filter_equals_a_clipped_window_mean_at_any_radius() -> None:
    x = torch.rand(1, 2, 7, 9, dtype=torch.float64)
    for r in (1, 3, 20):
        got = detail._box(x, r)
        i, j = 4, 2
        want = x[:, :, max(0, i - r):i + r + 1, max(0, j - r):j + r + 1].mean((-1, -2))
        assert torch.allclose(got[:, :, i, j], want)
    with pytest.raises(ValueError, match="global, local"):
        detail.transfer("bilateral", textured(1), textured(1), textured(1))


def test_recipe_key_and_one_line_errors() -> None:
    assert make_recipe({"detail": "local"}).detail == "local"
    assert make_recipe({}).detail == "none"
    with pytest.raises(UsageError, match="detail"):
        make_recipe({"detail": "sharpen"})


def test_movie_edit_default_keeps_the_source_detail_and_says_so(tmp_path: Path, capfd) -> None:
    """The built-in model: --detail global by default, stated on stderr; --detail none is the plain resize; the
    transferred edit keeps more of the source's structure (luma correlation with the source)."""
    import av

    from movie_core.video import make_test_video

    src = make_test_video(tmp_path / "in.mp4", seconds=0.25, fps=8, width=160, height=120, audio=True)
    outs = {}
    for mode in ("default", "none"):
        out = tmp_path / f"{mode}.mp4"
        extra = () if mode == "default" else ("--detail", "none")
        code, _, err = run_cli(capfd, "edit", str(src), "-p", "make it grayscale", "-o", str(out), "--no-progress",
                               *extra)
        assert code == 0, err
        assert ("(--detail global)" in err) == (mode == "default"), err
        with av.open(str(out)) as box:
            outs[mode] = np.stack([f.to_ndarray(format="rgb24") for f in box.decode(video=0)]).astype(np.float64)
    with av.open(str(src)) as box:
        source = np.stack([f.to_ndarray(format="rgb24") for f in box.decode(video=0)]).astype(np.float64)
    luma = lambda x: x @ np.array([0.299, 0.587, 0.114])  # noqa: E731
    corr = {k: np.corrcoef(luma(v).ravel(), luma(source).ravel())[0, 1] for k, v in outs.items()}
    assert corr["default"] > corr["none"], corr
    code, _, err = run_cli(capfd, "edit", str(src), "-p", "x", "-o", str(tmp_path / "bad.mp4"), "--detail", "sharp")
    assert code != 0 and "Traceback" not in err and not (tmp_path / "bad.mp4").exists()


def test_a_relative_regulariser_shrinks_a_dark_frames_map_no_more_than_a_bright_ones() -> None:
    bright = textured(1)
    dark = (bright + 1) * 0.1 - 1  # a tenth of the exposure
    errors = {}
    for name, source in (("bright", bright), ("dark", dark)):
        small = F.interpolate(source, size=(48, 64), mode="bicubic", antialias=True, align_corners=False)
        for relative in (False, True):
            got = detail.transfer("global", source, small, -small, eps=0.01, relative=relative)
            # the error as a share of the frame's own contrast (a darker frame has less of both)
            spread = (source - source.mean((-1, -2), keepdim=True)).abs().mean()
            errors[name, relative] = float((got + source).abs().mean() / spread)
    assert errors["dark", False] > 2 * errors["bright", False]  # the absolute ridge shrinks the dark frame's map
    assert errors["dark", True] < 1.5 * errors["bright", True]
