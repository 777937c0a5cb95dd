"""Built components of a composed recipe: encoder, decoder, denoiser, backend; save and load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from movie_core.components import BuildContext
from movie_core.composer import Composition
from movie_core.errors import MovieError
from movie_core.weights import replace_folder, write_manifest


class Pipeline:
    """The torch modules of one recipe, with provenance."""

    def __init__(self, composition: Composition, encoder, decoder, denoiser, backend, model: Path | None):
        self.composition = composition
        self.recipe = composition.recipe
        self.encoder = encoder
        self.decoder = decoder
        self.denoiser = denoiser
        self.backend = backend
        self.model = model

    @classmethod
    def build(cls, composition: Composition, model: Path | None = None, meta: bool = False) -> "Pipeline":
        """Instantiate every slot: random init, weights from `model`, or shapes only on the meta device."""
        recipe = composition.recipe
        ctx = BuildContext(size=recipe.size, device=recipe.device, dtype=recipe.dtype, weights=model, meta=meta, seed=recipe.seed)
        specs = composition.specs
        built: dict[str, Any] = {}
        for slot in ("encoder", "decoder", "denoiser"):
            spec = specs[slot]
            key = (spec.family, spec.name)
            if key not in built:
                # the recipe's sampler goes to the denoiser's config (a denoiser without that option says so)
                values = {"scheduler": recipe.scheduler} if slot == "denoiser" and recipe.scheduler else {}
                built[key] = spec.load_factory()(ctx, spec.make_config(**values))
        backend = specs["backend"].load_factory()()
        return cls(
            composition,
            encoder=built[(specs["encoder"].family, specs["encoder"].name)],
            decoder=built[(specs["decoder"].family, specs["decoder"].name)],
            denoiser=built[(specs["denoiser"].family, specs["denoiser"].name)],
            backend=backend,
            model=model,
        )

    @property
    def notes(self) -> list[str]:
        """Things the user should know about how this pipeline was built."""
        out = []
        if getattr(self.denoiser, "standin_tokenizer", False):
            out.append(
                "random init at full size: a stand-in byte-level tokenizer with CLIP's vocabulary size (49408) "
                "and length (77) replaces CLIP's BPE vocabulary (not available offline); prompts are not CLIP tokens"
            )
        return out

    def manifest(self) -> dict[str, Any]:
        """movie.json content: the recipe, the stage and how the denoiser predicts."""
        from movie_core import __version__

        den = self.denoiser
        return {
            "format": "movie-model/1",
            "movie_version": __version__,
            "recipe": self.recipe.components() | {
                k: getattr(self.recipe, k) for k in ("size", "steps", "text_guidance", "image_guidance")
                if getattr(self.recipe, k) is not None
            },
            "stage": den.stage,
            "prediction_type": den.prediction_type,
            "guidance": den.guidance,
            "default_steps": den.default_steps,
            "standin_tokenizer": bool(getattr(den, "standin_tokenizer", False)),
            "provenance": self.composition.describe(),
        }

    def save_pretrained(self, out: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write a loadable model folder (diffusers layout + movie.json); atomic: a temp folder renamed at the end."""
        out = Path(out)
        if not out.parent.is_dir():
            raise MovieError(f"cannot write model: folder {out.parent} does not exist")
        tmp = out.with_name(f".{out.name}.movie-tmp")
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            self.denoiser.save_pretrained(tmp)
            for ae in {id(self.encoder): self.encoder, id(self.decoder): self.decoder}.values():
                ae.save_pretrained(tmp)
            write_manifest(tmp, self.manifest() | (extra or {}))
            replace_folder(tmp, out)
        except BaseException:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out

    def to(self, device=None, dtype=None) -> "Pipeline":
        for m in {id(x): x for x in (self.encoder, self.decoder, self.denoiser)}.values():
            m.to(device=device, dtype=dtype)
        return self

    @torch.no_grad()
    def edit_images(self, images: torch.Tensor, prompt: str, *, generator: torch.Generator | None = None,
                    latents: torch.Tensor | None = None) -> torch.Tensor:
        """Edit a batch of images in [-1, 1] (NCHW) with one prompt; returns images in [-1, 1]."""
        r = self.recipe
        image_latents = self.encoder.encode(images)
        text_emb = self.denoiser.encode_prompt([prompt])
        out = self.denoiser.sample(
            image_latents, text_emb, steps=r.steps, s_T=r.text_guidance, s_I=r.image_guidance,
            generator=generator, latents=latents,
        )
        return self.decoder.decode(out)
