"""Kiwi-Edit behind the pipeline's model interface (``model_api``).

``KiwiEditor`` wraps a loaded :class:`KiwiEdit` (``kiwi_jax.models.kiwi``)
as an ``EditModel``; ``KiwiProcessor`` turns (instruction, frames, reference)
into its MLLM inputs with the torch-free Qwen processing
(``kiwi_jax.models.mllm.processing``, spec 2.1 to 2.3): the mode is
``reference`` with a reference image, ``video`` for more than one source
frame, else ``image`` (a one-frame source with a reference takes the video
path, as the diffusers pipeline does; DiffSynth crashes there, spec 2.1).
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import numpy as np
from flax import nnx

from kiwi_jax.diffusion import step_cache
from kiwi_jax.models.kiwi import checkpoint as kiwi_checkpoint
from kiwi_jax.models.kiwi.model import KiwiConditions, KiwiEdit
from kiwi_jax.models.mllm import bucketing
from kiwi_jax.models.mllm import processing
from kiwi_jax.models.vae import tiling
from kiwi_jax.pipeline import inputs as inputs_lib


class KiwiEditor(nnx.Module):
  """``EditModel`` over a :class:`KiwiEdit` (its state under ``kiwi``)."""

  def __init__(self, kiwi: KiwiEdit):
    self.kiwi = kiwi
    cfg = kiwi.cfg
    self.latent_channels = cfg.vae.z_dim
    self.temporal_factor = cfg.vae.temporal_factor
    self.spatial_factor = cfg.vae.spatial_factor
    self.latent_dtype = cfg.dit.dtype
    self.timestep_dtype = cfg.dit.dtype

  def encode_conditions(self, mllm_inputs, *, mode: str,
                        ref_tokens: int = 0) -> KiwiConditions:
    return self.kiwi.encode_conditions(mllm_inputs, mode,
                                       ref_tokens=ref_tokens)

  def encode_video(self, video):
    return self.kiwi.encode_video(video)

  def decode_latents(self, latents):
    return self.kiwi.decode_latents(latents)

  def vae_runner(self):
    """Host-driven chunked/tiled VAE (the reference's tiled inference)."""
    return tiling.VAERunner(self.kiwi.vae)

  def denoise_step(self, latents, timestep, sigma, conditions, *,
                   source_latents=None, ref_latents=None):
    # One timestep per sample, the context straight to cross-attention
    # (spec 2.5, 3); the mask is all true for a single unpadded example.
    return self.kiwi.denoise_step(
        latents, timestep, conditions.context,
        source_latents=source_latents,
        sigma=sigma if source_latents is not None else None,
        ref_latents=ref_latents)


  def split_denoise_step(self, latents, timestep, sigma, conditions, *,
                         source_latents=None, ref_latents=None):
    """:meth:`denoise_step` cut around the DiT's blocks, for the step
    cache (``kiwi_jax.diffusion.step_cache.SplitStep``)."""
    dit = self.kiwi.dit
    parts = dit.embed(latents, timestep, conditions.context,
                      source_latents=source_latents,
                      sigma=sigma if source_latents is not None else None,
                      ref_latents=ref_latents)
    return step_cache.SplitStep(
        tokens=parts.tokens, indicator=dit.first_block_input(parts),
        blocks=lambda x: dit.run_blocks(parts, x),
        head=lambda x: dit.unembed(parts, x).velocity,
        num_blocks=dit.cfg.num_layers)

class KiwiProcessor:
  """Host-side MLLM inputs of one example for :class:`KiwiEditor`."""

  def __init__(self, tokenizer, cfg):
    """``tokenizer``: a loaded tokenizer or its local directory;
    ``cfg``: the model's ``KiwiEditConfig``."""
    self.cfg = cfg
    self.qwen = processing.QwenProcessor(
        tokenizer, cfg.mllm, processing.ProcessorConfig(
            num_image_queries=cfg.num_image_queries,
            num_video_queries=cfg.num_video_queries,
            num_ref_queries=cfg.num_ref_queries,
            max_pixels_per_frame=cfg.mllm_max_pixels_per_frame,
            max_object_token=cfg.max_ref_tokens))
    tok = self.qwen.tokenizer
    self.pad_token_id = (tok.pad_token_id if tok.pad_token_id is not None
                         else tok.convert_tokens_to_ids("<|endoftext|>"))

  def __call__(self, instruction: str, *, frames: np.ndarray,
               ref_image: np.ndarray | None = None
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    mode = processing.select_mode(len(frames), ref_image is not None)
    if mode not in self.cfg.modes():
      raise inputs_lib.EditInputError(
          f"This Kiwi-Edit checkpoint cannot run {mode} edits (it has the "
          f"modes {self.cfg.modes()}; reference edits need a stage-3 "
          "model).")
    example = self.qwen(instruction, frames=frames, ref_image=ref_image,
                        mode=mode)
    # Padded to shape buckets (tokens at the end, masked; patches in their
    # own attention segment), so edits of similar size share one program.
    batch = bucketing.collate([example], self.cfg.mllm.vision,
                              pad_token_id=self.pad_token_id)
    arrays = bucketing.model_inputs(batch)
    arrays["attention_mask"] = arrays.pop("segment_ids")
    start, end = (int(v) for v in example["ref_span"])
    options = {"mode": mode}
    if mode == "reference":
      options["ref_tokens"] = end - start
    return arrays, options


def is_kiwi_dir(directory) -> bool:
  path = pathlib.Path(os.fspath(directory))
  return (path / kiwi_checkpoint.CONFIG_FILE).is_file()


def load(directory, *, mesh=None) -> tuple[KiwiEditor, KiwiProcessor]:
  """A converted Kiwi-Edit directory -> (model, processor), restored
  straight into the mesh's shardings."""
  model = kiwi_checkpoint.load(directory, mesh=mesh)
  processor = KiwiProcessor(
      str(kiwi_checkpoint.processor_dir(directory)), model.cfg)
  return KiwiEditor(model), processor
