"""md-vae (MobileDiffusion Sec. 3.5): shapes, save/load, its own latent space at compose and build time, an edit
end to end with an 8-channel denoiser, and the decoder stage with the encoder frozen."""

from __future__ import annotations

import pytest
import torch

from movie_core.components import BuildContext
from movie_core.composer import compose
from movie_core.errors import MovieError, UsageError
from movie_core.recipe import preset
from movie_plugins.autoencoders import _md_vae
from tests.cli_helpers import run_cli


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth colour fields with a few rectangles, in [-1, 1]: enough structure for a reconstruction loss."""
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=(size, size), mode="bilinear")
    for i in range(n):
        y, x = torch.randint(0, size // 2, (2,), generator=g).tolist()
        base[i, :, y:y + size // 3, x:x + size // 3] = torch.rand(3, 1, 1, generator=g)
    return base * 2 - 1


def test_nano_md_vae_shapes_light_decoder_and_save_load(tmp_path):
    ae = _md_vae.build_md_vae(BuildContext(size="nano"), None)
    assert (ae.latent_space, ae.latent_channels, ae.downscale) == ("md8", 8, 8)
    x = _images(2, 32)
    z = ae.encode(x)
    assert z.shape == (2, 8, 4, 4)
    assert ae.decode(z).shape == x.shape
    # the lightweight decoder is pruned in width and depth against the stage-1 (full-width) decoder
    full = _md_vae.make_decoder(ae.config, full=True)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ae.decoder) < count(full) / 3
    ae.set_scaling_factor(0.5)
    ae.save_pretrained(tmp_path)
    again = _md_vae.build_md_vae(BuildContext(size="nano", weights=tmp_path), None)
    assert again.scale == 0.5
    assert torch.equal(again.encode(x), ae.encode(x)) and torch.equal(again.decode(z), ae.decode(z))
    with pytest.raises(MovieError, match="no md-vae weights"):
        _md_vae.build_md_vae(BuildContext(size="nano", weights=tmp_path / "nowhere"), None)


def test_full_size_light_decoder_costs_a_fraction_of_sd_decoder():
    """Full size on the meta device: the pruned decoder has well under half the SD VAE decoder's parameters."""
    from movie_plugins.autoencoders import _sd1

    ae = _md_vae.build_md_vae(BuildContext(size="full", meta=True), None)
    sd = _sd1.build_sd_vae(BuildContext(size="full", meta=True), None)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ae.decoder) < 0.3 * count(sd.vae.decoder)
    assert count(ae.encoder) == pytest.approx(count(sd.vae.encoder), rel=0.01)  # SD's encoder, 8 channels out


def test_composer_refuses_md_vae_with_an_sd_latent_denoiser(capsys):
    recipe = preset("movie").replace(size="nano", vae="md-vae")  # mobile-pix2pix-1step: SD latents only
    with pytest.raises(UsageError) as err:
        compose(recipe)
    msg = str(err.value)
    assert "\n" not in msg and "latent space sd1" in msg and "'md-vae' uses md8" in msg
    assert "mobile-diffusion-pix2pix" in msg  # names the denoisers that fit
    # a MobileDiffusion denoiser told to build for SD's latents is refused too; hybrids across spaces are refused
    bad = recipe.replace(denoiser="mobile-diffusion-pix2pix", component_options={"denoiser": {"latent_space": "sd1"}})
    with pytest.raises(UsageError, match="latent space sd1"):
        compose(bad)
    with pytest.raises(UsageError, match="hybrids need one latent space"):
        compose(recipe.replace(vae=None, encoder="md-vae", decoder="taesd", denoiser="mobile-diffusion-pix2pix"))
    code, out, err = run_cli(capsys, "compose", "--vae", "md-vae", "--denoiser", "mobile-pix2pix", "--size", "nano")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1 and "md8" in err


def test_build_refuses_latent_channels_that_differ(clean_plugins):
    """Past the spec-level check, the built denoiser's latent_channels (contract member) must match the autoencoder."""
    from movie_core.hookspecs import hookimpl
    from movie_core.loading import build
    from movie_core.plugins import get_plugin_manager
    from movie_core.registry import ComponentSpec

    class Liar:  # an md8 spec whose factory builds SD's 4-channel denoiser
        @hookimpl
        def movie_register_denoisers(self, registry):
            registry.register(ComponentSpec(family="denoiser", name="md8-liar", summary="x",
                                            factory="movie_plugins.denoisers.mobile_pix2pix_1step:build",
                                            extra={"latent_space": "md8"}))

    get_plugin_manager().register(Liar(), name="liar")
    recipe = preset("movie").replace(size="nano", vae="md-vae", denoiser="md8-liar")
    with pytest.raises(UsageError, match="works on 4-channel latents, but encoder 'md-vae'"):
        build(compose(recipe))


