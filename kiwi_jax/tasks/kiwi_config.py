"""The Kiwi tasks' config blocks, declared once: ``kiwi`` and ``demo``.

Config files build these dataclasses and put them in the run config
(``run_config.base_config(kiwi=KiwiConfig(...))``), so every key the task
reads is declared there with its default; the task parses the block back
once (:meth:`KiwiConfig.from_config`) and reads attributes. ``None`` for a
key means its default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from kiwi_jax.models.mllm.config import ATTENTION_LORA_TARGETS
from kiwi_jax.train_lib import run_config


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataSource:
  """One source of the batch-by-batch mix (reference §4.4).

  Attributes:
    path: its ArrayRecord directory.
    name: its name in metrics and samples (``image``, ``video``, ``ref``).
    weight: its share of the batches.
    max_frames: frames per example (1 for images).
  """

  path: str
  name: str
  weight: float = 1.0
  max_frames: int = 1


@dataclasses.dataclass(frozen=True)
class KiwiDataConfig:
  """``config.kiwi.data``.

  Attributes:
    sources: the mixed sources.
    fixed_size: ``(height, width)`` every example is resized to (None: by
      ``max_pixels`` and ``size_multiple``).
    max_pixels: the largest frame area.
    size_multiple: frame sides are multiples of this.
    batch_size: global examples per batch.
    seed: the mix and shuffle seed.
    num_workers: Grain worker processes (0: in the main process).
  """

  sources: Sequence[DataSource] = ()
  fixed_size: tuple[int, int] | None = None
  max_pixels: int = 1_048_576
  size_multiple: int = 32
  batch_size: int = 1
  seed: int = 0
  num_workers: int = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class KiwiConfig:
  """``config.kiwi``: what ``kiwi_task.KiwiTask`` reads.

  Attributes:
    variant: ``KiwiEditConfig`` variant ("kiwi-5b", "kiwi-14b", "tiny").
    variant_family: "5b" or "14b" (the stages' trainable sets).
    stage: 1, 2 or 3.
    mllm_lora_rank: Qwen2.5-VL LoRA rank (64 for 5B, 256 for 14B).
    mllm_lora_targets: Qwen projections with LoRA (q/k/v/o, the 5B
      scripts; the 14B scripts add gate/up/down_proj; empty: the model's
      default).
    dit_lora_rank: DiT LoRA rank on the blocks' attention q/k/v/o and FFN
      (128 in the 14B stage 2, whose base DiT stays frozen; 0: none).
    model: ``KiwiEditConfig`` field overrides (dit/mllm/vae: dicts).
    codec: "vae" (the model's frozen Wan VAE) or "pixel_unshuffle" (demo).
    loss_weighting: "gaussian" (the reference) or "uniform".
    unshuffle_factor: the stand-in codec's factor.
    tokenizer_dir: local Qwen tokenizer directory.
    seq_len, num_patches: fixed MLLM token / patch-slot counts per example
      (0: the smallest ``bucketing`` ladder entry that fits).
    ref_tokens: reference rows in the context (static); references with
      fewer MLLM tokens are padded and masked out of the cross-attention.
    sample_steps: Euler steps of the sample edits (``sample_every``).
    sample_count: sample edits per data source.
    train_also: regexes of parameters trained on top of the stage's sets
      (``curriculum.trainable_sets``), e.g. ``"^mllm/language_model/"`` to
      pretrain the whole tiny Qwen text side (``tasks.demo_base``).
    data: the data block.
  """

  variant: str
  variant_family: str = "5b"
  stage: int = 1
  mllm_lora_rank: int = 0
  mllm_lora_targets: tuple[str, ...] = ATTENTION_LORA_TARGETS
  dit_lora_rank: int = 0
  model: dict[str, Any] = dataclasses.field(default_factory=dict)
  codec: str = "vae"
  loss_weighting: str = "gaussian"
  unshuffle_factor: int = 2
  tokenizer_dir: str = ""
  seq_len: int = 0
  num_patches: int = 0
  ref_tokens: int = 768
  sample_steps: int = 10
  sample_count: int = 1
  train_also: tuple[str, ...] = ()
  data: KiwiDataConfig = KiwiDataConfig()

  @classmethod
  def from_config(cls, kiwi: Any) -> KiwiConfig:
    """Parses a ``config.kiwi`` block (or returns a ``KiwiConfig``)."""
    if isinstance(kiwi, cls):
      return kiwi
    return run_config.from_mapping(
      cls, kiwi, where="kiwi.", none_is_default=True
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoConfig:
  """``config.demo``: what ``kiwi_jax.tasks.demo`` reads.

  Attributes:
    num_videos, num_images: RefVIE-mini training clips and images.
    num_heldout: held-out clips edited at the end.
    height, width, num_frames: the clips' size.
    data_seed, heldout_seed: generator seeds of the two sets.
    stage_steps: steps of stages 1, 2, 3.
    learning_rates: learning rate of each stage.
    lr_decay: "none" or "cosine" over each stage (``optimizer.decay``).
    decay_to: the cosine's final fraction of the learning rate.
    sample_steps: Euler steps of the held-out edits.
    denoising_strength: below 1 the edits start from the noised source.
    scene: RefVIE-mini's scene style, "textured" or "simple"
      (``refvie_mini.MiniConfig.scene``).
    max_objects: objects per scene besides an added one
      (``refvie_mini.MiniConfig.max_objects``).
    tokenizer_words: train the tiny tokenizer on RefVIE-mini's instruction
      vocabulary too, so each colour, shape and side is one token (needs
      the MLLM's ``vocab_size`` to hold ``tokenizer_vocab``).
    tokenizer_vocab: the tiny tokenizer's vocabulary size.
    base: a ``.safetensors`` weights file stage 1 starts from (its
      ``model_init``): the pretrained tiny base of ``tasks.demo_base``;
      empty: stage 1 starts from scratch.
    base_steps, base_learning_rate, base_batch_size: the base run's
      training (``python -m kiwi_jax.tasks.demo_base``).
    base_videos, base_images: its caption clips and images.
    base_seed: its generator, data and initialisation seed.
  """

  num_videos: int
  num_images: int
  num_heldout: int
  height: int = 32
  width: int = 32
  num_frames: int = 5
  data_seed: int = 0
  heldout_seed: int = 1
  stage_steps: Sequence[int]
  learning_rates: Sequence[float]
  lr_decay: str = "none"
  decay_to: float = 0.0
  sample_steps: int = 1
  denoising_strength: float = 1.0
  scene: str = "textured"
  max_objects: int = 2
  tokenizer_words: bool = False
  tokenizer_vocab: int = 320
  base: str = ""
  base_steps: int = 0
  base_learning_rate: float = 1e-3
  base_batch_size: int = 4
  base_videos: int = 0
  base_images: int = 0
  base_seed: int = 2

  @classmethod
  def from_config(cls, demo: Any) -> DemoConfig:
    """Parses a ``config.demo`` block (or returns a ``DemoConfig``)."""
    if isinstance(demo, cls):
      return demo
    return run_config.from_mapping(
      cls, demo, where="demo.", none_is_default=True
    )
