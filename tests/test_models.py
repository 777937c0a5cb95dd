"""Every registered autoencoder and denoiser at nano size: forward, save/load round trip; the MoViE
architecture facts (mobile cut, guidance embedding, 1-step LCM); UNet passes per step; conversion."""

from __future__ import annotations

import time

import pytest
import torch

from movie_core.components import Autoencoder, BuildContext, Denoiser
from movie_core.plugins import get_registry

AUTOENCODERS = list(get_registry().specs("autoencoder"))
DENOISERS = list(get_registry().specs("denoiser"))
PROMPT = "make it look like winter"

# The built-in stages and what the paper says about each; third-party denoisers skip these checks.
GUIDANCE = {
    "instruct-pix2pix": "cfg3",
    "mobile-pix2pix": "cfg3",
    "mobile-pix2pix-mmg": "embedded",
    "mobile-pix2pix-1step": "embedded",
}


def make(spec, **ctx):
    return spec.load_factory()(BuildContext(size="nano", **ctx), spec.make_config())


def perturb(module: torch.nn.Module, seed: int = 123) -> None:
    """Move every weight away from its seeded init, so a round trip passes only if weights really load."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Bit-identical state dicts (the save/load round trip is lossless)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


def assert_same_output(a: torch.Tensor, b: torch.Tensor) -> None:
    """Same outputs. Not always bit-identical: weights loaded from safetensors sit at addresses that
    are not 64-byte aligned, and CPU GEMM kernels pick alignment-dependent code paths (seen: 5e-8
    differences in a Linear with bit-identical weights; cloning the weights makes it exact; 1.6e-5 at 4 of
    256 outputs of the nano SD UNet in a full-suite run, where allocation order differs). The weights are
    checked bit for bit apart (assert_same_weights); the perturbation a failed load would leave moves the
    outputs by far more than 1e-4."""
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_registry_has_the_builtins():
    assert {"sd-vae", "taesd"} <= {s.name for s in AUTOENCODERS}
    assert set(GUIDANCE) <= {s.name for s in DENOISERS}


# ---------------------------------------------------------------------------------------------
# autoencoders


@pytest.mark.parametrize("spec", AUTOENCODERS, ids=lambda s: s.name)
def test_autoencoder_forward_and_round_trip(spec, tmp_path):
    ae = make(spec)
    assert isinstance(ae, Autoencoder)
    assert ae.latent_space == spec.latent_space
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        z = ae.encode(x)
        y = ae.decode(z)
    channels = {"md8": 8}.get(spec.latent_space, 4)  # SD's latents have 4 channels, MobileDiffusion's md-vae 8
    assert z.shape == (1, ae.latent_channels, 64 // ae.downscale, 64 // ae.downscale) == (1, channels, 8, 8)
    assert y.shape == (1, 3, 64, 64)
    assert torch.isfinite(z).all() and torch.isfinite(y).all()

    perturb(ae)
    with torch.no_grad():
        z = ae.encode(x)
        y = ae.decode(z)
    ae.save_pretrained(tmp_path)
    assert any((tmp_path / ae.subfolder).glob("*.safetensors"))
    loaded = make(spec, weights=tmp_path)
    assert_same_weights(loaded, ae)
    with torch.no_grad():
        assert_same_output(loaded.encode(x), z)
        assert_same_output(loaded.decode(z), y)


# ---------------------------------------------------------------------------------------------
# denoisers


def first_timestep(den) -> torch.Tensor:
    sched = den.make_scheduler()
    sched.set_timesteps(den.default_steps)
    return sched.timesteps[0]


@pytest.mark.parametrize("spec", DENOISERS, ids=lambda s: s.name)
def test_denoiser_forward_and_round_trip(spec, tmp_path):
    den = make(spec)
    assert isinstance(den, Denoiser)
    assert den.guidance in ("cfg3", "cfg2", "embedded")
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(1, 4, 8, 8, generator=g)
    image_latents = torch.randn(1, 4, 8, 8, generator=g)
    t = first_timestep(den)

    emb = den.encode_prompt([PROMPT])
    assert emb.ndim == 3 and emb.shape[:2] == (1, 77)
    with torch.no_grad():
        out = den.predict(x_t, t, image_latents, emb, 1.5, 7.5)
    assert out.shape == x_t.shape
    assert torch.isfinite(out).all()

    perturb(den)
    emb = den.encode_prompt([PROMPT])
    with torch.no_grad():
        out = den.predict(x_t, t, image_latents, emb, 1.5, 7.5)
    den.save_pretrained(tmp_path)
    loaded = make(spec, weights=tmp_path)
    for attr in ("stage", "guidance", "prediction_type", "default_steps"):
        assert getattr(loaded, attr) == getattr(den, attr), attr
    assert getattr(loaded, "standin_tokenizer", False) is False
    assert_same_weights(loaded, den)
    loaded_emb = loaded.encode_prompt([PROMPT])
    assert_same_output(loaded_emb, emb)
    with torch.no_grad():
        assert_same_output(loaded.predict(x_t, t, image_latents, emb, 1.5, 7.5), out)


@pytest.fixture(scope="module")
def builtin():
    """name -> nano denoiser (random init, seed 0) for the built-in stages."""
    reg = get_registry()
    return {name: make(reg.get("denoiser", name)) for name in GUIDANCE}


def _has_attention(block) -> bool:
    return len(getattr(block, "attentions", None) or []) > 0


def test_mobile_pix2pix_drops_top_resolution_attention(builtin):
    ip2p, mobile = builtin["instruct-pix2pix"].unet, builtin["mobile-pix2pix"].unet
    assert _has_attention(ip2p.down_blocks[0]) and _has_attention(ip2p.up_blocks[3])
    for name in ("mobile-pix2pix", "mobile-pix2pix-mmg", "mobile-pix2pix-1step"):
        unet = builtin[name].unet
        assert not _has_attention(unet.down_blocks[0]), name
        assert not _has_attention(unet.up_blocks[3]), name
        # the lower resolutions keep theirs
        assert all(_has_attention(b) for b in unet.down_blocks[1:3]), name
        assert all(_has_attention(b) for b in unet.up_blocks[1:3]), name
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(mobile) < n(ip2p)


@pytest.mark.parametrize("name", list(GUIDANCE))
def test_guidance_mode_and_embedding(builtin, name):
    den = builtin[name]
    assert den.guidance == GUIDANCE[name]
    if den.guidance == "embedded":
        # a random init takes the scales per ResNet (paper Sec. 3.3), each ResNet's guidance columns at zero
        from movie_plugins.denoisers._pix2pix import guidance_inject_of, guided_resnets, time_embed_dim

        assert guidance_inject_of(den.unet.config) == "resnet"
        t = time_embed_dim(den.unet.config)
        resnets = guided_resnets(den.unet)
        assert resnets and all(r.time_emb_proj.in_features == 2 * t for r in resnets)
        assert all(torch.count_nonzero(r.time_emb_proj.weight[:, t:]) == 0 for r in resnets)
        assert all(torch.count_nonzero(r.time_emb_proj.weight[:, :t]) > 0 for r in resnets)
    else:
        assert den.unet.class_embedding is None


def test_one_step_denoiser_is_lcm_v_prediction(builtin):
    from diffusers import LCMScheduler

    den = builtin["mobile-pix2pix-1step"]
    sched = den.make_scheduler()
    assert isinstance(sched, LCMScheduler)
    assert sched.config.prediction_type == "v_prediction" == den.prediction_type
    assert den.default_steps == 1
    for name in ("instruct-pix2pix", "mobile-pix2pix", "mobile-pix2pix-mmg"):
        assert builtin[name].prediction_type == "epsilon"
        assert builtin[name].make_scheduler().config.prediction_type == "epsilon"


@pytest.mark.parametrize("spec", DENOISERS, ids=lambda s: s.name)
def test_unet_passes_per_step(spec, builtin):
    """cfg3: three UNet passes per step (one batched call of 3x the frames); cfg2: two; embedded: one pass."""
    den = builtin[spec.name] if spec.name in builtin else make(spec)
    if not (hasattr(den, "unet") and hasattr(den, "sample")):
        pytest.skip(f"{spec.name} has no UNet sampling loop to count")
    calls: list[int] = []
    handle = den.unet.register_forward_pre_hook(lambda mod, args: calls.append(args[0].shape[0]))
    try:
        steps, frames = 2, 2
        image_latents = torch.randn(frames, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        out = den.sample(image_latents, den.encode_prompt([PROMPT]), steps=steps,
                         generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    assert out.shape == image_latents.shape and torch.isfinite(out).all()
    passes = sum(calls) / frames
    assert passes == steps * {"cfg3": 3, "cfg2": 2}.get(den.guidance, 1), calls
    assert len(calls) == steps  # one batched UNet call per step either way
    if spec.name in GUIDANCE:
        assert den.guidance == GUIDANCE[spec.name]


@pytest.mark.parametrize("preset_name", ["movie", "base"])
def test_nano_frame_time_is_recorded(preset_name, record_property):
    """A 64x64 frame through a nano preset pipeline at its default steps, on one thread. Recorded only."""
    from movie_core.composer import compose
    from movie_core.loading import build
    from movie_core.recipe import preset

    pipe = build(compose(preset(preset_name).replace(size="nano")))
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pipe.edit_images(image, PROMPT, generator=torch.Generator().manual_seed(0))  # warm-up
        start = time.perf_counter()
        out = pipe.edit_images(image, PROMPT, generator=torch.Generator().manual_seed(0))
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    record_property("seconds_per_frame", seconds)
    print(f"nano {preset_name} frame 64x64, {pipe.denoiser.default_steps} steps, 1 thread: {seconds:.3f} s")
    assert out.shape == image.shape and torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------
# conversion between stages


def test_mobile_conversion_drops_only_top_attention(builtin):
    from movie_plugins.denoisers._pix2pix import convert_unet

    src = builtin["instruct-pix2pix"].unet
    new = convert_unet(src, "mobile-pix2pix")
    s, d = src.state_dict(), new.state_dict()
    dropped = set(s) - set(d)
    assert dropped and set(d) <= set(s)
    for key in dropped:
        assert ".attentions." in key and key.startswith(("down_blocks.0.", "up_blocks.3.")), key
    for key in d:
        assert torch.equal(d[key], s[key]), key
    assert new.config.down_block_types == builtin["mobile-pix2pix"].unet.config.down_block_types
    assert new.config.up_block_types == builtin["mobile-pix2pix"].unet.config.up_block_types


def _denoiser(stage_name: str, unet, like):
    from movie_plugins.denoisers._pix2pix import STAGES, Pix2PixDenoiser

    stage = STAGES[stage_name]
    return Pix2PixDenoiser(stage, unet, like.text_encoder, like.tokenizer, stage.scheduler).eval()


def test_mmg_conversion_starts_at_the_teacher(builtin):
    """Zero-init guidance embedding: the converted student's single pass equals the teacher's
    conditional pass exactly, for any scales; once linear_2 is trained, the scales matter."""
    from movie_plugins.denoisers._pix2pix import convert_unet

    ip2p = builtin["instruct-pix2pix"]
    teacher = _denoiser("mobile-pix2pix", convert_unet(ip2p.unet, "mobile-pix2pix"), ip2p)
    direct = _denoiser("mobile-pix2pix-mmg", convert_unet(ip2p.unet, "mobile-pix2pix-mmg"), ip2p)
    chained = _denoiser("mobile-pix2pix-mmg", convert_unet(teacher.unet, "mobile-pix2pix-mmg"), ip2p)
    assert direct.guidance == chained.guidance == "embedded"

    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, 4, 8, 8, generator=g)
    image_latents = torch.randn(2, 4, 8, 8, generator=g)
    emb = ip2p.encode_prompt([PROMPT]).expand(2, -1, -1)
    t = first_timestep(teacher)
    with torch.no_grad():
        expected = teacher.unet_forward(x_t, t, image_latents, emb)
        for student in (direct, chained):
            for s_I, s_T in ((1.5, 7.5), (3.0, 2.0)):
                assert torch.equal(student.predict(x_t, t, image_latents, emb, s_I, s_T), expected)

        torch.nn.init.normal_(chained.unet.class_embedding.linear_2.weight, std=0.05)
        a = chained.predict(x_t, t, image_latents, emb, 1.5, 7.5)
        b = chained.predict(x_t, t, image_latents, emb, 1.5, 12.0)
        c = chained.predict(x_t, t, image_latents, emb, 2.5, 7.5)
    assert (a - expected).abs().max() > 1e-3
    assert (a - b).abs().max() > 1e-4
    assert (a - c).abs().max() > 1e-4


def test_mmg_conversion_sizes_the_guidance_projection_to_the_source():
    """A UNet wider than nano gets the guidance projection it would have been built with."""
    from diffusers import UNet2DConditionModel

    from movie_plugins.denoisers._pix2pix import STAGES, convert_unet, unet_config

    cfg = dict(unet_config("nano", STAGES["mobile-pix2pix"]), block_out_channels=(64, 64, 128, 128))
    torch.manual_seed(0)
    src = UNet2DConditionModel(**cfg)
    new = convert_unet(src, "mobile-pix2pix-mmg")
    assert new.config.projection_class_embeddings_input_dim == 2 * 64
    den = _denoiser("mobile-pix2pix-mmg", new, make(get_registry().get("denoiser", "instruct-pix2pix")))
    with torch.no_grad():
        out = den.predict(torch.randn(1, 4, 8, 8), torch.tensor(500), torch.randn(1, 4, 8, 8),
                          torch.randn(1, 77, 64), 1.5, 7.5)
    assert out.shape == (1, 4, 8, 8)


def test_conversion_refuses_what_has_no_place():
    from movie_core.errors import MovieError
    from movie_plugins.denoisers._pix2pix import convert_unet

    reg = get_registry()
    mmg = make(reg.get("denoiser", "mobile-pix2pix-mmg"))
    mobile = make(reg.get("denoiser", "mobile-pix2pix"))
    with pytest.raises(MovieError, match="cannot convert"):
        convert_unet(mmg.unet, "mobile-pix2pix")  # would drop the guidance embedding
    with pytest.raises(MovieError, match="cannot convert"):
        convert_unet(mobile.unet, "instruct-pix2pix")  # would need attention it never had
