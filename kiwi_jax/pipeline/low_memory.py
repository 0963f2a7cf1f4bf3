"""Low-memory editing: the 5B model at 720p x 81 frames on one 24 GB GPU.

``EditPipeline.from_pretrained(dir, low_memory=True)`` (``kiwi-edit
--low-memory``) changes four things, and nothing else:

* **bf16 weights and compute** (:func:`low_memory_config`): every
  parameter of Qwen2.5-VL, the connectors, the DiT and the VAE in
  bfloat16, as the reference loads the released model
  (``torch_dtype=torch.bfloat16``, reference §5.1); attention chosen per
  backend (``None``: cuDNN flash attention on a GPU, splash on a TPU), so
  the DiT's [18,480 x 18,480] logits never exist whole. The fp32 islands
  inside the modules (norm statistics, softmax, RoPE, the timestep
  sinusoid) stay fp32.
* **one component on the device at a time** (:class:`Residency`): the
  weights load onto the host; as each phase of an edit begins, the weights
  it runs are moved to the device and the others back to the host
  (:data:`PHASE_GROUPS`): the MLLM side (Qwen, queries, connectors) for
  ``mllm_encode``, the VAE for ``vae_encode`` and ``vae_decode``, the DiT
  for ``compile`` and ``denoise``. The jitted programs still take the whole
  state, as in the default mode: ``jax.jit`` drops the arguments a program
  does not use (``keep_unused=False``), so the weights on the host are
  neither transferred nor counted in its memory.
* **the source on the host during the VAE encode**: the tiled runner
  (``models/vae/tiling.py``) slices each tile's chunk from a host array and
  sends only that to the device, instead of the whole float32 clip.
* **decoded frames streamed to the host** (:func:`decode_to_host`): one
  latent frame's pixels at a time, instead of the whole float32 video
  accumulating on the device.

The VAE passes' own memory is bounded by the tile (30 x 52 latents) and
the chunk (1 latent frame) whatever the clip's length.

Where the host and the device are the same (a CPU-only machine with one
device), nothing moves and the mode is bf16 plus the streamed VAE.
``kiwi-edit --plan`` (``kiwi_jax/cli/edit_plan.py``) shows what each phase
needs.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kiwi_jax.models.kiwi.config import KiwiEditConfig

logger = logging.getLogger("kiwi_jax")

# Top-level children of ``KiwiEdit`` by weight group; every child not named
# here (Qwen, the query sets, the connectors) belongs to "mllm".
DIT, VAE, MLLM = "dit", "vae", "mllm"
GROUPS = (MLLM, VAE, DIT)
# The groups on the device while each phase of ``EditPipeline.PHASES``
# runs (the phases ``_edit`` announces, in order).
PHASE_GROUPS = {
  "mllm_encode": (MLLM,),
  "vae_encode": (VAE,),
  "compile": (DIT,),
  "denoise": (DIT,),
  "vae_decode": (VAE,),
}


def group_of(child: str) -> str:
  """The weight group of the top-level ``KiwiEdit`` child ``child``."""
  return child if child in (DIT, VAE) else MLLM


def low_memory_config(cfg: KiwiEditConfig) -> KiwiEditConfig:
  """``cfg`` with bf16 parameters and compute and per-backend attention."""
  bf16 = jnp.dtype(jnp.bfloat16)
  return cfg.replace(
    dit=cfg.dit.replace(dtype=bf16, param_dtype=bf16, attention=None),
    mllm=cfg.mllm.replace(dtype=bf16, param_dtype=bf16, attention=None),
    vae=cfg.vae.replace(
      dtype=bf16, param_dtype=bf16, attention_implementation=None
    ),
  )


def cast_model(model, device=None):
  """A new ``KiwiEdit`` in :func:`low_memory_config` with ``model``'s
  weights cast to bf16 (non-float leaves kept), on ``device`` if given."""
  from kiwi_jax.models.kiwi.model import abstract_kiwi  # pylint: disable=g-import-not-at-top

  graphdef, abstract = abstract_kiwi(low_memory_config(model.cfg))
  state = nnx.state(model)

  def cast(x, target):
    x = x.astype(target.dtype) if x.dtype != target.dtype else x
    return x if device is None else jax.device_put(x, device)

  return nnx.merge(graphdef, jax.tree.map(cast, state, abstract))


def host_device(device) -> Any:
  """A CPU device other than ``device`` to park weights on, or ``device``
  itself where there is none (a CPU-only machine with one device)."""
  try:
    cpus = jax.devices("cpu")
  except RuntimeError:  # no CPU backend (JAX_PLATFORMS without cpu)
    cpus = []
  others = [d for d in cpus if d != device]
  if not others:
    logger.info("Low-memory mode: no host device apart from %s.", device)
  return others[-1] if others else device


def _child(path) -> str:
  entry = path[0]
  return str(getattr(entry, "key", getattr(entry, "name", entry)))


def group_bytes(state: Any) -> dict[str, int]:
  """Bytes of each weight group of a ``KiwiEdit`` state (arrays or shape
  structs)."""
  out = dict.fromkeys(GROUPS, 0)
  for path, x in jax.tree_util.tree_leaves_with_path(state):
    out[group_of(_child(path))] += int(np.prod(x.shape)) * (
      jnp.dtype(x.dtype).itemsize
    )
  return out


def group_devices(state: Any) -> dict[str, set]:
  """The devices each weight group's arrays are on."""
  out = {g: set() for g in GROUPS}
  for path, x in jax.tree_util.tree_leaves_with_path(state):
    out[group_of(_child(path))] |= set(x.devices())
  return out


