"""ddpm: Denoising Diffusion Probabilistic Models (Ho, Jain & Abbeel 2020), train, sample and evaluate."""
__version__ = "0.1.0"
