"""The nano trainers: autoencoders in one latent space (rescaled VAE, distilled TAESD), resumable; the BPE
tokenizer in CLIPTokenizer format; the text encoder's pretraining; the outputs load through the project's loaders."""

from __future__ import annotations

import importlib.util
import shutil
from collections import Counter

import numpy as np
import pytest
import torch

from movie_core.components import BuildContext
from movie_core.data import procedural
from movie_core.errors import MovieError
from movie_core.plugins import get_registry
from movie_plugins.nano import train as nano_train

RES = 16  # the smallest size the nano VAE takes (2x2 latents): fast enough for the default test run
AE = {"vae_steps": 3, "taesd_steps": 8, "batch_size": 4, "resolution": RES, "pool_size": 16, "checkpoint_seconds": 0.0}


class Interrupt(Exception):
    pass


def stop_at(prefix: str, logs: list[str]):
    """A log function that records lines and raises when one starts with `prefix` (a simulated kill)."""

    def log(line: str) -> None:
        logs.append(line)
        if line.startswith(prefix):
            raise Interrupt(line)

    return log


@pytest.fixture
def tiny_convs():
    """oneDNN's per-shape setup costs more than these tiny convolutions: use PyTorch's own kernels."""
    with torch.backends.mkldnn.flags(enabled=False):
        yield


@pytest.fixture(scope="module")
def autoencoders(tmp_path_factory):
    """One interrupted run and its resumption: (model folder, metrics, log lines of both calls)."""
    out = tmp_path_factory.mktemp("ae") / "model"
    first: list[str] = []
    with torch.backends.mkldnn.flags(enabled=False):
        with pytest.raises(Interrupt):
            nano_train.train_autoencoders(out, **AE, log=stop_at("sd-vae: step 3/3", first))
        with pytest.raises(MovieError, match="other settings"):
            nano_train.train_autoencoders(out, **(AE | {"vae_steps": 5}), log=first.append)
        second: list[str] = []
        metrics = nano_train.train_autoencoders(out, **AE, log=second.append)
    return out, metrics, first, second


def load(name: str, folder):
    spec = get_registry().get("autoencoder", name)
    return spec.load_factory()(BuildContext(size="nano", weights=folder), spec.make_config())


def test_autoencoder_run_resumes_and_cleans_up(autoencoders):
    out, _, _, second = autoencoders
    assert any(line.startswith("sd-vae: resuming at step 2/3") for line in second)
    assert not (out.parent / f".{out.name}.ckpt").exists()
    assert sorted(p.name for p in out.iterdir()) == ["taesd", "vae"]
    for name in ("vae", "taesd"):
        assert list((out / name).glob("*.safetensors"))


