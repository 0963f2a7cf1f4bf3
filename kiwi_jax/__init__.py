"""kiwi_jax: Kiwi-Edit (instruction- and reference-guided video editing) in
JAX/Flax."""

__version__ = "0.1.0"
