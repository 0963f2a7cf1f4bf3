"""Key-name tables between the Kiwi-Edit checkpoint layouts.

Every Kiwi source is read into one *canonical* namespace (the names of the
DiffSynth pipeline modules, reference §7):

=========================  ===================================================
canonical prefix           content
=========================  ===================================================
``dit.``                   Wan DiT, original/DiffSynth names (``blocks.0.
                           self_attn.q.weight``, ``head.head.weight``, ...)
``vae.``                   Wan VAE, ``Wan2.2_VAE.pth`` names (``encoder.*``,
                           ``decoder.*``, ``conv1.*``, ``conv2.*``)
``qwen.``                  Qwen2.5-VL, hub names (``visual.*``, ``model.*``)
``mllm.``                  ``image_queries``, ``video_queries``,
                           ``ref_queries``, ``connector.{0,2}.*``,
                           ``ref_connector.{0,2}.*``
``vae_condition.``         ``patch_embedding.{weight,bias}``
``ref_vae_condition.``     same
=========================  ===================================================

LoRA factors that are kept (not merged) sit next to their target as
``<target>.lora_A.weight`` / ``<target>.lora_B.weight`` (no ``.default.``).
"""

from __future__ import annotations

import re

# DiffSynth/original Wan DiT -> diffusers WanTransformer3DModel
# (``BLOCK_KEY_MAP`` / ``TOP_LEVEL_KEY_MAP`` of
# ``utils/convert_diffusers/convert_weights.py``; reference §7.3).
_BLOCK_RENAMES = (
  ("self_attn.q.", "attn1.to_q."),
  ("self_attn.k.", "attn1.to_k."),
  ("self_attn.v.", "attn1.to_v."),
  ("self_attn.o.", "attn1.to_out.0."),
  ("self_attn.norm_q.", "attn1.norm_q."),
  ("self_attn.norm_k.", "attn1.norm_k."),
  ("cross_attn.q.", "attn2.to_q."),
  ("cross_attn.k.", "attn2.to_k."),
  ("cross_attn.v.", "attn2.to_v."),
  ("cross_attn.o.", "attn2.to_out.0."),
  ("cross_attn.norm_q.", "attn2.norm_q."),
  ("cross_attn.norm_k.", "attn2.norm_k."),
  ("cross_attn.k_img.", "attn2.add_k_proj."),
  ("cross_attn.v_img.", "attn2.add_v_proj."),
  ("cross_attn.norm_k_img.", "attn2.norm_added_k."),
  ("ffn.0.", "ffn.net.0.proj."),
  ("ffn.2.", "ffn.net.2."),
  ("norm3.", "norm2."),
)
_BLOCK_EXACT = (("modulation", "scale_shift_table"),)
_TOP_RENAMES = (
  ("text_embedding.0.", "condition_embedder.text_embedder.linear_1."),
  ("text_embedding.2.", "condition_embedder.text_embedder.linear_2."),
  ("time_embedding.0.", "condition_embedder.time_embedder.linear_1."),
  ("time_embedding.2.", "condition_embedder.time_embedder.linear_2."),
  ("time_projection.1.", "condition_embedder.time_proj."),
  ("img_emb.proj.0.", "condition_embedder.image_embedder.norm1."),
  ("img_emb.proj.1.", "condition_embedder.image_embedder.ff.net.0.proj."),
  ("img_emb.proj.3.", "condition_embedder.image_embedder.ff.net.2."),
  ("img_emb.proj.4.", "condition_embedder.image_embedder.norm2."),
  ("patch_embedding.", "patch_embedding."),
  ("head.head.", "proj_out."),
)
_TOP_EXACT = (("head.modulation", "scale_shift_table"),)
_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")

# Top-level module names of the original Wan DiT (a key starting with one of
# these is a DiT key even without the ``dit.`` prefix).
DIT_TOP_LEVEL = (
  "blocks.",
  "patch_embedding.",
  "text_embedding.",
  "time_embedding.",
  "time_projection.",
  "img_emb.",
  "head.",
)
DIFFUSERS_DIT_MARKERS = ("condition_embedder.", "proj_out.", "attn1.")


