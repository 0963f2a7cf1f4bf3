"""The Kiwi-Edit ``Task`` for ``train_lib.trainer.train_and_evaluate``.

One micro-step (``WanVideoPipeline.training_loss``, reference §4.1 and 4.5):

  MLLM inputs --KiwiEdit.encode_conditions(mode)--> context
  source / target / reference pixels --frozen codec, no gradient--> latents
  t ~ grid (bf16 lookup), z_t = (1 - sigma) z_0 + sigma eps
  v = denoise_step(z_t, t, context, sigma * source, ref)   (stage >= 2)
  loss = w(t) * mean((v - (eps - z_0))^2)

The mode of a batch follows from its structure, which the mixed pipeline
keeps one kind per batch (reference §4.4): a ``ref_image`` field means
"reference", one frame means "image", otherwise "video". Each mode is its
own compiled program. Stage 1 never injects the source (the scripts pass no
``source_input``); later stages inject it for every mode.

Config: ``config.kiwi``, declared (every key, its default and meaning) in
``kiwi_config.KiwiConfig`` and parsed once in ``KiwiTask.__init__``; the
task also reads the trainer's ``seed`` and ``mesh``
(``run_config.TrainerConfig``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kiwi_jax import flops as flops_lib
from kiwi_jax.data import examples as examples_lib
from kiwi_jax.data import loader as data_pipeline
from kiwi_jax.diffusion import flow_matching, schedules
from kiwi_jax.media import compare, pixels
from kiwi_jax.models.kiwi import checkpoint as kiwi_checkpoint
from kiwi_jax.models.kiwi.config import KiwiEditConfig
from kiwi_jax.models.kiwi.model import KiwiEdit
from kiwi_jax.models.kiwi.processor import KiwiProcessor
from kiwi_jax.pipeline import programs as pipeline_stages
from kiwi_jax.pipeline.edit_pipeline import EditPipeline
from kiwi_jax.tasks import curriculum as stages
from kiwi_jax.tasks.kiwi_config import KiwiConfig
from kiwi_jax.train_lib import checkpointing, run_config
from kiwi_jax.train_lib.train_state import path_name
from kiwi_jax.utils import atomic

logger = logging.getLogger("kiwi_jax")

# kiwi.codec -> KiwiEditConfig.codec
_CODECS = {"vae": "wan_vae", "pixel_unshuffle": "pixel_unshuffle"}


def _replace_nested(obj: Any, changes: dict[str, Any]) -> Any:
  """``dataclasses.replace`` with dict values applied to dataclass fields."""
  direct = {}
  for name, value in changes.items():
    if not hasattr(obj, name):
      raise ValueError(f"{type(obj).__name__} has no field {name!r}.")
    current = getattr(obj, name)
    if isinstance(value, dict) and dataclasses.is_dataclass(current):
      value = _replace_nested(current, value)
    direct[name] = tuple(value) if isinstance(value, list) else value
  return dataclasses.replace(obj, **direct)


def kiwi_model_config(kiwi: Any, compute_dtype: Any = None) -> KiwiEditConfig:
  """The :class:`KiwiEditConfig` a ``config.kiwi`` block describes.

  ``compute_dtype`` (``config.precision.compute_dtype``; None keeps the
  variant's) becomes the compute ``dtype`` of the DiT (and the connectors,
  which follow it), Qwen and the VAE, so the matmuls run in the dtype the
  trainer casts the weights to. The fp32 islands stay fp32 inside the
  modules (norm statistics, softmax, RoPE, the timestep sinusoid and
  modulation, the flow-matching noise and loss). ``kiwi.model`` overrides
  win over it.
  """
  kiwi = KiwiConfig.from_config(kiwi)
  cfg = KiwiEditConfig.from_variant(kiwi.variant)
  if compute_dtype is not None:
    dtype = jnp.dtype(compute_dtype)
    cfg = _replace_nested(
      cfg,
      {
        "dit": {"dtype": dtype},
        "mllm": {"dtype": dtype},
        "vae": {"dtype": dtype},
      },
    )
  cfg = _replace_nested(cfg, dict(kiwi.model))
  text = {"lora_rank": kiwi.mllm_lora_rank}
  if kiwi.mllm_lora_targets:
    text["lora_targets"] = kiwi.mllm_lora_targets
  if kiwi.codec not in _CODECS:
    raise ValueError(
      f"kiwi.codec={kiwi.codec!r}; choose one of {tuple(_CODECS)}."
    )
  return _replace_nested(
    cfg,
    {
      "mllm": {"text": text},
      "dit": {"lora_rank": kiwi.dit_lora_rank},
      "codec": _CODECS[kiwi.codec],
      "unshuffle_factor": kiwi.unshuffle_factor,
    },
  )


def batch_mode(batch: dict[str, Any]) -> str:
  """The edit mode of a one-kind batch (static: from its structure)."""
  if "ref_image" in batch or "ref_latents" in batch:
    return "reference"
  video = batch.get("source_video", batch.get("source_latents"))
  return "image" if video.shape[1] == 1 else "video"


class KiwiTask:
  """Trains :class:`KiwiEdit` at one curriculum stage (a trainer ``Task``).

  Args:
    config: the run config; reads ``config.kiwi`` (module docstring).
  """

  def __init__(self, config: Any):
    self.config = config
    self.run = run_config.TrainerConfig.from_config(config)
    self.kiwi = kiwi = KiwiConfig.from_config(config.kiwi)
    self.stage = kiwi.stage
    self.model_cfg = kiwi_model_config(kiwi, self.run.precision.compute_dtype)
    self.trainable, self.frozen = stages.trainable_sets(
      self.stage,
      kiwi.variant_family,
      dit_lora=bool(self.model_cfg.dit.lora_rank),
    )
    self.trainable += tuple(kiwi.train_also)
    self.ref_tokens = kiwi.ref_tokens
    self.grid = flow_matching.TrainingGrid.from_schedule(
      schedules.get_schedule("diffsynth", self.model_cfg.flow_shift),
      kiwi.loss_weighting,
      timestep_dtype=self.model_cfg.dit.dtype,
    )
    self.sample_batches: dict[str, Any] | None = None
    self._flops_cache: dict[tuple, Any] = {}
    self.tokenizer_dir = kiwi.tokenizer_dir
    # The model's MLLM inputs, for the Grain hook and the sample edits.
    self.processor = KiwiProcessor(
      self.tokenizer_dir,
      self.model_cfg,
      seq_len=kiwi.seq_len,
      num_patches=kiwi.num_patches,
    )
    self.hook = self.processor.example  # the data pipeline's MLLM hook
    self._pipeline: EditPipeline | None = None

  # -- Model.

  def build_model(self, rngs: nnx.Rngs) -> KiwiEdit:
    return KiwiEdit(self.model_cfg, rngs=rngs)

  def write_model_files(self, workdir) -> None:
    """What makes a workdir an ordinary Kiwi-Edit checkpoint beside its
    ``checkpoints/`` (``models.kiwi.checkpoint.load``, ``EditPipeline``,
    ``kiwi-edit``): the model config and the tokenizer files."""
    if "://" in str(workdir):  # remote workdirs: the config.json only
      logger.info(
        "Not writing %s to the remote workdir %s.",
        kiwi_checkpoint.CONFIG_FILE,
        workdir,
      )
      return
    workdir = pathlib.Path(str(workdir))
    atomic.write_text(
      workdir / kiwi_checkpoint.CONFIG_FILE,
      json.dumps(self.model_cfg.to_dict(), indent=2, sort_keys=True) + "\n",
    )
    files = (
      [p for p in pathlib.Path(self.tokenizer_dir).iterdir() if p.is_file()]
      if self.tokenizer_dir
      else []
    )
    if files:
      target = workdir / kiwi_checkpoint.PROCESSOR_DIR
      with atomic.atomic_directory(target, True) as tmp:
        for path in files:
          (tmp / path.name).write_bytes(path.read_bytes())

  def load_weights(self, path: str, split: Any) -> tuple[Any, Any]:
    """``model_init``: the weights of a previous stage's checkpoint.

    LoRA factors the checkpoint lacks start fresh (``lora_b`` zero), as
    the reference loads the previous stage with ``strict=False`` after
    injecting LoRA (reference §4.2): the 14B stage 2 adds the DiT LoRA to a
    stage-1 model. Any other missing parameter is an error.
    """
    return checkpointing.restore_weights(
      path, split, fresh=functools.partial(self.fresh_lora, split)
    )

  def fresh_lora(self, split: Any, names: list[str]) -> dict[str, jax.Array]:
    """``{name: array}``: this run's initial values of the LoRA factors
    among ``names``, in the split's dtypes and shardings (only those leave
    the jitted init; XLA drops the rest of the model's)."""
    names = [n for n in names if n.rsplit("/", 1)[-1] in ("lora_a", "lora_b")]
    if not names:
      return {}
    want = {
      path_name(p): x
      for tree in (split.abstract_params, split.abstract_frozen)
      for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    }
    seed = self.run.seed

    def init():
      state = nnx.to_pure_dict(
        nnx.state(self.build_model(nnx.Rngs(seed)), nnx.LoRAParam)
      )
      flat = {
        path_name(p): x
        for p, x in jax.tree_util.tree_flatten_with_path(state)[0]
      }
      return {n: flat[n].astype(want[n].dtype) for n in names}

    shardings = {n: want[n].sharding for n in names}
    if any(s is None for s in shardings.values()):
      shardings = None
    return jax.jit(init, out_shardings=shardings)()

  def encode(self, model: KiwiEdit, frames: jax.Array) -> jax.Array:
    """uint8[B, T, H, W, 3] -> latents in the DiT's dtype, no gradient."""
    latents = model.encode_video(pixels.to_unit_training(frames))
    return jax.lax.stop_gradient(latents.astype(self.model_cfg.dit.dtype))

  def _latents(self, model, batch, name):
    if f"{name}_latents" in batch:  # the pipeline's latent cache
      return batch[f"{name}_latents"].astype(self.model_cfg.dit.dtype)
    if name == "ref":
      return self.encode(model, batch["ref_image"][:, None])
    return self.encode(model, batch[f"{name}_video"])

  def conditions(self, model: KiwiEdit, batch: dict[str, Any]):
    """``(KiwiConditions, source_latents | None, ref_latents | None)``.

    In reference mode the context holds ``kiwi.ref_tokens`` reference rows
    per example; a reference with fewer tokens is padded and masked out of
    the cross-attention (``KiwiConditions.mask``). With every reference at
    exactly ``ref_tokens`` (the reference's own setting) nothing is masked.
    """
    mode = batch_mode(batch)
    cond = model.encode_conditions(
      KiwiProcessor.model_inputs(batch["mllm"]),
      mode,
      ref_tokens=self.ref_tokens if mode == "reference" else 0,
    )
    # Stage 1 has no source_input (reference §4.2): noise + MLLM context only.
    source = self._latents(model, batch, "source") if self.stage > 1 else None
    ref = self._latents(model, batch, "ref") if mode == "reference" else None
    return cond, source, ref

  def loss_fn(
    self, model: KiwiEdit, batch: dict[str, Any], rng: jax.Array
  ) -> tuple[jax.Array, dict[str, Any]]:
    cond, source, ref = self.conditions(model, batch)
    target = self._latents(model, batch, "target")

    def velocity(noisy, timestep, sigma):
      return model.denoise_step(
        noisy,
        timestep,
        cond.context,
        source_latents=source,
        sigma=sigma if source is not None else None,
        ref_latents=ref,
        context_mask=_mask_or_none(cond, ref),
      )

    loss, aux = flow_matching.flow_matching_loss(
      velocity, target, rng, self.grid
    )
    return loss, {"mse": aux["mse"], "sigma": aux["sigma"]}

  # -- Sample edits, through the editing pipeline's own programs.

  def pipeline(self, model: KiwiEdit) -> EditPipeline:
    """An ``EditPipeline`` over ``model`` (built once; later calls swap
    in the given model's weights, keeping the compiled programs)."""
    if self._pipeline is None:
      self._pipeline = EditPipeline(model, self.processor)
    else:
      self._pipeline.load_weights(model)
    return self._pipeline

  def sample(self, model: KiwiEdit, step: int, writer: Any) -> None:
    """Writes ``source | edit | target`` videos (the trainer calls it every
    ``sample_every`` steps): of ``self.sample_batches`` (``{name: host
    batch of one}``) when a caller set it, else of the first
    ``kiwi.sample_count`` (default 1) examples of every data source, in
    file order, edited by ``EditPipeline`` with ``kiwi.sample_steps``
    (default 10) steps, seed 0."""
    if self.sample_batches is None:
      self.sample_batches = self.default_sample_batches()
    num_steps = self.kiwi.sample_steps
    pipe = self.pipeline(model)
    for name, batch in self.sample_batches.items():
      source, target = (
        self._pixels(model, batch, n) for n in ("source", "target")
      )
      ref = batch.get("ref_image")
      height, width = source.shape[1:3]
      edited = pipe.edit(
        source,
        str(np.asarray(batch["prompt"])[0]),
        None if ref is None else np.asarray(ref)[0],
        steps=num_steps,
        seed=0,
        max_frames=len(source),
        max_pixels=height * width,
        use_source=self.stage > 1,
      ).frames
      writer.write_videos(
        step, {name: compare.side_by_side(source, edited, target)}
      )

  def default_sample_batches(self) -> dict[str, dict[str, Any]]:
    """``{"sample/<source>/<i>": host batch of one}``."""
    count = self.kiwi.sample_count
    batches = {}
    for spec in self.source_specs():
      iterator = data_pipeline.make_iterator(
        [spec],
        self.example_config(1),
        data_pipeline.PipelineConfig(batch_size=1, shuffle=False, num_epochs=1),
        # Every process reads the same examples: the batch is replicated.
        mllm_transform=self.hook,
        shard_index=0,
        shard_count=1,
      )
      for index, host in zip(range(count), iterator):
        batches[f"sample/{spec.name}/{index}"] = host
    return batches

  def _pixels(self, model, batch, name) -> np.ndarray:
    """uint8[T, H, W, 3] of a batch of one (decoded from cached latents)."""
    if f"{name}_video" in batch:
      return np.asarray(batch[f"{name}_video"])[0]
    pipe = self.pipeline(model)
    decoded = pipeline_stages.decode_latents(
      pipe.graphdef, pipe.state, jnp.asarray(batch[f"{name}_latents"])
    )
    return pixels.to_uint8_round(np.asarray(decoded, np.float32)[0])

  # -- Data.

  def example_config(self, max_frames: int) -> examples_lib.ExampleConfig:
    data = self.kiwi.data
    return examples_lib.ExampleConfig(
      max_frames=max_frames,
      max_pixels=data.max_pixels,
      size_multiple=data.size_multiple,
      fixed_size=data.fixed_size or None,
    )

  @property
  def global_batch_size(self) -> int:
    """Examples per step over all processes (``kiwi.data.batch_size``)."""
    return int(self.kiwi.data.batch_size)

  def source_specs(self) -> list[data_pipeline.SourceSpec]:
    return [
      data_pipeline.SourceSpec(
        path=s.path,
        weight=s.weight,
        name=s.name,
        example=self.example_config(s.max_frames),
      )
      for s in self.kiwi.data.sources
    ]

  def train_iterator(self, shard_index: int, shard_count: int):
    data = self.kiwi.data
    cfg = data_pipeline.PipelineConfig(
      batch_size=data.batch_size // shard_count,
      seed=data.seed,
      num_workers=data.num_workers,
    )
    return data_pipeline.make_iterator(
      self.source_specs(),
      self.example_config(1),
      cfg,
      mllm_transform=self.hook,
      shard_index=shard_index,
      shard_count=shard_count,
    )

  def global_batch(self, host_batch: dict[str, Any], mesh) -> dict[str, Any]:
    """Drops the text fields, checks the reference token count, and makes
    global arrays."""
    numeric = _numeric(host_batch)
    self._check_reference_tokens(host_batch)
    return data_pipeline.to_global_batch(numeric, mesh)

  def _check_reference_tokens(self, host_batch: dict[str, Any]) -> None:
    numeric = _numeric(host_batch)
    if "ref_image" in numeric or "ref_latents" in numeric:
      span = np.asarray(host_batch["mllm"]["ref_span"])
      counts = span[:, 1] - span[:, 0]
      if np.any(counts > self.ref_tokens) or np.any(counts <= 0):
        raise ValueError(
          f"Reference images of batch {list(host_batch.get('key', []))} "
          f"give {counts.tolist()} MLLM tokens; kiwi.ref_tokens (the "
          f"padded count) is {self.ref_tokens}. Raise kiwi.ref_tokens "
          f"(at most max_ref_tokens={self.model_cfg.max_ref_tokens}) or "
          "shrink the references (data.max_pixels)."
        )

  def batch_counts(self, batch: dict[str, Any]) -> dict[str, float]:
    """Examples, frames and model FLOPs of a (process-local) batch, all
    global (times the process count): the trainer's throughput and MFU."""
    video = batch.get("target_video", batch.get("target_latents"))
    examples = int(np.shape(video)[0]) * jax.process_count()
    return {
      "examples": examples,
      "frames": examples * int(video.shape[1]),
      "flops": self.step_flops(batch).train * jax.process_count(),
    }

  def step_flops(
    self, batch: dict[str, Any], *, dense_attention: bool = False
  ) -> flops_lib.FlopCount:
    """Matmul FLOPs of :meth:`loss_fn` on ``batch`` (host or device
    arrays; only shapes and the MLLM's vision segment ids are read), from
    ``kiwi_jax.flops.kiwi_flops``: MLLM + connectors + DiT, trained parts
    by this stage's sets; the VAE encode is not counted.
    ``dense_attention`` counts the masked pairs the XLA path computes."""
    mllm = batch["mllm"]
    target = batch.get("target_latents")
    if target is not None:
      grid = tuple(int(n) for n in np.shape(target)[1:4])
    else:
      grid = self.latent_grid(np.shape(batch["target_video"])[1:4])
    pixels = mllm.get("pixel_values")
    patches = 0 if pixels is None else int(np.shape(pixels)[1])
    full_pairs = None
    if patches and "full_segment_ids" in mllm:
      full_pairs = _mean_segment_pairs(np.asarray(mllm["full_segment_ids"]))
    shape = (
      batch_mode(batch),
      int(np.shape(mllm["input_ids"])[0]),
      grid,
      int(np.shape(mllm["input_ids"])[1]),
      patches,
      full_pairs,
      dense_attention,
    )
    if shape not in self._flops_cache:  # the formula walks every layer
      if len(self._flops_cache) > 256:
        self._flops_cache.clear()
      self._flops_cache[shape] = self._formula_flops(*shape)
    return self._flops_cache[shape]

  def _formula_flops(
    self, mode, batch, grid, text_len, patches, full_pairs, dense_attention
  ) -> flops_lib.FlopCount:
    return flops_lib.kiwi_flops(
      self.model_cfg,
      mode=mode,
      batch=batch,
      latent_grid=grid,
      text_len=text_len,
      vision_patches=patches,
      vision_full_pairs=full_pairs,
      ref_tokens=self.ref_tokens if mode == "reference" else 0,
      source=self.stage > 1,
      dense_attention=dense_attention,
      trained=flops_lib.trained_by_regex(self.trainable, self.frozen),
    )

  def latent_grid(
    self, frames_hw: tuple[int, int, int]
  ) -> tuple[int, int, int]:
    """``(t, h, w)`` latents of ``(T, H, W)`` pixels under the codec."""
    return self.model_cfg.latent_shape(*(int(n) for n in frames_hw))[1:4]


def _mean_segment_pairs(segment_ids: np.ndarray) -> float:
  """Mean over the batch of the (query, key) pairs within segments
  (padding, ``PAD_SEGMENT`` < 0, left out)."""
  total = 0
  for row in segment_ids.reshape(segment_ids.shape[0], -1):
    _, counts = np.unique(row[row >= 0], return_counts=True)
    total += int(np.sum(counts.astype(np.int64) ** 2))
  return total / max(1, segment_ids.shape[0])


def _numeric(host_batch: dict[str, Any]) -> dict[str, Any]:
  """The fields the model reads (drops keys, prompts and other text)."""
  return {
    k: v
    for k, v in host_batch.items()
    if k
    in (
      "source_video",
      "target_video",
      "ref_image",
      "mllm",
      "source_latents",
      "target_latents",
      "ref_latents",
    )
  }


def _mask_or_none(cond: Any, ref: jax.Array | None) -> jax.Array | None:
  """The context mask in reference mode (the only mode that pads rows)."""
  return cond.mask if ref is not None else None
