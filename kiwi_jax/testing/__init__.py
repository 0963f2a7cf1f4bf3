"""Public test helpers: tiny local tokenizer, fake inputs, tiny configs."""

from kiwi_jax.testing.tokenizer import (QWEN_SPECIAL_TOKENS,
                                        build_tiny_qwen_tokenizer,
                                        special_token_ids)

__all__ = ["QWEN_SPECIAL_TOKENS", "build_tiny_qwen_tokenizer",
           "special_token_ids"]
