"""A tiny Qwen-style tokenizer built locally (no hub access).

Byte-level BPE trained on a toy corpus with Qwen2.5-VL's special tokens in
Qwen's order and a Qwen chat template, saved with ``save_pretrained`` so that
``AutoTokenizer.from_pretrained(dir)`` loads it exactly as it would load the
real ``Qwen/Qwen2.5-VL-3B-Instruct`` tokenizer files.
"""

from __future__ import annotations

import os
import pathlib

# Qwen2.5-VL's added tokens, in id order (151643 ... 151656 in the real
# vocabulary). Kiwi uses <|object_ref_start|> as the learnable-query
# placeholder.
QWEN_SPECIAL_TOKENS = (
  "<|endoftext|>",
  "<|im_start|>",
  "<|im_end|>",
  "<|object_ref_start|>",
  "<|object_ref_end|>",
  "<|box_start|>",
  "<|box_end|>",
  "<|quad_start|>",
  "<|quad_end|>",
  "<|vision_start|>",
  "<|vision_end|>",
  "<|vision_pad|>",
  "<|image_pad|>",
  "<|video_pad|>",
)

# The Qwen2-VL chat template, reduced to what Kiwi renders: system and user
# turns whose content is a list of text / image / video items (no
# separators between items), optional generation prompt.
QWEN_CHAT_TEMPLATE = (
  "{% for message in messages %}"
  "<|im_start|>{{ message['role'] }}\n"
  "{% if message['content'] is string %}{{ message['content'] }}"
  "{% else %}{% for item in message['content'] %}"
  "{% if item['type'] == 'image' or 'image' in item %}"
  "<|vision_start|><|image_pad|><|vision_end|>"
  "{% elif item['type'] == 'video' or 'video' in item %}"
  "<|vision_start|><|video_pad|><|vision_end|>"
  "{% elif 'text' in item %}{{ item['text'] }}{% endif %}"
  "{% endfor %}{% endif %}<|im_end|>\n"
  "{% endfor %}"
  "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = (
  "You will be given an image and instruction. Please describe the content "
  "of the image in detail based on instruction in your own words.",
  "Change the red ball to blue. Remove the square. Add a yellow star.",
  "Replace the background with a brick wall. Use the reference input from "
  "last frame.",
  "system user assistant the a of and to in make turn it into",
  "0123456789 .,!?;:'\"()[]{}<>-_=+*/\\|@#$%^&~`",
)


def build_tiny_qwen_tokenizer(
  directory: str | os.PathLike,
  vocab_size: int = 320,
  corpus: tuple[str, ...] = (),
) -> pathlib.Path:
  """Trains and saves the tiny tokenizer into ``directory``.

  Args:
    directory: where to save it.
    vocab_size: BPE vocabulary size (special tokens included).
    corpus: extra training text, e.g. the demo's instruction vocabulary,
      so that its words become single tokens; none gives the default
      tokenizer exactly.

  Returns:
    The directory, loadable with ``transformers.AutoTokenizer``.
  """
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    special_tokens=list(QWEN_SPECIAL_TOKENS),
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tok.train_from_iterator((_CORPUS + tuple(corpus)) * 4, trainer=trainer)
  fast = PreTrainedTokenizerFast(
    tokenizer_object=tok,
    eos_token="<|im_end|>",
    pad_token="<|endoftext|>",
    additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
  )
  fast.chat_template = QWEN_CHAT_TEMPLATE
  path = pathlib.Path(directory)
  path.mkdir(parents=True, exist_ok=True)
  fast.save_pretrained(str(path))
  return path


def special_token_ids(tokenizer) -> dict[str, int]:
  """Ids of the special tokens Kiwi needs, read from a loaded tokenizer."""
  names = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
    "query_token_id": "<|object_ref_start|>",
    "im_end_token_id": "<|im_end|>",
    "pad_token_id": "<|endoftext|>",
  }
  return {k: tokenizer.convert_tokens_to_ids(v) for k, v in names.items()}
