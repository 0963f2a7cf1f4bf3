"""The Kiwi-Edit ``Task`` for ``train_lib.trainer.train_and_evaluate``.

One micro-step (``WanVideoPipeline.training_loss``, spec 4.1 and 4.5):

  MLLM inputs --KiwiEdit.encode_conditions(mode)--> context
  source / target / reference pixels --frozen codec, no gradient--> latents
  t ~ grid (bf16 lookup), z_t = (1 - sigma) z_0 + sigma eps
  v = denoise_step(z_t, t, context, sigma * source, ref)   (stage >= 2)
  loss = w(t) * mean((v - (eps - z_0))^2)

The mode of a batch follows from its structure, which the mixed pipeline
keeps one kind per batch (spec 4.4): a ``ref_image`` field means
"reference", one frame means "image", otherwise "video". Each mode is its
own compiled program. Stage 1 never injects the source (the scripts pass no
``source_input``); later stages inject it for every mode.

Config (``config.kiwi``)::

  variant: KiwiEditConfig variant ("kiwi-5b", "kiwi-14b", "tiny").
  model: dict of KiwiEditConfig field overrides (dit/mllm/vae: dicts).
  mllm_lora_rank: Qwen2.5-VL LoRA rank (64 for 5B, 256 for 14B).
  mllm_lora_targets: optional list of Qwen projections with LoRA (default
    q/k/v/o, the 5B scripts; the 14B scripts add gate/up/down_proj).
  dit_lora_rank: DiT LoRA rank on the blocks' attention q/k/v/o and FFN
    (128 in the 14B stage 2, whose base DiT stays frozen; 0: none).
  stage: 1, 2 or 3; variant_family: "5b" or "14b" (trainable sets).
  codec: "vae" (the model's frozen Wan VAE) or "pixel_unshuffle" (demo).
  unshuffle_factor: the stand-in's factor.
  tokenizer_dir: local Qwen tokenizer directory.
  seq_len, num_patches: fixed MLLM token / patch-slot counts per example
    (0: the smallest ``bucketing`` ladder entry that fits).
  loss_weighting: "gaussian" (the reference, default) or "uniform"
    (``flow_matching.TrainingGrid.from_schedule``).
  ref_tokens: reference rows in the context (static); references with
    fewer MLLM tokens are padded and masked out of the cross-attention.
  data: sources [{path, weight, name, max_frames}], fixed_size, batch_size,
    seed, num_workers, max_pixels.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kiwi_jax import flops as flops_lib
from kiwi_jax import sharding
from kiwi_jax.data import examples as examples_lib
from kiwi_jax.data import loader as data_pipeline
from kiwi_jax.diffusion import flow_matching, sampler
from kiwi_jax.models.kiwi.config import KiwiEditConfig
from kiwi_jax.models.kiwi.model import KiwiEdit
from kiwi_jax.models.mllm import bucketing, processing
from kiwi_jax.tasks import curriculum as stages
from kiwi_jax.tasks import latent_codec
from kiwi_jax.train_lib import checkpointing
from kiwi_jax.train_lib.train_state import path_name

logger = logging.getLogger("kiwi_jax")

_PROCESSOR_LOCK = threading.Lock()


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


def kiwi_model_config(kiwi: Any) -> KiwiEditConfig:
  """The :class:`KiwiEditConfig` a ``config.kiwi`` block describes."""
  overrides = kiwi.get("model", {}) or {}
  overrides = dict(overrides.to_dict() if hasattr(overrides, "to_dict")
                   else overrides)
  cfg = KiwiEditConfig.from_variant(kiwi.variant)
  cfg = _replace_nested(cfg, overrides)
  text = {"lora_rank": int(kiwi.mllm_lora_rank)}
  targets = kiwi.get("mllm_lora_targets", None)
  if targets:
    text["lora_targets"] = tuple(str(t) for t in targets)
  return _replace_nested(cfg, {
      "mllm": {"text": text},
      "dit": {"lora_rank": int(kiwi.get("dit_lora_rank", 0) or 0)}})


class KiwiMllmHook:
  """The data pipeline's MLLM hook: Qwen2.5-VL inputs at fixed sizes.

  Picklable (Grain workers pickle it): holds only the tokenizer directory
  and configs and loads the processor on first use.
  """

  def __init__(self, tokenizer_dir: str, cfg: KiwiEditConfig, seq_len: int,
               num_patches: int):
    self.tokenizer_dir = tokenizer_dir
    self.cfg = cfg
    self.seq_len = seq_len
    self.num_patches = num_patches
    self._processor = None

  def __getstate__(self):
    return {**self.__dict__, "_processor": None}

  def processor(self) -> processing.QwenProcessor:
    # Grain's prefetch threads call the hook concurrently; transformers'
    # lazy imports fail when two threads import the tokenizer at once.
    with _PROCESSOR_LOCK:
      return self._load_processor()

  def _load_processor(self) -> processing.QwenProcessor:
    if self._processor is None:
      cfg = self.cfg
      self._processor = processing.QwenProcessor(
          self.tokenizer_dir, cfg.mllm, processing.ProcessorConfig(
              num_image_queries=cfg.num_image_queries,
              num_video_queries=cfg.num_video_queries,
              num_ref_queries=cfg.num_ref_queries,
              max_pixels_per_frame=cfg.mllm_max_pixels_per_frame,
              max_object_token=cfg.max_ref_tokens))
    return self._processor

  def __call__(self, frames: np.ndarray, prompt: str,
               ref_image: np.ndarray | None) -> dict[str, np.ndarray]:
    proc = self.processor()
    example = proc(prompt, frames=frames, ref_image=ref_image)
    tok = proc.tokenizer
    pad = (tok.pad_token_id if tok.pad_token_id is not None
           else tok.convert_tokens_to_ids("<|endoftext|>"))
    out = bucketing.pad_example(example, self.cfg.mllm.vision,
                                pad_token_id=pad,
                                seq_len=self.seq_len or None,
                                num_patches=self.num_patches or None)
    del out["grid_thw"]  # per-example length; the metadata encodes it
    return out


def batch_mode(batch: dict[str, Any]) -> str:
  """The edit mode of a one-kind batch (static: from its structure)."""
  if "ref_image" in batch or "ref_latents" in batch:
    return "reference"
  video = batch.get("source_video", batch.get("source_latents"))
  return "image" if video.shape[1] == 1 else "video"


def mllm_inputs(mllm: dict[str, Any]) -> dict[str, Any]:
  """Stacked hook outputs -> ``KiwiEdit.encode_conditions`` inputs."""
  inputs = bucketing.model_inputs(
      {**mllm, "position_ids": jnp.transpose(mllm["position_ids"],
                                             (1, 0, 2))})
  inputs["attention_mask"] = inputs.pop("segment_ids")
  return inputs


class KiwiTask:
  """Trains :class:`KiwiEdit` at one curriculum stage (a trainer ``Task``).

  Args:
    config: the run config; reads ``config.kiwi`` (module docstring).
  """

  def __init__(self, config: Any):
    kiwi = config.kiwi
    self.config = config
    self.stage = int(kiwi.stage)
    self.model_cfg = kiwi_model_config(kiwi)
    self.trainable, self.frozen = stages.trainable_sets(
        self.stage, kiwi.variant_family,
        dit_lora=bool(self.model_cfg.dit.lora_rank))
    if kiwi.codec not in latent_codec.CODECS:
      raise ValueError(f"kiwi.codec={kiwi.codec!r}; choose one of "
                       f"{latent_codec.CODECS}.")
    self.codec = (latent_codec.PixelUnshuffle(int(kiwi.unshuffle_factor))
                  if kiwi.codec == "pixel_unshuffle" else None)
    self.ref_tokens = int(kiwi.ref_tokens)
    self.grid = flow_matching.TrainingGrid.from_schedule(
        "diffsynth", str(kiwi.get("loss_weighting", "gaussian")),
        timestep_dtype=self.model_cfg.dit.dtype)
    self.sample_batches: dict[str, Any] | None = None
    self._flops_cache: dict[tuple, Any] = {}
    self.hook = KiwiMllmHook(str(kiwi.tokenizer_dir), self.model_cfg,
                             int(kiwi.seq_len), int(kiwi.num_patches))

  # -- Model.

  def build_model(self, rngs: nnx.Rngs) -> KiwiEdit:
    model = KiwiEdit(self.model_cfg, rngs=rngs)
    if self.codec is not None:
      # The stand-in codec replaces the Wan VAE: drop it, so its weights
      # are neither stored nor initialised (XLA drops the dead init ops).
      model.vae = None
    return model

  def load_weights(self, path: str, split: Any) -> tuple[Any, Any]:
    """``model_init``: the weights of a previous stage's checkpoint.

    LoRA factors the checkpoint lacks start fresh (``lora_b`` zero), as
    the reference loads the previous stage with ``strict=False`` after
    injecting LoRA (spec 4.2): the 14B stage 2 adds the DiT LoRA to a
    stage-1 model. Any other missing parameter is an error.
    """
    return checkpointing.restore_weights(
        path, split, fresh=functools.partial(self.fresh_lora, split))

  def fresh_lora(self, split: Any, names: list[str]) -> dict[str, jax.Array]:
    """``{name: array}``: this run's initial values of the LoRA factors
    among ``names``, in the split's dtypes and shardings (only those leave
    the jitted init; XLA drops the rest of the model's)."""
    names = [n for n in names if n.rsplit("/", 1)[-1] in ("lora_a",
                                                         "lora_b")]
    if not names:
      return {}
    want = {path_name(p): x for tree in (split.abstract_params,
                                         split.abstract_frozen)
            for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
    seed = int(self.config.get("seed", 0))

    def init():
      state = nnx.to_pure_dict(nnx.state(self.build_model(nnx.Rngs(seed)),
                                         nnx.LoRAParam))
      flat = {path_name(p): x
              for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}
      return {n: flat[n].astype(want[n].dtype) for n in names}

    shardings = {n: want[n].sharding for n in names}
    if any(s is None for s in shardings.values()):
      shardings = None
    return jax.jit(init, out_shardings=shardings)()

  def encode(self, model: KiwiEdit, frames: jax.Array) -> jax.Array:
    """uint8[B, T, H, W, 3] -> latents in the DiT's dtype, no gradient."""
    video = latent_codec.pixels_to_unit(frames)
    latents = (self.codec.encode(video) if self.codec is not None
               else model.encode_video(video))
    return jax.lax.stop_gradient(latents.astype(self.model_cfg.dit.dtype))

  def decode(self, model: KiwiEdit, latents: jax.Array) -> jax.Array:
    """Latents -> float32[B, T, H, W, 3] in [-1, 1]."""
    if self.codec is not None:
      return self.codec.decode(latents.astype(jnp.float32))
    return model.decode_latents(latents).astype(jnp.float32)

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
        mllm_inputs(batch["mllm"]), mode,
        ref_tokens=self.ref_tokens if mode == "reference" else 0)
    # Stage 1 has no source_input (spec 4.2): noise + MLLM context only.
    source = self._latents(model, batch, "source") if self.stage > 1 else None
    ref = self._latents(model, batch, "ref") if mode == "reference" else None
    return cond, source, ref

  def loss_fn(self, model: KiwiEdit, batch: dict[str, Any],
              rng: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
    cond, source, ref = self.conditions(model, batch)
    target = self._latents(model, batch, "target")

    def velocity(noisy, timestep, sigma):
      return model.denoise_step(
          noisy, timestep, cond.context, source_latents=source,
          sigma=sigma if source is not None else None, ref_latents=ref,
          context_mask=_mask_or_none(cond, ref))

    loss, aux = flow_matching.flow_matching_loss(velocity, target, rng,
                                                 self.grid)
    return loss, {"mse": aux["mse"], "sigma": aux["sigma"]}

  # -- Editing (sample videos, the demo's evaluation).

  def edit(self, model: KiwiEdit, batch: dict[str, Any], *,
           num_steps: int = 10, seed: int = 0,
           denoising_strength: float = 1.0) -> np.ndarray:
    """Edits a device batch with ``num_steps`` Euler steps: from noise, or
    below strength 1 from the source latents noised to the first sigma
    (the reference pipeline's ``input_video`` + ``denoising_strength``).

    Returns:
      float32[B, T, H, W, 3] in [-1, 1] (host numpy).
    """
    graphdef, state = nnx.split(model)
    # On a multi-host mesh every process calls this and gets the whole edit.
    return sharding.global_to_host(_edit(
        self, graphdef, state, batch, num_steps, float(denoising_strength),
        jax.random.key(seed)))

  def sample(self, model: KiwiEdit, step: int, writer: Any) -> None:
    """Writes ``source | edit | target`` videos (the trainer calls it every
    ``sample_every`` steps): of ``self.sample_batches`` (``{name: device
    batch of one}``) when a caller set it, else of the first
    ``kiwi.sample_count`` (default 1) examples of every data source, in
    file order, edited with ``kiwi.sample_steps`` (default 10) steps."""
    if self.sample_batches is None:
      self.sample_batches = self.default_sample_batches()
    num_steps = int(self.config.kiwi.get("sample_steps", 10))
    for name, batch in self.sample_batches.items():
      edited = unit_to_uint8(self.edit(model, batch, num_steps=num_steps)[0])
      source, target = (self._pixels(model, batch, n) for n in
                        ("source", "target"))
      writer.write_videos(step, {name: side_by_side(source, edited,
                                                    target)})

  def default_sample_batches(self) -> dict[str, dict[str, Any]]:
    """``{"sample/<source>/<i>": replicated device batch of one}``."""
    count = int(self.config.kiwi.get("sample_count", 1))
    mesh = sharding.mesh_from_config(self.config)
    replicated = jax.sharding.NamedSharding(mesh,
                                            jax.sharding.PartitionSpec())
    batches = {}
    for spec in self.source_specs():
      iterator = data_pipeline.make_iterator(
          [spec], self.example_config(1), data_pipeline.PipelineConfig(
              batch_size=1, shuffle=False, num_epochs=1),
          # Every process reads the same examples: the batch is replicated.
          mllm_transform=self.hook, shard_index=0, shard_count=1)
      for index, host in zip(range(count), iterator):
        self._check_reference_tokens(host)
        batches[f"sample/{spec.name}/{index}"] = jax.device_put(
            _numeric(host), replicated)
    return batches

  def _pixels(self, model, batch, name) -> np.ndarray:
    """uint8[T, H, W, 3] of a batch of one (decoded from cached latents)."""
    if f"{name}_video" in batch:
      return np.asarray(batch[f"{name}_video"])[0]
    return unit_to_uint8(np.asarray(self.decode(
        model, batch[f"{name}_latents"]))[0])

  # -- Data.

  def example_config(self, max_frames: int) -> examples_lib.ExampleConfig:
    data = self.config.kiwi.data
    fixed = data.get("fixed_size")
    return examples_lib.ExampleConfig(
        max_frames=max_frames, max_pixels=int(data.max_pixels),
        size_multiple=int(data.size_multiple),
        fixed_size=tuple(fixed) if fixed else None)

  def source_specs(self) -> list[data_pipeline.SourceSpec]:
    return [data_pipeline.SourceSpec(
        path=str(s["path"]), weight=float(s["weight"]), name=str(s["name"]),
        example=self.example_config(int(s["max_frames"])))
            for s in self.config.kiwi.data.sources]

  def train_iterator(self, shard_index: int, shard_count: int):
    data = self.config.kiwi.data
    cfg = data_pipeline.PipelineConfig(
        batch_size=int(data.batch_size) // shard_count,
        seed=int(data.seed), num_workers=int(data.num_workers))
    return data_pipeline.make_iterator(
        self.source_specs(), self.example_config(1), cfg,
        mllm_transform=self.hook, shard_index=shard_index,
        shard_count=shard_count)

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
            "shrink the references (data.max_pixels).")

  def batch_counts(self, batch: dict[str, Any]) -> dict[str, float]:
    """Examples, frames and model FLOPs of a (process-local) batch, all
    global (times the process count): the trainer's throughput and MFU."""
    video = batch.get("target_video", batch.get("target_latents"))
    examples = int(np.shape(video)[0]) * jax.process_count()
    return {"examples": examples, "frames": examples * int(video.shape[1]),
            "flops": self.step_flops(batch).train * jax.process_count()}

  def step_flops(self, batch: dict[str, Any], *,
                 dense_attention: bool = False) -> flops_lib.FlopCount:
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
    shape = (batch_mode(batch), int(np.shape(mllm["input_ids"])[0]), grid,
             int(np.shape(mllm["input_ids"])[1]), patches, full_pairs,
             dense_attention)
    if shape not in self._flops_cache:  # the formula walks every layer
      if len(self._flops_cache) > 256:
        self._flops_cache.clear()
      self._flops_cache[shape] = self._formula_flops(*shape)
    return self._flops_cache[shape]

  def _formula_flops(self, mode, batch, grid, text_len, patches, full_pairs,
                     dense_attention) -> flops_lib.FlopCount:
    return flops_lib.kiwi_flops(
        self.model_cfg, mode=mode, batch=batch, latent_grid=grid,
        text_len=text_len, vision_patches=patches,
        vision_full_pairs=full_pairs,
        ref_tokens=self.ref_tokens if mode == "reference" else 0,
        source=self.stage > 1, dense_attention=dense_attention,
        trained=flops_lib.trained_by_regex(self.trainable, self.frozen))

  def latent_grid(self, frames_hw: tuple[int, int, int]
                  ) -> tuple[int, int, int]:
    """``(t, h, w)`` latents of ``(T, H, W)`` pixels under this codec."""
    t, h, w = (int(n) for n in frames_hw)
    if self.codec is not None:
      f = self.codec.factor
      return t, h // f, w // f
    vae = self.model_cfg.vae
    return (1 + (t - 1) // vae.temporal_factor, h // vae.spatial_factor,
            w // vae.spatial_factor)


@functools.partial(jax.jit, static_argnums=(0, 1, 4, 5))
def _edit(task: KiwiTask, graphdef, state, batch, num_steps: int,
          strength: float, key):
  model = nnx.merge(graphdef, state)
  cond, source, ref = task.conditions(model, batch)
  shape = jax.eval_shape(lambda: task._latents(model, batch, "target"))
  noise = jax.random.normal(key, shape.shape, jnp.float32).astype(
      shape.dtype)
  plan = sampler.SamplingPlan.build(num_steps, denoising_strength=strength,
                                    timestep_dtype=task.model_cfg.dit.dtype)
  if strength < 1.0:
    start = float(plan.sigmas[0])
    clean = task._latents(model, batch, "source")
    noise = ((1.0 - start) * clean + start * noise).astype(shape.dtype)

  def velocity(latents, timestep, sigma, step):
    del step
    size = latents.shape[0]
    return model.denoise_step(
        latents, jnp.full((size,), timestep), cond.context,
        source_latents=source,
        sigma=jnp.full((size,), sigma) if source is not None else None,
        ref_latents=ref, context_mask=_mask_or_none(cond, ref))

  return task.decode(model, sampler.euler_loop(velocity, noise, plan))


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
  return {k: v for k, v in host_batch.items()
          if k in ("source_video", "target_video", "ref_image", "mllm",
                   "source_latents", "target_latents", "ref_latents")}


def _mask_or_none(cond: Any, ref: jax.Array | None) -> jax.Array | None:
  """The context mask in reference mode (the only mode that pads rows)."""
  return cond.mask if ref is not None else None


def unit_to_uint8(video: np.ndarray) -> np.ndarray:
  """float in [-1, 1] -> uint8 (round to nearest)."""
  return np.clip(np.round((np.asarray(video, np.float32) + 1.0) * 127.5),
                 0, 255).astype(np.uint8)


def side_by_side(*videos: np.ndarray) -> np.ndarray:
  """uint8[T, H, W, 3] clips -> one clip, left to right."""
  return np.concatenate(videos, axis=2)