def _rename(key: str, pairs, exact, reverse: bool) -> str | None:
  for a, b in exact:
    src, dst = (b, a) if reverse else (a, b)
    if key == src:
      return dst
  for a, b in pairs:
    src, dst = (b, a) if reverse else (a, b)
    if key.startswith(src):
      return dst + key[len(src) :]
  return None


def dit_to_diffusers(key: str) -> str | None:
  """A DiffSynth DiT key in diffusers naming (None if it has no twin)."""
  m = _BLOCK.fullmatch(key)
  if m:
    rest = _rename(m.group(2), _BLOCK_RENAMES, _BLOCK_EXACT, False)
    return None if rest is None else f"blocks.{m.group(1)}.{rest}"
  return _rename(key, _TOP_RENAMES, _TOP_EXACT, False)


def dit_from_diffusers(key: str) -> str | None:
  """A diffusers ``WanTransformer3DModel`` key in DiffSynth naming."""
  m = _BLOCK.fullmatch(key)
  if m:
    rest = _rename(m.group(2), _BLOCK_RENAMES, _BLOCK_EXACT, True)
    return None if rest is None else f"blocks.{m.group(1)}.{rest}"
  return _rename(key, _TOP_RENAMES, _TOP_EXACT, True)


def is_diffusers_dit(keys) -> bool:
  return any(
    k.startswith(DIFFUSERS_DIT_MARKERS) or ".attn1." in k for k in keys
  )


def qwen_hub_name(key: str) -> str:
  """Qwen2.5-VL key in the hub layout (``visual.*``, ``model.*``).

  transformers >= 4.52 names modules ``model.visual.*`` and
  ``model.language_model.*`` at run time (and PEFT/DiffSynth keys carry
  those names under ``mllm.model.``); the hub files use the older names.
  """
  if key.startswith("model.visual."):
    return key[len("model.") :]
  if key.startswith("model.language_model."):
    return "model." + key[len("model.language_model.") :]
  return key


def qwen_runtime_name(key: str) -> str:
  """Inverse of :func:`qwen_hub_name` (``visual.x`` -> ``model.visual.x``)."""
  if key.startswith("visual."):
    return "model." + key
  if key.startswith("model."):
    return "model.language_model." + key[len("model.") :]
  return key


# The Kiwi-specific MLLM parameters: DiffSynth key -> canonical key
# (``extract_mllm_weights`` in ``convert_weights.py``; the ``connetor`` typo
# and the ``.q`` suffix of ``QueryVector`` are DiffSynth's).
def diffsynth_mllm_name(key: str) -> str | None:
  """``mllm.image_queries.q`` -> ``mllm.image_queries``, typo fixed."""
  m = re.fullmatch(r"mllm\.(image|video|ref)_queries\.q", key)
  if m:
    return f"mllm.{m.group(1)}_queries"
  m = re.fullmatch(
    r"mllm\.(connetor|connector|ref_connector)\.([02])\."
    r"(weight|bias)",
    key,
  )
  if m:
    name = "ref_connector" if m.group(1) == "ref_connector" else "connector"
    return f"mllm.{name}.{m.group(2)}.{m.group(3)}"
  return None


def diffusers_mllm_name(key: str) -> str | None:
  """``image_queries`` / ``connector.0.weight`` (diffusers) -> canonical."""
  if re.fullmatch(r"(image|video|ref)_queries", key):
    return f"mllm.{key}"
  if re.fullmatch(r"(connector|ref_connector)\.[02]\.(weight|bias)", key):
    return f"mllm.{key}"
  return None


# A PEFT LoRA factor: ``<target>.lora_A.default.weight`` (or without
# ``.default``).
LORA_KEY = re.compile(r"(?P<target>.+)\.lora_(?P<ab>[AB])(\.default)?\.weight")
