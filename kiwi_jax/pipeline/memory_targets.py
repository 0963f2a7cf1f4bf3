"""Where ``kiwi-edit --plan`` compiles (``memory_plan``): one-device
meshes of this machine's device, a compile-only TPU chip or the host CPU,
and the ``hybrid`` of the last two. No compile-only CUDA target exists
with jax 0.10.2 (``get_topology_desc(platform="cuda")`` raises
``NotImplementedError``), so without a GPU these are proxies for one
(docs/low_memory.md, "The compile target")."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from kiwi_jax import sharding
from kiwi_jax.models.kiwi.config import KiwiEditConfig
from kiwi_jax.plan import topology

TARGETS = ("auto", "device", "hybrid", "tpu", "cpu")
# The compile-only TPU slice whose first chip is the target (the largest
# HBM, so that the default mode's programs still compile and report).
TPU_SLICE = "v5p-8"


def resolve_target(target: str) -> str:
  """``"auto"``: this machine's device where it is a GPU or a TPU, else
  ``"hybrid"`` where libtpu is installed, else ``"cpu"``."""
  if target != "auto":
    return target
  if jax.default_backend() in ("gpu", "tpu"):
    return "device"
  return "hybrid" if topology.libtpu_version() is not None else "cpu"


def flash_stand_in(cfg: KiwiEditConfig) -> KiwiEditConfig:
  """``attention=None`` (per backend) as ``"chunked"``: on the CPU target
  ``None`` is XLA's attention, which holds the whole logits; a GPU runs
  cuDNN's flash kernel, which never does. ``chunked`` (XLA over blocks of
  ``attention_chunk_size`` queries) is the nearest program the CPU
  compiles."""

  def chunked(value):
    return "chunked" if value is None else value

  return cfg.replace(
    dit=cfg.dit.replace(attention=chunked(cfg.dit.attention)),
    mllm=cfg.mllm.replace(attention=chunked(cfg.mllm.attention)),
    vae=cfg.vae.replace(
      attention_implementation=chunked(cfg.vae.attention_implementation)
    ),
  )


def target_mesh(target: str) -> tuple[Any, str]:
  """``(one-device mesh, label)`` of a compile target.

  ``"device"``: this machine's first device (on a GPU, the real programs).
  ``"tpu"``: the first chip of a compile-only ``TPU_SLICE``
  (``plan.topology``, needs libtpu): bf16 matmuls and flash (splash)
  attention as a GPU runs them with cuDNN. ``"cpu"``: the host's CPU
  backend (:func:`flash_stand_in` for ``attention=None``), which upcasts
  some bf16 work to float32.

  Raises:
    ValueError: an unknown target, or ``"tpu"`` without libtpu.
  """
  target = resolve_target(target)
  if target == "device":
    devices = jax.devices()[:1]
    label = (
      f"{devices[0].platform} {devices[0].device_kind}, this machine's "
      "first device"
    )
  elif target == "cpu":
    devices = jax.devices("cpu")[:1]
    label = (
      "host CPU backend (XLA:CPU), a proxy for one GPU: attention=None "
      "compiled as 'chunked' (blocks of queries) for cuDNN's flash "
      "kernel, and XLA:CPU computes some bf16 work in f32"
    )
  elif target == "tpu":
    version = topology.libtpu_version()
    if version is None:
      raise ValueError(
        "--plan-target tpu needs libtpu (pip install '.[tpu]'); or use "
        "--plan-target cpu."
      )
    devices = topology.devices(topology.parse_slice(TPU_SLICE))[:1]
    label = (
      f"{devices[0].device_kind}, 1 chip of a compile-only {TPU_SLICE} "
      f"(libtpu {version}), a proxy for one GPU: bf16 native, "
      "attention=None is splash (flash) as cuDNN's on a GPU"
    )
  else:
    raise ValueError(f"--plan-target {target!r}: choose one of {TARGETS}.")
  return sharding.make_mesh({"data": 1}, devices), label


@dataclasses.dataclass(frozen=True)
class Target:
  """Where a group of programs compiles: a one-device mesh and a tag."""

  mesh: Any
  tag: str  # "tpu", "cpu" or the device's platform


def plan_targets(target: str) -> tuple[Target, Target, str]:
  """``(target of encode_conditions and denoise, target of the VAE's
  chunk programs, label)``.

  ``"hybrid"``: the transformers (Qwen, the DiT) for one chip of the
  compile-only TPU, bf16 and flash attention as a GPU runs them; the VAE's
  convolutions for the host CPU (XLA:TPU took over 12 minutes for one
  full-size chunk program on this 2-core host; XLA:CPU over-counts their
  bf16 temporaries). Any other target compiles everything for one
  :func:`target_mesh`.
  """
  target = resolve_target(target)
  if target != "hybrid":
    mesh, label = target_mesh(target)
    tag = mesh.devices.flat[0].platform
    return Target(mesh, tag), Target(mesh, tag), label
  tpu, tpu_label = target_mesh("tpu")
  cpu, _ = target_mesh("cpu")
  label = (
    f"hybrid, a proxy for one GPU: encode_conditions and denoise for "
    f"{tpu_label.split(', a proxy')[0]} (bf16 native, attention=None is "
    "splash, a flash kernel as cuDNN's on a GPU); the VAE's chunk "
    "programs for the host CPU backend (XLA:CPU, which computes some "
    "bf16 work in f32)"
  )
  return Target(tpu, "tpu"), Target(cpu, "cpu"), label


def placed(abstract, mesh):
  """The shape-only state with the shardings of ``mesh``."""
  shardings = sharding.state_shardings(abstract, mesh)
  return jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
    abstract,
    shardings,
  )


__all__ = [
  "TARGETS",
  "TPU_SLICE",
  "Target",
  "flash_stand_in",
  "placed",
  "plan_targets",
  "resolve_target",
  "target_mesh",
]
