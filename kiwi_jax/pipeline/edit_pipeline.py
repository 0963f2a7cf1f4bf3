"""Instruction- and reference-guided video editing: the Python API.

  pipe = EditPipeline.from_pretrained("converted/kiwi-5b")
  frames = pipe("in.mp4", "Make it snowy.")              # uint8[T, H, W, 3]
  result = pipe.edit("in.mp4", "Replace the dog with the cat.",
                     ref_image="cat.png", steps=50, seed=0)
  result.save("out.mp4", side_by_side=True)

One edit follows ``WanVideoPipeline.__call__`` (reference §5.1): read and shape
the source (``inputs``), encode the MLLM conditions, VAE-encode the source
and the white-padded reference, draw the seeded noise
[1, (T-1)/4+1, H/16, W/16, c], run the Euler loop as one compiled program
(``stages.denoise``), decode and convert to uint8. No classifier-free
guidance unless asked for (the reference has none, quirk 11).

The noise comes from JAX's generator; the reference draws it with torch's
CPU generator, so equal seeds do not give equal noise (``edit(noise=...)``
accepts any noise, which is how the parity tests feed both sides the same).

``pipe.edit_seeds(video, prompt, seeds=[0, 1, 2, 3])`` edits with several
seeds in one run: the conditions are encoded once and the loop runs over
the batch of noises (``kiwi_jax.pipeline.seeds``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kiwi_jax import sharding
from kiwi_jax.diffusion import sampler, step_cache
from kiwi_jax.models.kiwi import checkpoint as kiwi_checkpoint
from kiwi_jax.models.kiwi.processor import KiwiProcessor
from kiwi_jax.models.vae import tiling
from kiwi_jax.pipeline import edit_run, vae_io
from kiwi_jax.pipeline import inputs as inputs_lib
from kiwi_jax.pipeline import loops as loops_lib
from kiwi_jax.pipeline import low_memory as low_memory_lib
from kiwi_jax.pipeline import programs as stages  # noqa: F401 (patched)
from kiwi_jax.pipeline import seeds as seeds_lib
from kiwi_jax.pipeline import windows as windows_lib
from kiwi_jax.pipeline.edit_checks import (
  MAX_STEPS,
  CheckpointDirError,
  check_checkpoint_dir,
  check_sampling_args,
)
from kiwi_jax.pipeline.edit_result import MAX_FPS, EditResult, check_fps
from kiwi_jax.pipeline.loops import MAX_COMPILED_LOOPS
from kiwi_jax.pipeline.vae_io import VAE_UNSHARDED
from kiwi_jax.utils import compile_cache

# The stages of one edit, in order. "compile" is the denoising loop's
# compilation, apart so that the first step's time is the step's own; it
# happens once per clip shape and guidance setting (``EditPipeline``
# keeps the compiled loops).
PHASES = ("mllm_encode", "vae_encode", "compile", "denoise", "vae_decode")


def _residency(low_memory: bool, mesh) -> low_memory_lib.Residency | None:
  if not low_memory:
    return None
  if mesh is not None:
    raise ValueError("low_memory runs on one device; it does not take a mesh.")
  return low_memory_lib.Residency()


class EditPipeline:
  """Edits videos and images with a :class:`KiwiEdit`.

  Args:
    model: the NNX model (``KiwiEdit``: its ``encode_conditions``,
      ``encode_video``, ``decode_latents`` and ``denoise_step``, and the
      latent geometry of its ``cfg``); split once here.
    processor: its MLLM inputs (``KiwiProcessor``: ``processor(instruction,
      frames=, ref_image=) -> (arrays, options)``).
    mesh: optional device mesh; the model state is placed by its logical
      axes and every stage runs under the mesh (sharded inference).
  """

  def __init__(
    self, model, processor, *, mesh: jax.sharding.Mesh | None = None
  ):
    self.processor = processor
    self.mesh = mesh
    cfg = self.cfg = model.cfg
    self.latent_channels = cfg.latent_channels
    self.temporal_factor = cfg.temporal_factor
    self.spatial_factor = cfg.spatial_factor
    self.latent_dtype = cfg.latent_dtype
    # The DiT sees timesteps in its compute dtype (the reference's
    # torch_dtype): bf16 rounds them, float32 keeps them exact.
    self.timestep_dtype = cfg.timestep_dtype
    if mesh is not None:
      model = sharding.reshard_module(model, mesh)
    self.graphdef, self.state = nnx.split(model)
    # Whether the step cache can cut this model's DiT around its blocks.
    self.can_cache_steps = hasattr(model, "split_denoise_step")
    self._vae_runner = None  # built on first use; False: the model has none
    self._loops = {}  # compiled denoising loops by argument signature
    # Low-memory mode (``low_memory.Residency``): which weights are on the
    # device in each phase; None keeps them all there.
    self.residency = None

  @classmethod
  def from_pretrained(
    cls, directory, *, mesh=None, compile_cache_dir=None, low_memory=False
  ) -> EditPipeline:
    """Opens a Kiwi-Edit checkpoint directory (local, no network): a
    converted release or a train.py workdir (its newest step).

    ``compile_cache_dir``: JAX's persistent compilation cache, so the next
    process editing at the same sizes loads the compiled programs; None
    uses ``JAX_COMPILATION_CACHE_DIR`` or ``~/.cache/kiwi_jax/jax_cache``,
    ``"off"`` none (``kiwi_jax.utils.compile_cache``).

    ``low_memory``: bf16 weights restored onto the host, each phase's moved
    to the device as it runs (``kiwi_jax.pipeline.low_memory``); one
    device, no ``mesh``.
    """
    path = check_checkpoint_dir(directory)
    residency = _residency(low_memory, mesh)
    if residency is None:
      model = kiwi_checkpoint.load(path, mesh=mesh)
    else:
      model = kiwi_checkpoint.load(
        path,
        mesh=sharding.make_mesh({"data": 1}, [residency.host]),
        config=low_memory_lib.low_memory_config(
          kiwi_checkpoint.load_config(path)
        ),
      )
    processor = KiwiProcessor(kiwi_checkpoint.processor_dir(path), model.cfg)
    compile_cache.configure(
      compile_cache_dir, default=compile_cache.user_cache_dir()
    )
    pipe = cls(model, processor, mesh=mesh)
    pipe.residency = residency
    return pipe

  @classmethod
  def from_model(
    cls, model, tokenizer, *, mesh=None, low_memory=False
  ) -> EditPipeline:
    """A pipeline over an in-memory :class:`KiwiEdit` (e.g. a trainer's)
    with its tokenizer (or the tokenizer's local directory);
    ``low_memory`` as :meth:`from_pretrained` (on a bf16 copy)."""
    residency = _residency(low_memory, mesh)
    if residency is not None:
      model = low_memory_lib.cast_model(model, residency.host)
    pipe = cls(model, KiwiProcessor(tokenizer, model.cfg), mesh=mesh)
    pipe.residency = residency
    return pipe

  def load_weights(self, model) -> None:
    """Swaps in ``model``'s weights (same graph, shapes and shardings:
    e.g. the trainer's model a few steps later); the compiled programs
    stay."""
    if self.residency is not None:
      model = low_memory_lib.cast_model(model, self.residency.host)
      self.residency.reset()
    graphdef, state = nnx.split(model)
    if graphdef != self.graphdef:
      raise ValueError(
        "load_weights: the model's graph differs from the "
        "pipeline's; build a new EditPipeline."
      )
    if loops_lib.signature(state) != loops_lib.signature(self.state):
      self._loops = {}  # compiled for other dtypes or shardings
    self.state = state
    self._vae_runner = None

  def __call__(
    self, video, prompt: str, ref_image=None, **kwargs
  ) -> np.ndarray:
    """Edits and returns uint8[T, H, W, 3] frames; see :meth:`edit`."""
    return self.edit(video, prompt, ref_image, **kwargs).frames

  def vae_runner(self):
    """The host-driven chunked/tiled Wan VAE runner (the reference's tiled
    inference), or None for another codec; built once."""
    if self._vae_runner is None:
      self._vae_runner = False
      if self.cfg.codec == "wan_vae":
        model = nnx.merge(self.graphdef, self.state)
        self._vae_runner = tiling.VAERunner(model.vae)
    return self._vae_runner or None

  def check_cache_threshold(
    self, value, *, guided: bool = False, name: str = "cache_threshold"
  ) -> float | None:
    """``value`` as a float (None: off), checked against this model.

    Raises:
      EditInputError: not a finite number >= 0, used with guidance, or
        the model cannot be cut around its DiT blocks.
    """
    try:
      value = step_cache.check_threshold(value, name)
    except ValueError as e:
      raise inputs_lib.EditInputError(str(e)) from None
    if value is not None and guided:
      raise inputs_lib.EditInputError(
        f"{name} does not combine with guidance (the cache keeps one "
        "residual; Kiwi-Edit uses no guidance)."
      )
    if value is not None and not self.can_cache_steps:
      raise inputs_lib.EditInputError(
        f"{name}: this model has no DiT to cache (it needs "
        "split_denoise_step, as Kiwi-Edit has)."
      )
    return value

  def _denoise_loop(self, args, scales, branches, on_compile, cached=False):
    """The compiled Euler loop for these arguments (``loops.denoise_loop``):
    ``run(*args) -> latents``."""
    return loops_lib.denoise_loop(
      self, args, scales, branches, on_compile, cached=cached
    )

  def _phase_hook(self, on_phase):
    """``on_phase``, after moving the phase's weights in low-memory
    mode."""

    def phase(name):
      if self.residency is not None:
        self.residency.enter(self, name)
      if on_phase is not None:
        on_phase(name)

    return phase

  def _mesh_context(self):
    return (
      sharding.use_mesh(self.mesh)
      if self.mesh is not None
      else contextlib.nullcontext()
    )

  def _vae_context(self):
    return vae_io.vae_context(self.mesh)

  def edit(
    self,
    video,
    prompt: str,
    ref_image=None,
    *,
    steps: int = 50,
    seed: int = 0,
    max_pixels: int = 720 * 1280,
    max_frames: int | None = None,
    scheduler: str = "diffsynth",
    shift: float | None = None,
    use_source: bool = True,
    guidance_scale: float | None = None,
    ref_guidance_scale: float | None = None,
    negative_prompt: str = "",
    noise: jax.Array | None = None,
    denoising_strength: float = 1.0,
    vae_tiling: bool | None = None,
    cache_threshold: float | None = None,
    window: int | None = None,
    overlap: int | None = None,
    window_mode: str = "auto",
    window_blend: str = "linear",
    on_step: Callable[[int, int], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
  ) -> EditResult:
    """Runs one edit.

    Args:
      video: source video/image path, uint8 frames [T, H, W, 3], an image
        [H, W, 3], a PIL image or a list of frames (``inputs.load_source``).
      prompt: the edit instruction.
      ref_image: optional reference image (path, PIL or uint8 array).
      steps: Euler steps (50 in the reference).
      seed: noise seed (:meth:`edit_seeds` runs several in one batch).
      max_pixels: per-frame pixel budget (sides then floored to 32).
      max_frames: keep the first frames, at most this many, 4k+1 (None:
        81 as the reference, or with ``window`` ``inputs.MAX_FRAMES``).
      scheduler: "diffsynth" (the released demo) or "diffusers".
      shift: the schedule's sigma shift; None (default) uses the one the
        model trained with (``KiwiEditConfig.flow_shift``: 5 for the
        released models, as the reference).
      use_source: inject the source latents (False = ImgEdit's
        ``--source_free``).
      guidance_scale: classifier-free guidance on the instruction, with
        ``negative_prompt`` as the unconditional prompt; None (default) as
        the reference, which has no guidance (quirk 11).
      ref_guidance_scale: guidance on the reference image (needs one):
        ``v_uncond + s_text (v_text - v_uncond) + s_ref (v_full - v_text)``
        where the two lower branches see no reference (video-mode context,
        no reference tokens) and s_text is ``guidance_scale`` or 1.
      negative_prompt: the unconditional prompt when guiding.
      noise: initial latents to use instead of seeded noise.
      denoising_strength: in (0, 1]; below 1 the loop starts from the
        source latents noised to the first sigma of a shortened schedule
        (the reference pipeline's ``input_video`` + ``denoising_strength``;
        1, the released demo, starts from noise).
      vae_tiling: encode/decode in overlapping spatial tiles with the
        model's host-driven VAE runner, as the reference does at inference
        (``tiled=True``, tiles 30 x 52 latent pixels, stride 15 x 26);
        None uses it when the model has one; False runs each VAE pass as
        one jitted program over the whole clip.
      cache_threshold: turn on the DiT step cache
        (``kiwi_jax.diffusion.step_cache``, docs/step_cache.md): a step
        reuses the blocks' last residual while the first block's modulated
        input has changed, in accumulated relative L1, by less than this;
        None (default) runs every step in full, as the reference; 0 runs
        the cached loop without skipping; about 0.1 to 0.3 skips steps.
        Not with guidance. ``EditResult.block_evals`` counts the blocks
        run.
      window, overlap: long videos (docs/long_video.md): denoise in
        windows of ``window`` frames (4k+1, e.g. 81) sharing ``overlap``
        frames (a multiple of 4, less than ``window``), blended in latent
        space at every step (``kiwi_jax.pipeline.windows``), with the
        whole clip's MLLM conditions; a clip that fits one window is the
        plain edit, bit for bit. Not with guidance or the step cache.
      window_mode: ``"batched"``: the windows as one batch in one jitted
        loop; ``"streamed"``: one window at a time per step (the DiT's
        memory is one window's); ``"auto"``: batched when the windows hold
        at most ``windows.MAX_BATCHED_LATENT_FRAMES`` latent frames.
      window_blend: ``"linear"`` (cross-fade the overlaps at every step)
        or ``"none"`` (denoise the windows apart, cut each overlap at its
        middle: the baseline of the seam test).
      on_step: ``on_step(done, total)`` after each denoising step.
      on_phase: ``on_phase(phase)`` as each phase of ``PHASES`` begins,
        in that order, each at most once (``vae_encode`` is skipped when
        there is nothing to encode, ``compile`` when the loop for this
        shape is already compiled); the guidance branches' MLLM encodes
        belong to ``mllm_encode``.

    Returns:
      The :class:`EditResult`.
    """
    windows_lib.check_window_options(
      window, overlap, window_mode, window_blend, self.temporal_factor
    )
    if max_frames is None:
      max_frames = 81 if window is None else inputs_lib.MAX_FRAMES
    return self._edit(
      video,
      prompt,
      ref_image,
      seeds=[seed],
      noise=noise,
      steps=steps,
      max_pixels=max_pixels,
      max_frames=max_frames,
      scheduler=scheduler,
      shift=shift,
      use_source=use_source,
      guidance_scale=guidance_scale,
      ref_guidance_scale=ref_guidance_scale,
      negative_prompt=negative_prompt,
      denoising_strength=denoising_strength,
      vae_tiling=vae_tiling,
      cache_threshold=cache_threshold,
      windows=None if window is None else (window, overlap),
      window_mode=window_mode,
      window_blend=window_blend,
      on_step=on_step,
      on_phase=on_phase,
    )[0]

  def edit_seeds(
    self,
    video,
    prompt: str,
    ref_image=None,
    *,
    seeds: Sequence[int],
    seed_batch: int | None = None,
    **options,
  ) -> seeds_lib.SeedResults:
    """Edits once per seed in one run (``kiwi_jax.pipeline.seeds``).

    The MLLM and VAE encodes run once; the denoising loop runs over a
    batch of noises, seed k's being exactly what ``edit(seed=k)`` draws,
    so each seed's edit is that separate run's within float32 rounding.

    Args:
      video, prompt, ref_image: as :meth:`edit`.
      seeds: distinct seeds, 0..2**32 - 1.
      seed_batch: denoise at most this many seeds at a time (bounds the
        loop's memory); None denoises them all at once.
      **options: :meth:`edit`'s keyword arguments but ``seed`` and
        ``noise``; ``on_step(done, total)`` counts the steps of every
        batch (total = steps x batches).

    Returns:
      :class:`~kiwi_jax.pipeline.seeds.SeedResults`, in the order given.
    """
    for name in ("seed", "noise", "window", "overlap"):
      if name in options:
        raise TypeError(f"edit_seeds takes seeds=, not {name}=.")
    seeds = seeds_lib.check_seeds(seeds)
    seed_batch = seeds_lib.check_seed_batch(seed_batch)
    return seeds_lib.SeedResults(
      seeds,
      self._edit(
        video, prompt, ref_image, seeds=seeds, seed_batch=seed_batch, **options
      ),
    )

  def _seed_noise(self, seeds, shape) -> jax.Array:
    """Each seed's ``initial_noise`` of ``shape`` (batch 1), stacked."""
    if len(seeds) == 1:
      return sampler.initial_noise(seeds[0], shape, self.latent_dtype)
    return jnp.concatenate(
      [sampler.initial_noise(k, shape, self.latent_dtype) for k in seeds]
    )

  def _edit(self, video, prompt, ref_image=None, **options):
    """The edits of ``seeds`` (``edit_run.run_edit``)."""
    return edit_run.run_edit(self, video, prompt, ref_image, **options)


# The names this module has always offered (several now live in
# edit_checks, edit_result, loops and vae_io).
__all__ = [
  "MAX_COMPILED_LOOPS",
  "MAX_FPS",
  "MAX_STEPS",
  "PHASES",
  "VAE_UNSHARDED",
  "CheckpointDirError",
  "EditPipeline",
  "EditResult",
  "check_checkpoint_dir",
  "check_fps",
  "check_sampling_args",
]
