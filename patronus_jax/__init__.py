"""patronus_jax: Patronus and B-cos interpretable diffusion in JAX/Flax."""

__version__ = '0.1.0'
