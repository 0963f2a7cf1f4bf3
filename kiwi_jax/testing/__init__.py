"""Public test helpers: tiny local tokenizer, tiny configs of every model,
fake batches, tiny Kiwi-Edit checkpoints (``kiwi``), toy models for the
trainer and sharding (``toy``, ``toy_flow``)."""

from kiwi_jax.testing.tokenizer import (
  QWEN_SPECIAL_TOKENS,
  build_tiny_qwen_tokenizer,
  special_token_ids,
)

_KIWI = (
  "fake_kiwi_batch",
  "perturbed_state",
  "save_tiny_kiwi",
  "tiny_configs",
  "tiny_kiwi_config",
)


def __getattr__(name):
  # Lazy: the Kiwi helpers import the models (the tokenizer needs none).
  if name in _KIWI:
    from kiwi_jax.testing import kiwi  # pylint: disable=g-import-not-at-top

    return getattr(kiwi, name)
  raise AttributeError(f"module 'kiwi_jax.testing' has no attribute {name!r}")


__all__ = [
  "QWEN_SPECIAL_TOKENS",
  "build_tiny_qwen_tokenizer",
  "special_token_ids",
  *_KIWI,
]
