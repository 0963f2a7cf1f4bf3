"""Entry points only; the converters live in ``kiwi_jax.converters``."""
