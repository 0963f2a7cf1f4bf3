"""Which Kiwi-Edit parameters train in each curriculum stage (reference §4.2).

The reference selects trainables by module name (``pipe.freeze_except``)
and then lets peft mark only the LoRA factors trainable inside Qwen2.5-VL's
language model. Here the same sets are regexes over ``/``-joined parameter
paths of :class:`kiwi_jax.models.kiwi.KiwiEdit` (``train_state`` semantics:
``re.search``; a regex matching nothing is an error, so a typo fails).

=====  ======================================================  ============
stage  5B (``run_wan2.2_ti2v_5b_*``)                           14B
=====  ======================================================  ============
1      image queries, connector, MLLM LoRA                     same
2      + video queries, the whole DiT (incl. vae_condition)    + video
                                                               queries,
                                                               vae_condition,
                                                               DiT LoRA
3      + ref queries, ref_connector, ref_vae_condition         -
=====  ======================================================  ============

The DiT's ``text_embedding`` is never used by Kiwi (the connector feeds
cross-attention directly, quirk 2), so it never trains: the reference's
optimiser holds it but its gradient is zero; AdamW's decoupled decay would
still shrink it, which changes nothing downstream.
"""

from __future__ import annotations

# Qwen2.5-VL LoRA factors (``nnx.LoRAParam`` ``lora_a``/``lora_b`` inside
# the language model, attention and MLP; the vision tower and embeddings
# stay frozen).
MLLM_LORA = r"^mllm/language_model/.*/lora_[ab]$"
# The DiT blocks' LoRA factors (14B stage 2; the base DiT stays frozen).
DIT_LORA = r"^dit/blocks/.*/lora_[ab]$"
IMAGE_QUERIES = r"^image_queries/"
VIDEO_QUERIES = r"^video_queries/"
REF_QUERIES = r"^ref_queries/"
CONNECTOR = r"^connector/"
REF_CONNECTOR = r"^ref_connector/"
DIT = r"^dit/"
VAE_CONDITION = r"^dit/vae_condition/"
REF_VAE_CONDITION = r"^dit/ref_vae_condition/"
# Never trained: the unused text embedding, and the reference-image
# embedder before stage 3 (it is inside ``dit/``).
DIT_TEXT_EMBEDDING = r"^dit/text_embedding/"

VARIANTS = ("5b", "14b")


def trainable_sets(
  stage: int, variant: str = "5b", *, dit_lora: bool = True
) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """``(trainable, frozen)`` regexes of ``stage`` (1, 2 or 3).

  Args:
    stage: the curriculum stage.
    variant: ``"5b"`` or ``"14b"`` (trainable sets differ, reference §4.2).
    dit_lora: whether the model has DiT LoRA factors (``dit.lora_rank`` >
      0); the 14B stage 2 trains them when it does.

  Raises:
    ValueError: an unknown stage/variant, or stage 3 of the 14B variant (the
      reference has no 14B stage-3 script).
  """
  if variant not in VARIANTS:
    raise ValueError(f"Unknown variant {variant!r}; choose one of {VARIANTS}.")
  if stage not in (1, 2, 3):
    raise ValueError(f"stage must be 1, 2 or 3, got {stage}.")
  trainable = [IMAGE_QUERIES, CONNECTOR, MLLM_LORA]
  frozen = [DIT_TEXT_EMBEDDING]
  if variant == "14b":
    if stage == 3:
      raise ValueError(
        "The reference has no 14B stage-3 script (spec "
        "4.2); train stage 3 with variant=5b."
      )
    if stage == 2:
      # The DiT itself trains through LoRA r128 (``dit_lora_rank``); its
      # base weights stay frozen.
      trainable += [VIDEO_QUERIES, VAE_CONDITION]
      if dit_lora:
        trainable.append(DIT_LORA)
    return tuple(trainable), tuple(frozen)
  if stage >= 2:
    trainable += [VIDEO_QUERIES, DIT]
    if stage == 2:
      frozen.append(REF_VAE_CONDITION)
  if stage == 3:
    trainable += [REF_QUERIES, REF_CONNECTOR]
  return tuple(trainable), tuple(frozen)


# The one stage -> edit modes table (reference §4.4): what each stage trains on.
STAGE_MODES = {
  1: ("image",),
  2: ("image", "video"),
  3: ("image", "video", "reference"),
}
# The record directory (data source name) of each mode's examples
# (``kiwi_jax.data.build_records``: ``image/``, ``video/``, ``ref/``).
MODE_SOURCES = {"image": "image", "video": "video", "reference": "ref"}


def stage_modes(stage: int) -> tuple[str, ...]:
  """The edit modes (data types) a stage trains on (reference §4.4)."""
  if stage not in STAGE_MODES:
    raise ValueError(f"stage must be 1, 2 or 3, got {stage}.")
  return STAGE_MODES[stage]


def stage_sources(stage: int) -> tuple[str, ...]:
  """The data sources (record directory names) a stage mixes."""
  return tuple(MODE_SOURCES[mode] for mode in stage_modes(stage))
