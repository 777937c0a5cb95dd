"""Each distiller's own objective, measured on held-out data: what the tests assert and the nano chain records.

All take loaded pipelines (frozen) and held-out tensors from `held_out`; draws are seeded, so two calls on the
same models give the same numbers.
"""

from __future__ import annotations

from pathlib import Path

import torch

GRID = [(s_i, s_t) for s_i in (1.0, 2.0, 3.0) for s_t in (2.0, 7.5, 14.0)]
WELL_CONDITIONED_T = 600  # alpha_t >= 0.5: below, v = (eps_hat - sigma x_t) / alpha_t barely amplifies the teacher


def held_out(pipe, data: Path, n: int = 16):
    """(source latents, edited latents, prompt embeddings) of the first n test-split triplets."""
    from movie_core.data.datasets import open_dataset, to_torch_batch

    ds = open_dataset(data, "test")
    batch = to_torch_batch([ds[i] for i in range(min(n, len(ds)))], device="cpu")
    with torch.no_grad():
        return (pipe.encoder.encode(batch["source"]), pipe.encoder.encode(batch["edited"]),
                pipe.denoiser.encode_prompt(batch["instruction"]))


def noised_draws(pipe, x0: torch.Tensor, draws: int = 2, seed: int = 123):
    """Fixed (t, noise, x_t, alpha, sigma) draws of the VP forward process for evaluation."""
    from movie_plugins.distillers._common import alphas_cumprod, vp_coefficients

    acp = alphas_cumprod(pipe.denoiser, "cpu")
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(draws):
        t = torch.randint(0, 1000, (x0.shape[0],), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        alpha, sigma = vp_coefficients(acp, t)
        out.append((t, noise, alpha * x0 + sigma * noise, alpha, sigma))
    return out


def grid_distance(student, teacher, src, x0, emb) -> float:
    """mmg's objective: mean over the (s_I, s_T) grid and draws of ||student - 3-pass CFG teacher||^2.

    student None: the zero-initialised student, which equals the teacher's conditional pass."""
    null = teacher.denoiser.encode_prompt([""])
    total, count = 0.0, 0
    with torch.no_grad():
        for t, _, x_t, _, _ in noised_draws(teacher, x0):
            cond = teacher.denoiser.unet_forward(x_t, t, src, emb)
            for s_i, s_t in GRID:
                target = teacher.denoiser.predict(x_t, t, src, emb, s_i, s_t, null_emb=null)
                pred = cond if student is None else student.denoiser.predict(x_t, t, src, emb, s_i, s_t)
                total += (pred - target).pow(2).mean().item()
                count += 1
    return total / count


def v_error(student, teacher, src, x0, emb) -> dict[str, float]:
    """vpred's objective: relative error ||v_student - v_target||^2 / ||v_target||^2 at random guidance scales,
    over all t and over t < WELL_CONDITIONED_T; v_target = alpha eps_hat - sigma x0_hat from the epsilon teacher.
    student None: the start (the teacher's own UNet, whose output is still epsilon)."""
    from movie_plugins.distillers._vpred import v_target

    den = (student or teacher).denoiser
    g = torch.Generator().manual_seed(5)
    err, ref, ts = [], [], []
    with torch.no_grad():
        for t, _, x_t, alpha, sigma in noised_draws(teacher, x0, draws=4):
            s_i, s_t = 1 + 2 * torch.rand(x0.shape[0], generator=g), 2 + 12 * torch.rand(x0.shape[0], generator=g)
            target = v_target(teacher.denoiser, x_t, t, src, emb, s_i, s_t, alpha, sigma)
            pred = den.unet_forward(x_t, t, src, emb, s_i, s_t)
            err.append((pred - target).pow(2).flatten(1).sum(1))
            ref.append(target.pow(2).flatten(1).sum(1))
            ts.append(t)
    err, ref, ts = torch.cat(err), torch.cat(ref), torch.cat(ts)
    low = ts < WELL_CONDITIONED_T
    return {"all": (err.sum() / ref.sum()).item(), "low_t": (err[low].sum() / ref[low].sum()).item(),
            "v2": (ref.mean() / x0[0].numel()).item()}


def one_step_vs_teacher(student, teacher, src, emb, teacher_steps: int = 5) -> tuple[float, float]:
    """adversarial's objective: MSE (latents) to the teacher's `teacher_steps`-step LCM output, for
    (the teacher run for 1 step, the student at its default 1 step), averaged over three guidance settings."""
    from movie_plugins.denoisers._pix2pix import make_scheduler
    from movie_plugins.distillers._adversarial import teacher_samples

    den = student.denoiser
    one_err = student_err = 0.0
    for s_i, s_t in ((1.5, 7.5), (1.0, 3.0), (2.5, 12.0)):
        noise = torch.randn(src.shape, generator=torch.Generator().manual_seed(7))
        ref = teacher_samples(teacher.denoiser, src, emb, s_i, s_t, teacher_steps, "lcm", latents=noise,
                              generator=torch.Generator().manual_seed(8))
        with torch.no_grad():
            one = teacher.denoiser.sample(src, emb, steps=1, s_T=s_t, s_I=s_i, latents=noise,
                                          scheduler=make_scheduler("lcm", teacher.denoiser.prediction_type))
            fast = den.sample(src, emb, s_T=s_t, s_I=s_i, latents=noise)  # its default: LCM, 1 step
        one_err += (one - ref).pow(2).mean().item() / 3
        student_err += (fast - ref).pow(2).mean().item() / 3
    return one_err, student_err
