"""Built-in autoencoders: sd-vae and taesd share SD 1.x's scaled latent space, so hybrids work; md-vae
(MobileDiffusion, 8 latent channels) has its own, md8."""
