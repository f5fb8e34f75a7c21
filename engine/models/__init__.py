"""Model definitions: the Wan DiT, the VAE wrapper, text encoders, checkpoint formats."""