@pytest.mark.parametrize("denoiser", ["mobile-diffusion-pix2pix-1step", "mobile-diffusion"])
def test_md_vae_with_an_8_channel_denoiser_edits_a_clip(capsys, tmp_path, denoiser):
    """The composer builds the MobileDiffusion denoiser for md8 (8 latent channels; 16 UNet inputs when editing) and
    `movie edit` runs end to end on random init, keeping the video's frame count and size."""
    from movie_core.loading import build
    from movie_core.video import make_test_video, probe

    recipe = preset("movie").replace(size="nano", vae="md-vae", denoiser=denoiser, steps=1)
    pipe = build(compose(recipe))
    assert pipe.denoiser.latent_channels == 8
    assert pipe.denoiser.unet.config.in_channels == (16 if "pix2pix" in denoiser else 8)
    src = make_test_video(tmp_path / "in.mp4", seconds=0.5, fps=8, width=48, height=32)
    out = tmp_path / "out.mp4"
    extra = [] if "pix2pix" in denoiser else ["-O", "denoiser.strength=0.5"]
    code, _, err = run_cli(capsys, "edit", str(src), "-p", "make it sepia", "-o", str(out), "--denoiser", denoiser,
                           "--vae", "md-vae", "--init", "random", "--size", "nano", "--steps", "1", "--no-progress",
                           *extra)
    assert code == 0, err
    want, got = probe(src), probe(out)
    for key in ("frame_count", "width", "height"):
        assert got[key] == want[key], key


def test_md8_weights_folder_with_sd_channels_is_one_line(tmp_path):
    from movie_plugins.denoisers import MobileDiffusionConfig, _t2i

    den = _t2i.build("mobile-diffusion", BuildContext(size="nano"), MobileDiffusionConfig())
    den.save_pretrained(tmp_path)
    with pytest.raises(MovieError, match="takes 4 input channels, but 'mobile-diffusion' in latent space md8 needs 8"):
        _t2i.build("mobile-diffusion", BuildContext(size="nano", weights=tmp_path),
                   MobileDiffusionConfig(latent_space="md8"))


@pytest.mark.slow
def test_decoder_stage_lowers_reconstruction_loss_with_the_encoder_frozen():
    from movie_plugins.nano import md_vae_train

    torch.manual_seed(0)
    ae = _md_vae.build_md_vae(BuildContext(size="nano"), None)
    images = _images(8, 16)
    md_vae_train.train_vae(ae, images, steps=2, lr=2e-3, batch_size=4)  # a few encoder steps: latents not random
    factor = md_vae_train.calibrate(ae, images)
    assert factor > 0 and ae.scale == factor
    encoder = {k: v.clone() for m in ae.encoder_modules() for k, v in m.state_dict().items()}
    before = md_vae_train.reconstruction_loss(ae, images)
    log = md_vae_train.train_decoder(ae, images, steps=15, lr=3e-3, batch_size=4)
    after = md_vae_train.reconstruction_loss(ae, images)
    assert len(log) == 15 and after < 0.8 * before, (before, after)
    now = {k: v for m in ae.encoder_modules() for k, v in m.state_dict().items()}
    assert all(torch.equal(encoder[k], now[k]) for k in encoder)  # frozen: bit-identical
    assert not any(p.requires_grad for p in ae.parameters())  # left frozen for inference


def test_nano_train_stage_writes_a_loadable_md_vae_and_stage_2_leaves_the_encoder(tmp_path):
    """movie nano-train's md-vae stage: both stages on the chain's pool and batches, out/md_vae loads as the
    autoencoder builds it, the checkpoint folder goes, the calibrated scaling factor is kept, and the decoder stage
    leaves the encoder bit-identical (a run without it has the same encoder, another decoder)."""
    from movie_plugins.nano import md_vae_train

    kw = dict(steps=3, batch_size=4, resolution=32, crop=16, whole_every=2, pool_size=6, seed=1,
              checkpoint_seconds=1e9, log=lambda _: None)
    runs = {}
    for decoder_steps in (0, 3):
        out = tmp_path / f"d{decoder_steps}"
        metrics = md_vae_train.train_nano(out, decoder_steps=decoder_steps, **kw)
        assert not (out / ".md_vae.ckpt").exists()
        assert set(metrics["psnr"]) >= {"procedural_32"} and all(v > 0 for v in metrics["psnr"].values())
        ae = _md_vae.build_md_vae(BuildContext(size="nano", weights=out), None)
        assert ae.scale == pytest.approx(metrics["stage1"]["scaling_factor"], rel=1e-5) and ae.scale != 1.0
        runs[decoder_steps] = ae.state_dict()
    encoder = [k for k in runs[0] if k.startswith(("encoder.", "quant_conv."))]
    decoder = [k for k in runs[0] if k.startswith(("decoder.", "post_quant_conv."))]
    assert encoder and decoder
    assert all(torch.equal(runs[0][k], runs[3][k]) for k in encoder)
    assert not all(torch.equal(runs[0][k], runs[3][k]) for k in decoder)


def test_nano_train_stage_refuses_to_resume_other_settings(tmp_path):
    from movie_plugins.nano import md_vae_train

    (tmp_path / ".md_vae.ckpt").mkdir()
    (tmp_path / ".md_vae.ckpt" / "config.json").write_text('{"steps": 99}')
    with pytest.raises(MovieError, match="unfinished run with other settings"):
        md_vae_train.train_nano(tmp_path, steps=2, decoder_steps=1, batch_size=2, resolution=16, crop=16,
                                pool_size=2, log=lambda _: None)
    assert not (tmp_path / "md_vae").exists()


def test_chain_budget_keeps_the_md_vae_stage_off_when_scaled():
    from movie_plugins.nano.chain import LEGACY, ChainBudget, recorded_budget

    assert ChainBudget().scaled(0.01).md_vae_steps == 0
    assert ChainBudget(md_vae_steps=3000).scaled(0.01).md_vae_steps == 30
    assert recorded_budget({"count": 8000})["md_vae_steps"] == LEGACY["md_vae_steps"] == 0
