"""Built-in distillers: the training stages of the MoViE recipe (paper Sec. 3.3, 3.4, Appendix B).

pix2pix-finetune  InstructPix2Pix training with conditioning dropout (also after the attention removal)
mmg               multimodal guidance distillation (Algorithm 1): 3-pass CFG -> one pass with (s_I, s_T) embedded
vpred             epsilon -> v-prediction conversion of the guidance-distilled model (Appendix B, Stage-4 prep)
adversarial       adversarial step distillation (Algorithm 2): 5-step LCM teacher -> 1-step student, GAN + MSE
clockwork         Clockwork adaptor (frozen teacher, adaptor only): step clock or frame clock, into the model folder
ufogen            UFOGen one-step diffusion-GAN fine-tuning (MobileDiffusion Sec. 4): any built-in denoiser,
                  text-to-image or editing; reconstruction term diffusion / distill / ema, optional LoRA (peft)
t2i-train         text-to-image training on captioned images (`movie data captions`): diffusion loss, caption
                  dropout; teacher-less (starts from a text-to-image folder, or a random UNet with a folder's text
                  tower and autoencoders)

Each public module registers a spec and its options (attrs, no torch); the Distiller subclasses live in
the private `_*.py` modules that the spec's factory string imports when a run starts.
"""

from __future__ import annotations


def distiller_spec(name: str, module: str, cls: str, summary: str, config: type):
    """The spec a built-in distiller registers: factory `movie_plugins.distillers.<module>:<cls>`."""
    from movie_core.registry import ComponentSpec

    return ComponentSpec(
        family="distiller",
        name=name,
        summary=summary,
        factory=f"movie_plugins.distillers.{module}:{cls}",
        config=config,
        extra={"latent_space": "sd1"},
    )
