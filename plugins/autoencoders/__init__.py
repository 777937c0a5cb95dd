"""Built-in autoencoders: sd-vae and taesd share SD 1.x's scaled latent space, so hybrids work."""