class Residency:
  """Keeps on the device only the weights of the running phase.

  The weights' host copies stay (the host holds the whole model for the
  pipeline's life): a group leaving the device is dropped there, not
  copied back.

  Args:
    device: where the programs run (default ``jax.devices()[0]``).
    host: where the other weights wait (default :func:`host_device`).
  """

  def __init__(self, device=None, host=None):
    self.device = device or jax.devices()[0]
    self.host = host if host is not None else host_device(self.device)
    self._host = None  # (treedef, host leaves) of the weights

  def reset(self) -> None:
    """Forgets the host copies (new weights: ``load_weights``)."""
    self._host = None

  def place(self, state: Any, on_device: Collection[str]) -> Any:
    """``state`` with the groups ``on_device`` on the device and the rest
    on the host (arrays already in place are not copied)."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(state)
    if self._host is None or self._host[0] != treedef:
      host = [
        x if x.devices() == {self.host} else jax.device_put(x, self.host)
        for _, x in paths
      ]
      self._host = (treedef, host)
    out = []
    for (path, x), h in zip(paths, self._host[1]):
      if group_of(_child(path)) not in on_device:
        out.append(h)
      elif x.devices() == {self.device}:
        out.append(x)
      else:
        out.append(jax.device_put(h, self.device))
    return jax.tree_util.tree_unflatten(treedef, out)

  def enter(self, pipe, phase: str) -> None:
    """Moves ``pipe``'s weights for ``phase`` (``PHASE_GROUPS``; other
    names move nothing), its VAE runner's too."""
    groups = PHASE_GROUPS.get(phase)
    if groups is None:
      return
    pipe.state = self.place(pipe.state, groups)
    runner = getattr(pipe, "_vae_runner", None)
    if runner:  # the runner holds the VAE's arrays: give it the moved ones
      runner.state = nnx.split(nnx.merge(pipe.graphdef, pipe.state).vae)[1]
    # Wait for the copies, so the arrays left behind are freed before the
    # phase allocates.
    jax.block_until_ready(jax.tree.leaves(pipe.state))


def decode_to_host(runner, latents, *, tiled: bool = True) -> np.ndarray:
  """``runner.decode(latents, tiled=tiled)`` as a host array, each latent
  frame's pixels copied off the device as soon as they are decoded (the
  same values: ``decode`` concatenates the same chunks on the device)."""
  chunks = [
    np.asarray(frames) for frames in runner.decode_stream(latents, tiled=tiled)
  ]
  return np.concatenate(chunks, axis=1)


__all__ = [
  "GROUPS",
  "PHASE_GROUPS",
  "Residency",
  "cast_model",
  "decode_to_host",
  "group_bytes",
  "group_devices",
  "group_of",
  "host_device",
  "low_memory_config",
]