def test_autoencoders_load_and_share_one_latent_space(autoencoders, tiny_convs):
    out, metrics, _, _ = autoencoders
    vae, tae = load("sd-vae", out), load("taesd", out)
    images = nano_train.to_tensor(nano_train.make_pool(AE["pool_size"], RES, seed=0))
    with torch.no_grad():
        latents = vae.encode(images)
        assert latents.shape == (len(images), 4, RES // 8, RES // 8)
        assert tae.encode(images).shape == latents.shape
        for encoder in (vae, tae):
            for decoder in (vae, tae):
                assert decoder.decode(encoder.encode(images)).shape == images.shape
    # the rescaled VAE's scaled latents have unit std on the pool, seen through the project's own wrapper
    assert latents.std().item() == pytest.approx(1.0, abs=0.02)
    assert metrics["latent_std"] == pytest.approx(1.0, abs=0.02)
    assert set(metrics["psnr"][f"procedural_{RES}"]) == {f"{e}+{d}" for e, d in nano_train.COMBOS}


class _Identity:
    """An autoencoder that changes nothing: every colour change survives it."""

    def encode(self, x):
        return x

    def decode(self, z):
        return z


class _LumaOnly(_Identity):
    """An autoencoder that keeps BT.601 luma only: every tint is lost, grey stays grey."""

    def encode(self, x):
        return (x * torch.from_numpy(procedural.LUMA).float().view(1, 3, 1, 1)).sum(dim=1, keepdim=True)

    def decode(self, z):
        return z.expand(-1, 3, -1, -1)


class _RedCast(_Identity):
    """Decodes with a +0.05 red cast (in [0, 1] units): grey comes back reddish."""

    def decode(self, z):
        return z + torch.tensor([0.1, 0.0, 0.0]).view(1, 3, 1, 1)


class _SwapRedBlue(_Identity):
    def decode(self, z):
        return z.flip(1)


def test_colour_fidelity_tells_faithful_colour_blind_and_wrong_autoencoders_apart():
    images = nano_train.make_pool(8, 16, seed=1)
    same = nano_train.colour_fidelity(_Identity(), _Identity(), images, "cpu")
    assert same == {"red": 1.0, "green": 1.0, "blue": 1.0, "grey_saturation": 0.0, "grey_chroma": 0.0}
    blind = nano_train.colour_fidelity(_LumaOnly(), _LumaOnly(), images, "cpu")
    assert all(abs(blind[c]) < 1e-3 for c in ("red", "green", "blue")) and blind["grey_saturation"] == 0.0
    cast = nano_train.colour_fidelity(_Identity(), _RedCast(), images, "cpu")
    assert 0.04 <= cast["grey_chroma"] <= 0.05 and cast["grey_saturation"] > 0.05  # +0.05 red, clipped near white
    swapped = nano_train.colour_fidelity(_Identity(), _SwapRedBlue(), images, "cpu")
    assert swapped["green"] == 1.0 and swapped["red"] < -0.4 and swapped["blue"] < -0.4  # red came out blue


def test_nano_vae_groups_leave_room_for_a_global_colour():
    """One channel per GroupNorm group removes every channel's image-wide mean: the nano VAE trained so lost tints."""
    sizes = nano_train.VAE_SIZES["nano"]
    assert min(sizes["block_out_channels"]) // sizes["norm_num_groups"] >= 4
    assert nano_train.new_vae().config.norm_num_groups == sizes["norm_num_groups"]


def test_autoencoder_run_reports_colour_fidelity(autoencoders):
    colour = autoencoders[1]["colour"]
    assert f"procedural_{RES}" in colour
    for values in colour.values():
        assert set(values) == {"sd-vae+sd-vae", "taesd+taesd"}
        assert all(set(v) == {"red", "green", "blue", "grey_saturation", "grey_chroma"} for v in values.values())


def test_chroma_error_ignores_luma_and_sees_a_tint():
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    assert nano_train.chroma_error(x + 0.2, x).item() < 1e-10  # the same change on every channel: luma only
    tinted = x.clone()
    tinted[:, 0] += 0.2
    assert nano_train.chroma_error(tinted, x).item() > 1e-3


def test_multiscale_pool_mixes_two_scales_deterministically():
    pool = nano_train.multiscale_pool(6, 16, seed=2)
    assert pool.shape == (6, 16, 16, 3) and pool.dtype == np.uint8
    assert np.array_equal(pool, nano_train.multiscale_pool(6, 16, seed=2))
    assert np.array_equal(pool[:3], nano_train.make_pool(3, 16, seed=2))  # the rest: crops of 32-pixel renders


def test_colour_finetune_trains_the_taesd_decoder_only(autoencoders, tmp_path, tiny_convs):
    import shutil

    from safetensors.torch import load_file

    folder = tmp_path / "model"
    shutil.copytree(autoencoders[0], folder)
    before = load_file(folder / "taesd" / "diffusion_pytorch_model.safetensors")
    vae_before = (folder / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    metrics = nano_train.finetune_taesd_decoder_colour(folder, steps=3, batch_size=4, resolution=RES, pool_size=6,
                                                       log=lambda _: None)
    after = load_file(folder / "taesd" / "diffusion_pytorch_model.safetensors")
    assert set(before) == set(after)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    assert (folder / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == vae_before
    assert metrics["steps"] == 3 and 0 <= metrics["grey_chroma"] <= 1 and "grey_chroma_start" in metrics
    assert "taesd+taesd" in metrics["colour"][f"procedural_{RES}"]


def test_saturation_map_is_zero_for_grey_and_weights_dark_colour_more():
    grey = torch.full((1, 3, 4, 4), 0.2)
    assert nano_train.saturation_map(grey).abs().max().item() == 0
    dark, bright = torch.tensor([-0.8, -0.9, -0.9]), torch.tensor([0.8, 0.7, 0.7])  # the same chroma, 0.05
    pair = torch.stack([dark, bright]).view(2, 3, 1, 1).requires_grad_(True)
    sat = nano_train.saturation_map(pair).flatten()
    assert sat[0] > 3 * sat[1] > 0
    sat.sum().backward()
    assert torch.isfinite(pair.grad).all()


def test_grey_pass_trains_the_decoder_towards_grey(autoencoders, tmp_path, tiny_convs):
    import shutil

    from safetensors.torch import load_file

    folder = tmp_path / "model"
    shutil.copytree(autoencoders[0], folder)
    before = load_file(folder / "taesd" / "diffusion_pytorch_model.safetensors")
    metrics = nano_train.finetune_taesd_decoder_grey(folder, steps=40, batch_size=4, resolution=RES, pool_size=8,
                                                     lr=2e-3, log=lambda _: None)
    after = load_file(folder / "taesd" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    assert metrics["resolution"] == RES and metrics["grey_noise"] == nano_train.GREY_PASS["grey_noise"] > 0
    # an exactly grey image must come back greyer than before (the probe is held out of the pool)
    assert metrics["grey_saturation"] < 0.7 * metrics["grey_saturation_start"], metrics


def test_taesd_distillation_loss_drops(autoencoders):
    taesd = autoencoders[1]["taesd"]
    assert taesd["distill_heldout"] < taesd["distill_heldout_init"]


def test_vae_sees_whole_images_every_few_steps_at_the_same_pixel_count(tmp_path, monkeypatch, tiny_convs):
    """Crops alone teach the VAE's mid-block attention one token count; every `whole_every`-th step it gets whole
    images instead, as many as hold the crops' pixels, so that step costs what a crop step costs."""
    seen: list[tuple[int, ...]] = []
    real = nano_train._vae_loss

    def spy(vae, x, g):
        seen.append(tuple(x.shape))
        return real(vae, x, g)

    monkeypatch.setattr(nano_train, "_vae_loss", spy)
    for scoring in ("evaluate_autoencoders", "autoencoder_colour"):  # the batches are under test, not the scores
        monkeypatch.setattr(nano_train, scoring, lambda *args, **kw: {})
    settings = AE | {"vae_steps": 6, "taesd_steps": 0, "batch_size": 8, "crop": RES // 2, "whole_every": 3}
    metrics = nano_train.train_autoencoders(tmp_path / "model", **settings, log=lambda line: None)
    crop, whole = (8, 3, RES // 2, RES // 2), (2, 3, RES, RES)
    assert seen == [crop, crop, whole, crop, crop, whole]
    assert metrics["config"]["whole_every"] == 3
    assert nano_train.whole_batch(64, 32, 64) == 16 and nano_train.whole_batch(2, 8, 64) == 1
    seen.clear()
    nano_train.train_autoencoders(tmp_path / "crops", **(settings | {"whole_every": 0}), log=lambda line: None)
    assert seen == [crop] * 6
    with pytest.raises(MovieError, match="whole_every"):
        nano_train.train_autoencoders(tmp_path / "bad", **(settings | {"whole_every": -1}), log=lambda line: None)


def test_rescale_vae_is_an_exact_reparametrisation(tiny_convs):
    torch.manual_seed(0)
    vae = nano_train.new_vae().eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        mode = vae.encode(x).latent_dist.mode().double()
        before = vae.decode(vae.encode(x).latent_dist.mode()).sample
        mean, std = mode.mean(dim=(0, 2, 3)), mode.std(dim=(0, 2, 3))
        nano_train.rescale_vae(vae, mean, std)
        scaled = vae.encode(x).latent_dist.mode() * nano_train.SD_SCALING_FACTOR
        after = vae.decode(vae.encode(x).latent_dist.mode()).sample
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(scaled.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(scaled.std(dim=(0, 2, 3)), torch.ones(4), atol=1e-4, rtol=0)


def test_pool_mixes_sources_and_is_deterministic():
    pool = nano_train.make_pool(12, 32, seed=3)
    assert pool.shape == (12, 32, 32, 3) and pool.dtype == np.uint8
    assert np.array_equal(pool, nano_train.make_pool(12, 32, seed=3))
    assert not np.array_equal(pool, nano_train.make_pool(12, 32, seed=4))


@pytest.mark.skipif(importlib.util.find_spec("skimage") is None, reason="scikit-image (the packaged photos) missing")
@pytest.mark.parametrize("source", ["mixed", "photos"])
def test_pool_takes_photo_crops_for_a_photo_data_source(source, monkeypatch):
    from movie_core.data import photos

    calls = []
    real = photos.photo_image
    monkeypatch.setattr(photos, "photo_image", lambda rng, size: calls.append(size) or real(rng, size))
    pool = nano_train.make_pool(40, 32, seed=3, source=source)
    share = nano_train.POOL_PHOTO_SHARE[source]
    assert abs(len(calls) / 40 - share) < 0.2 and set(calls) == {32}  # about that share, at the pool's size
    assert np.array_equal(pool, nano_train.make_pool(40, 32, seed=3, source=source))
    calls.clear()
    procedural = nano_train.make_pool(40, 32, seed=3)
    assert not calls and np.array_equal(procedural, nano_train.make_pool(40, 32, seed=3, source="procedural"))
    assert not np.array_equal(pool, procedural)


# ------------------------------------------------------------------------------------------ tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import CLIPTokenizer

    texts = [t for ts in nano_train.training_phrasings().values() for t in ts]
    folder = nano_train.write_bpe_tokenizer(tmp_path_factory.mktemp("tok"), nano_train.learn_bpe(texts))
    return CLIPTokenizer.from_pretrained(folder)


def test_tokenizer_has_whole_word_tokens_for_the_instructions(tokenizer):
    assert tokenizer.tokenize("make it sepia") == ["make</w>", "it</w>", "sepia</w>"]
    assert tokenizer.tokenize("Make it SEPIA") == ["make</w>", "it</w>", "sepia</w>"]
    assert tokenizer.model_max_length == 77
    assert tokenizer.bos_token == "<|startoftext|>" and tokenizer.eos_token == "<|endoftext|>"
    words = Counter(w for ts in nano_train.training_phrasings().values() for t in ts for w in t.split())
    for word, count in words.items():  # a word seen twice is one token; one seen once is spelled in pieces
        assert (len(tokenizer.tokenize(word)) == 1) == (count >= 2), word
    assert tokenizer.tokenize("make it brighter") == ["make</w>", "it</w>", "bright", "er</w>"]


@pytest.mark.parametrize("text", ["zxqv", "make it look like van Gogh's café ☕", "tint it #ff8800!", "x" * 200])
def test_tokenizer_falls_back_to_bytes(tokenizer, text):
    ids = tokenizer(text, truncation=True, max_length=77).input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in ids[1:-1]  # nothing lost to <unk>: every byte has a token
    if len(ids) < 77:  # decoding gives the text back, up to case and spacing
        assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == text.lower().replace(" ", "")


def test_held_out_phrasing_is_not_learned():
    texts = [t for ts in nano_train.training_phrasings().values() for t in ts]
    assert procedural.EDITS["sepia"].held_out not in texts
    assert "" in texts  # the empty prompt is its own class


# ------------------------------------------------------------------------------------------ text encoder


@pytest.fixture(scope="module")
def text_encoder(tmp_path_factory):
    out = tmp_path_factory.mktemp("te") / "model"
    metrics = nano_train.train_text_encoder(out, steps=30, batch_size=8, log=lambda line: None)
    return out, metrics


def test_text_encoder_loss_drops_and_accuracy_is_reported(text_encoder):
    _, metrics = text_encoder
    assert metrics["train"]["loss_last"] < metrics["train"]["loss_first"]
    assert set(metrics["heldout_predictions"]) == {e.held_out for e in procedural.EDITS.values()}
    assert 0 <= metrics["heldout_accuracy"]["pooled"] <= 1


def test_text_encoder_folders_are_standard(text_encoder):
    from transformers import CLIPTextModel, CLIPTokenizer

    out, metrics = text_encoder
    assert {p.name for p in (out / "tokenizer").iterdir()} >= {"vocab.json", "merges.txt", "tokenizer_config.json"}
    tok = CLIPTokenizer.from_pretrained(out / "tokenizer")
    assert len(tok) == metrics["tokens"]
    model = CLIPTextModel.from_pretrained(out / "text_encoder", use_safetensors=True)
    ids = tok(["make it sepia"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert model(ids).last_hidden_state.shape == (1, 77, 64)


def test_trained_parts_build_the_mobile_pipeline(autoencoders, text_encoder, tmp_path, tiny_convs):
    from movie_core.composer import compose
    from movie_core.loading import build
    from movie_core.recipe import preset

    model = tmp_path / "model"
    model.mkdir()
    for sub in ("vae", "taesd"):
        shutil.copytree(autoencoders[0] / sub, model / sub)
    for sub in ("tokenizer", "text_encoder"):
        shutil.copytree(text_encoder[0] / sub, model / sub)
    spec = get_registry().get("denoiser", "mobile-pix2pix")
    random = spec.load_factory()(BuildContext(size="nano"), spec.make_config())
    random.unet.save_pretrained(model / "unet", safe_serialization=True)

    recipe = preset("mobile").replace(size="nano", steps=1)
    pipe = build(compose(recipe), model=model)
    assert len(pipe.denoiser.tokenizer) == text_encoder[1]["tokens"]
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    out = pipe.edit_images(images, "make it sepia", generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape and torch.isfinite(out).all()
