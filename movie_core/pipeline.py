"""A built recipe: encoder, decoder and denoiser running through the recipe's backend, and the one edit step.

`Pipeline.build` returns a pipeline already bound to its backend. `Pipeline.edit_batch` is the edit step
(encode -> sample -> decode) that `movie edit`, `bench`, `eval`, `ablate` and `export` all call; the
anchor state of cross-frame attention is passed in explicitly. Components are reached only through the
contracts in movie_core.components.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import torch

from movie_core.components import BuildContext
from movie_core.composer import Composition
from movie_core.crossframe import AnchorController
from movie_core.errors import MovieError, UsageError
from movie_core.weights import replace_folder, write_manifest


@attrs.frozen
class Prompt:
    """A prompt encoded once per video: its embeddings, and the empty prompt's for 3-pass guidance."""

    text_emb: torch.Tensor
    null_emb: torch.Tensor | None


def check_latent_channels(composition: Composition, encoder: Any, decoder: Any, denoiser: Any) -> None:
    """The denoiser's `latent_channels` (optional contract member) against both autoencoders': one line if not."""
    want = getattr(denoiser, "latent_channels", None)
    if want is None:
        return
    for slot, ae in (("encoder", encoder), ("decoder", decoder)):
        have = ae.latent_channels
        if have != want:
            spec, den = composition.specs[slot], composition.specs["denoiser"]
            raise UsageError(f"denoiser '{den.name}' works on {want}-channel latents, but {slot} '{spec.name}' "
                             f"(latent space {spec.latent_space}) has {have}")


