"""Detail transfer: the edit's colours on the source's own pixels (`movie edit --detail global|local`).

The model edits at its working size through an autoencoder that loses fine detail (the nano TAESD returns the four
evaluation photographs at 23 dB and a luma SSIM of 0.60-0.83 before any edit). For an edit that is a colour
transform of the source (grayscale, sepia, tints, brightness, contrast, invert: every edit the built-in model
knows), the output can instead be rebuilt from the source at full resolution: fit, on the working-size pair (the
model's input and output), the ridge-regularised affine colour map out = A src + b, and apply it to the source
frame at the output size. 'global' fits one map per frame; 'local' one per window, as the guided filter does (He,
Sun and Tang, "Guided Image Filtering", with the colour guide; the maps averaged over the windows, resized to the
output size and applied there, as in He and Sun's fast guided filter for upsampling). Detail the model never saw
(or its autoencoder blurred) comes back from the source; the colour comes from the model.

Not for edits that add content (a painting style, objects): what no colour map of the source can express is
smoothed away. So `detail` is `none` by default for a recipe, a preset or a user's model, and `global` only for the
built-in default model, whose edits are all global colour edits (`movie list --edits`).

Deterministic and frame by frame: the same frame gives the same output whatever its batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Chosen on training photographs (scripts/detail_tune.py, docs/results/detail_tune.json), never on the evaluation
# ones: for the built-in model's edits PSNR and luma SSIM rise with the window up to one map per frame ('global').
# 'local' keeps a window for edits whose colour change varies over the frame: 16 working-size pixels, twice the
# radius below which the autoencoder's lost detail leaks into the maps (r <= 8 stayed within 1 dB of plain resizing).
LOCAL_RADIUS = 16
EPS = 1e-3  # the regulariser, on [0, 1] colours: 1e-3 was best or tied at every radius
# A regulariser relative to the frame's own colour variance (so a dark frame would be shrunk no more than a bright
# one) was tried with the training photographs darkened to 0.3 of their exposure as well: it did no better there
# (20.56-20.70 dB against 20.73 at the absolute 1e-3), so the absolute one stays; `relative=True` keeps the option.
GLOBAL_RELATIVE = False


def _box(x: torch.Tensor, r: int) -> torch.Tensor:
    """Mean over the (2r+1)^2 window around each pixel, the window clipped at the border: running sums along each
    axis (float64, so the differences of large sums stay exact enough), O(1) per pixel whatever the radius."""
    def along(t: torch.Tensor, dim: int) -> torch.Tensor:
        n = t.shape[dim]
        c = F.pad(t.cumsum(dim), (1, 0) if dim == -1 else (0, 0, 1, 0))  # c[i] = sum of t[:i]
        hi = torch.arange(n).clamp(max=n - 1 - r) + r + 1  # window [i - r, i + r] clipped to [0, n - 1]
        lo = (torch.arange(n) - r).clamp(min=0)
        return (c.index_select(dim, hi) - c.index_select(dim, lo)) / (hi - lo).to(t.dtype).view(
            (-1, 1) if dim == -2 else (-1,))
    return along(along(x.double(), -1), -2).to(x.dtype)


def _solve(mean_g: torch.Tensor, mean_o: torch.Tensor, gg: torch.Tensor, og: torch.Tensor,
           eps: float, relative: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge-regularised affine maps out = A guide + b from first and second moments, for any leading shape:
    mean_g, mean_o (..., 3); gg, og (..., 3, 3) = E[guide guide^T], E[out guide^T].
    Returns A (..., 3, 3) and b (..., 3)."""
    var = gg - mean_g[..., :, None] * mean_g[..., None, :]
    # the ridge: eps itself, or (relative) eps times the guide's mean channel variance, so a dark or flat frame's
    # map shrinks no more than a bright one's (a frame with no variance at all gets eps x 1e-6)
    ridge = eps * (var.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-6)[..., None, None] if relative else 1.0)
    var = var + ridge * torch.eye(3, dtype=gg.dtype)
    cov = og - mean_o[..., :, None] * mean_g[..., None, :]
    a = torch.linalg.solve(var, cov.transpose(-1, -2)).transpose(-1, -2)  # A var = cov, var symmetric
    return a, mean_o - (a @ mean_g[..., None])[..., 0]


def _global(guide: torch.Tensor, out: torch.Tensor, full: torch.Tensor, eps: float,
            relative: bool) -> torch.Tensor:
    """One colour map per frame, fitted on the working-size pair and applied to `full`."""
    g, o = guide.flatten(2).double(), out.flatten(2).double()  # N x 3 x P
    p = g.shape[-1]
    a, b = _solve(g.mean(-1), o.mean(-1), g @ g.transpose(1, 2) / p, o @ g.transpose(1, 2) / p, eps, relative)
    return (torch.baddbmm(b.to(full.dtype)[:, :, None], a.to(full.dtype), full.flatten(2))).view_as(full)


def _local(guide: torch.Tensor, out: torch.Tensor, full: torch.Tensor, r: int, eps: float) -> torch.Tensor:
    """Colour maps per (2r+1)^2 window (the guided filter's), averaged over the windows covering each pixel, resized
    to `full`'s size and applied there."""
    n, c, h, w = guide.shape

    def outer(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # window means of x y^T, channels last
        return _box((x[:, :, None] * y[:, None]).reshape(n, c * c, h, w), r).reshape(n, c, c, h, w).movedim(
            (1, 2), (-2, -1))

    mean_g, mean_o = (_box(t, r).movedim(1, -1) for t in (guide, out))
    a, b = _solve(mean_g, mean_o, outer(guide, guide), outer(out, guide), eps)
    a = _box(a.movedim((-2, -1), (1, 2)).reshape(n, c * c, h, w), r)
    b = _box(b.movedim(-1, 1), r)
    size = tuple(full.shape[-2:])
    if (h, w) != size:
        a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
        b = F.interpolate(b, size=size, mode="bilinear", align_corners=False)
    return (a.reshape(n, c, c, *size) * full[:, None]).sum(2) + b


def transfer(mode: str, source: torch.Tensor, small_source: torch.Tensor, small_out: torch.Tensor, *,
             radius: int = LOCAL_RADIUS, eps: float | None = None, relative: bool | None = None) -> torch.Tensor:
    """The edit `small_source -> small_out` (the model's input and output at the working size) applied to `source`
    (the frames at the output size): mode 'global' (one colour map per frame) or 'local' (per window of `radius`).

    All N x 3 x H x W float tensors in [-1, 1] on the CPU; returns N x 3 x H x W in [-1, 1] at source's size."""
    g, o, full = ((t.float() + 1) / 2 for t in (small_source, small_out, source))
    if mode == "global":
        q = _global(g, o, full, EPS if eps is None else eps, GLOBAL_RELATIVE if relative is None else relative)
    elif mode == "local":
        q = _local(g, o, full, radius, EPS if eps is None else eps)
    else:
        raise ValueError(f"detail must be one of global, local (none: no transfer), got {mode!r}")
    return (q * 2 - 1).clamp(-1, 1)