class Pipeline:
    """The components of one composed recipe, bound to its backend, with provenance."""

    def __init__(self, composition: Composition, encoder: Any, decoder: Any, denoiser: Any, *,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.composition = composition
        self.recipe = composition.recipe
        self.encoder = encoder
        self.decoder = decoder
        self.denoiser = denoiser
        self.device = device
        self.dtype = dtype
        self.runtime: Any = None  # movie_core.backends.Runtime when the backend routes the components
        self.step_clock: Any = None  # movie_core.clockwork.StepClock when the recipe sets a step clock
        self.frame_clock: Any = None  # movie_core.clockwork.FrameClock when the recipe sets frame_clock
        self.clock_notes: list[str] = []

    @classmethod
    def build(cls, composition: Composition, model: Path | None = None, meta: bool = False,
              backend_options: dict[str, Any] | None = None, cache: Any = None) -> Pipeline:
        """Instantiate every slot (random init, weights from `model`, or shapes only on the meta device) and
        bind the recipe's backend (not on the meta device, where nothing runs)."""
        recipe = composition.recipe
        ctx = BuildContext(size=recipe.size, device=recipe.device, dtype=recipe.dtype, weights=model, meta=meta,
                           seed=recipe.seed, variant=recipe.variant)
        built: dict[tuple[str, str], Any] = {}
        for slot in ("encoder", "decoder", "denoiser"):
            spec = composition.specs[slot]
            key = (spec.family, spec.name)
            if key not in built:
                built[key] = spec.load_factory()(ctx, spec.make_config(**composition.component_options(slot)))
        specs = composition.specs
        pipe = cls(composition, built[(specs["encoder"].family, specs["encoder"].name)],
                   built[(specs["decoder"].family, specs["decoder"].name)],
                   built[(specs["denoiser"].family, specs["denoiser"].name)],
                   device=ctx.torch_device, dtype=ctx.torch_dtype)
        check_latent_channels(composition, pipe.encoder, pipe.decoder, pipe.denoiser)
        if not meta:
            from movie_core.backends import bind

            options = composition.component_options("backend") | dict(backend_options or {})
            pipe.runtime = bind(pipe, options, cache)
            from movie_core.clockwork import FrameClock, build_clock

            clock = build_clock(pipe, model)
            if isinstance(clock, FrameClock):
                pipe.frame_clock = clock
            else:
                pipe.step_clock = clock
                if clock is not None and pipe.steps == 1:
                    pipe.clock_notes.append("a step clock at 1 step saves nothing (step 0 always runs the full UNet): "
                                            "use --frame-clock N to reuse work across video frames")
        return pipe

    # --- what the recipe asks for, with the components' own defaults -----------------------

    @property
    def steps(self) -> int:
        """The recipe's steps, else the component spec's default, else the denoiser's own."""
        defaults = self.composition.specs["denoiser"].defaults
        return int(self.recipe.steps or defaults.get("steps") or self.denoiser.default_steps)

    @property
    def notes(self) -> list[str]:
        """Things the user should know about how this pipeline was built."""
        return list(self.denoiser.describe().get("notes", [])) + self.clock_notes

    def backend_info(self) -> dict[str, Any]:
        """Which backend ran the components, and what it reported (providers, artifacts)."""
        info: dict[str, Any] = {"backend": self.recipe.backend, "routed": self.runtime is not None}
        if self.runtime is not None:
            info.update(self.runtime.describe())
        return info

    # --- the edit step ---------------------------------------------------------------------

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if self.runtime is not None:
            return self.runtime.runners["encoder"](images)
        return self.encoder.encode(images)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if self.runtime is not None:
            return self.runtime.runners["decoder"](latents)
        return self.decoder.decode(latents)

    @torch.no_grad()
    def prompt(self, prompt: str | list[str]) -> Prompt:
        """Encode a prompt (or one prompt per image) once, with the empty prompt when guidance takes 3 passes."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        den = self.denoiser
        null = den.encode_prompt([""]) if den.guidance in ("cfg3", "cfg2") else None
        return Prompt(den.encode_prompt(prompts), null)

    def generators(self, n: int, seed: int | None = None) -> list[torch.Generator]:
        """One generator per frame, all seeded alike: every frame gets the same initial and per-step noise."""
        seed = self.recipe.seed if seed is None else seed
        device = self.device if self.device.type != "meta" else torch.device("cpu")
        return [torch.Generator(device=device).manual_seed(seed) for _ in range(n)]

    @torch.no_grad()
    def edit_batch(self, images: torch.Tensor, prompt: str | list[str] | Prompt, *,
                   anchor: AnchorController | None = None, steps: int | None = None, s_T: float | None = None,
                   s_I: float | None = None, seed: int | None = None, latents: torch.Tensor | None = None,
                   generator: Any = None, timings: dict[str, float] | None = None,
                   frame: int | None = None) -> torch.Tensor:
        """Edit a batch of images in [-1, 1] (NCHW): encode, sample, decode; returns images in [-1, 1].

        anchor: cross-frame attention state (record it on the anchor frame, then replay it on the others);
        None runs plain self-attention. Steps, scales and seed default to the recipe (steps: the denoiser's);
        generator replaces the per-frame generators seeded alike.
        timings: if given, receives milliseconds per phase (encoder, denoiser, decoder), device-synchronised.
        frame: the video index of the batch's first frame, for the frame clock (None: not video frames, all run the
        full network; 0 starts a new video)."""
        r = self.recipe
        p = prompt if isinstance(prompt, Prompt) else self.prompt(prompt)
        clock = _Clock(self.device, timings)
        runner = self.step_clock or self.frame_clock
        if self.frame_clock is not None:
            self.frame_clock.frames(frame, images.shape[0])
        on_step = _both(runner.on_step if runner is not None else None,
                        anchor.on_step if anchor is not None else None)
        with self._anchored(anchor), self._clocked():
            lat = clock("encoder", lambda: self.encode(images))
            out = clock("denoiser", lambda: self.denoiser.sample(
                lat, p.text_emb, steps=steps or self.steps,
                s_T=r.text_guidance if s_T is None else s_T, s_I=r.image_guidance if s_I is None else s_I,
                null_emb=p.null_emb, latents=latents,
                generator=generator if generator is not None else self.generators(images.shape[0], seed),
                on_step=on_step))
            return clock("decoder", lambda: self.decode(out))

    @torch.no_grad()
    def round_trip(self, images: torch.Tensor) -> torch.Tensor:
        """decode(encode(x)): what the autoencoders alone make of the images."""
        return self.decode(self.encode(images))

    def edit_images(self, images: torch.Tensor, prompt: str, *, generator: Any = None,
                    latents: torch.Tensor | None = None) -> torch.Tensor:
        """Edit a batch of images with one prompt and no anchor (each image on its own)."""
        return self.edit_batch(images, prompt, latents=latents, generator=generator)

    @contextlib.contextmanager
    def _clocked(self) -> Iterator[None]:
        runner = self.step_clock or self.frame_clock
        if runner is None:
            yield
            return
        with runner.running(self.denoiser):
            yield

    @contextlib.contextmanager
    def _anchored(self, anchor: AnchorController | None) -> Iterator[None]:
        if self.runtime is not None:
            with self.runtime.anchored(anchor):
                yield
            return
        if anchor is None:
            yield
            return
        previous = self.denoiser.set_kv_hook(anchor.kv)
        try:
            yield
        finally:
            self.denoiser.set_kv_hook(previous)

    # --- saving ----------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        """movie.json content: the recipe, the stage and how the denoiser predicts."""
        from movie_core import __version__

        r = self.recipe
        facts = self.denoiser.describe()
        return {
            "format": "movie-model/1",
            "movie_version": __version__,
            "recipe": r.components() | {
                k: getattr(r, k) for k in ("size", "steps", "text_guidance", "image_guidance")
                if getattr(r, k) is not None
            },
            "stage": facts.get("stage", ""),
            "prediction_type": facts.get("prediction_type"),
            "guidance": facts.get("guidance"),
            "default_steps": facts.get("default_steps"),
            "standin_tokenizer": bool(facts.get("standin_tokenizer", False)),
            "provenance": self.composition.describe(),
        }

    def save_pretrained(self, out: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write a loadable model folder (diffusers layout + movie.json); atomic: a temp folder renamed at the end."""
        out = Path(out)
        if not out.parent.is_dir():
            raise MovieError(f"cannot write model: folder {out.parent} does not exist")
        tmp = out.with_name(f".{out.name}.movie-tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            self.denoiser.save_pretrained(tmp)
            for ae in {id(self.encoder): self.encoder, id(self.decoder): self.decoder}.values():
                ae.save_pretrained(tmp)
            write_manifest(tmp, self.manifest() | (extra or {}))
            replace_folder(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out

    def to(self, device: Any = None, dtype: Any = None) -> Pipeline:
        for m in {id(x): x for x in (self.encoder, self.decoder, self.denoiser)}.values():
            m.to(device=device, dtype=dtype)
        if device is not None:
            self.device = torch.device(device)
        if dtype is not None:
            self.dtype = dtype
        return self


def _both(first: Callable | None, second: Callable | None) -> Callable | None:
    """One on_step callback that calls both (either may be None)."""
    if first is None or second is None:
        return first or second

    def call(index: int, timestep: Any) -> None:
        first(index, timestep)
        second(index, timestep)

    return call


class _Clock:
    """Times phases of the edit step when asked to (synchronising the device), else just runs them."""

    def __init__(self, device: torch.device, timings: dict[str, float] | None) -> None:
        self.device, self.timings = device, timings

    def __call__(self, phase: str, fn: Callable[[], Any]) -> Any:
        if self.timings is None:
            return fn()
        self._sync()
        start = time.perf_counter()
        out = fn()
        self._sync()
        self.timings[phase] = self.timings.get(phase, 0.0) + (time.perf_counter() - start) * 1000
        return out

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
