"""Wan VAE weights: original ``.pth`` / diffusers ``AutoencoderKLWan`` <-> JAX.

Layouts (reference §1.4, 1.5, 7.1):

* ``original``: ``Wan2.2_VAE.pth`` / ``Wan2.1_VAE.pth`` as DiffSynth's
  ``VideoVAE38_`` / ``VideoVAE_`` name them (``encoder.conv1``,
  ``encoder.downsamples.*``, ``encoder.middle.{0,1,2}``, ``encoder.head.{0,2}``,
  ``conv1``, ``conv2``, ``decoder.*``), optionally under ``model.``,
  ``module.`` or ``vae.`` prefixes or nested in ``model_state``.
  Wan2.2 stages are ``downsamples.i.downsamples.j`` and
  ``upsamples.i.upsamples.j``; Wan2.1 stages are flat ``downsamples.k`` / ``upsamples.k`` lists.
* ``diffusers``: ``AutoencoderKLWan`` (``encoder.conv_in``,
  ``down_blocks``, ``mid_block``, ``quant_conv``, ...), a directory with
  ``config.json`` and safetensors, or a single safetensors file.

Every torch tensor maps to one JAX parameter; :func:`kiwi_jax.converters.assign.assign`
checks the whole plan first and lists missing, unexpected and mis-shaped keys
together. Export writes atomically (temp file, then rename).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
from flax import nnx

from kiwi_jax.converters import assign as assign_lib
from kiwi_jax.converters.assign import CONV, IDENTITY, KeyMap
from kiwi_jax.converters.checkpoint_io import Checkpoint, open_checkpoint
from kiwi_jax.models.vae import VARIANTS as VAE_VARIANTS
from kiwi_jax.models.vae import WanVAE, WanVAEConfig
from kiwi_jax.models.vae.config import (
  WAN21_LATENTS_MEAN,
  WAN21_LATENTS_STD,
  WAN22_LATENTS_MEAN,
  WAN22_LATENTS_STD,
)
from kiwi_jax.utils import atomic

Layout = Literal["original", "diffusers"]
PREFIXES = ("model.", "module.", "vae.")


def _gamma(dim: int, image_norm: bool):
  """RMS_norm gamma ``(C, 1, 1, 1)`` (video) or ``(C, 1, 1)`` (attention)."""
  torch_shape = (dim, 1, 1) if image_norm else (dim, 1, 1, 1)
  return assign_lib.reshape(torch_shape, (dim,))


class _Plan:
  """Accumulates KeyMaps for one layout."""

  def __init__(self):
    self.maps: list[KeyMap] = []

  def conv(self, key: str, path: tuple):
    self.maps.append(KeyMap(f"{key}.weight", path + ("kernel",), CONV))
    self.maps.append(KeyMap(f"{key}.bias", path + ("bias",), IDENTITY))

  def norm(self, key: str, path: tuple, dim: int, image_norm: bool = False):
    self.maps.append(
      KeyMap(f"{key}.gamma", path + ("gamma",), _gamma(dim, image_norm))
    )

  def resblock(
    self, key: str, path: tuple, in_dim: int, out_dim: int, layout: Layout
  ):
    if layout == "original":  # nn.Sequential indices of ``residual``
      names = (
        "residual.0",
        "residual.2",
        "residual.3",
        "residual.6",
        "shortcut",
      )
    else:
      names = ("norm1", "conv1", "norm2", "conv2", "conv_shortcut")
    self.norm(f"{key}.{names[0]}", path + ("norm1",), in_dim)
    self.conv(f"{key}.{names[1]}", path + ("conv1",))
    self.norm(f"{key}.{names[2]}", path + ("norm2",), out_dim)
    self.conv(f"{key}.{names[3]}", path + ("conv2",))
    if in_dim != out_dim:
      self.conv(f"{key}.{names[4]}", path + ("shortcut",))

  def resample(self, key: str, path: tuple, temporal: bool):
    self.conv(f"{key}.resample.1", path + ("conv",))
    if temporal:
      self.conv(f"{key}.time_conv", path + ("time_conv",))

  def mid(self, key: str, path: tuple, dim: int, layout: Layout):
    if layout == "original":
      res0, attn, res1 = f"{key}.0", f"{key}.1", f"{key}.2"
    else:
      res0, attn = f"{key}.resnets.0", f"{key}.attentions.0"
      res1 = f"{key}.resnets.1"
    self.resblock(res0, path + ("res0",), dim, dim, layout)
    self.norm(f"{attn}.norm", path + ("attn", "norm"), dim, image_norm=True)
    self.conv(f"{attn}.to_qkv", path + ("attn", "to_qkv"))
    self.conv(f"{attn}.proj", path + ("attn", "proj"))
    self.resblock(res1, path + ("res1",), dim, dim, layout)


def keymaps(cfg: WanVAEConfig, layout: Layout) -> list[KeyMap]:
  """The full torch-key <-> JAX-path plan of ``cfg`` in ``layout``."""
  if layout not in ("original", "diffusers"):
    raise ValueError(
      f"Unknown Wan VAE layout {layout!r}; use 'original' or 'diffusers'."
    )
  orig = layout == "original"
  plan = _Plan()
  n = len(cfg.dim_mult)

  # Encoder.
  enc = ("encoder",)
  plan.conv("encoder.conv1" if orig else "encoder.conv_in", enc + ("conv_in",))
  dims = cfg.encoder_widths()
  flat = 0
  for i in range(n):
    stage = enc + ("stages", i)
    for j in range(cfg.num_res_blocks):
      in_dim = dims[i] if j == 0 else dims[i + 1]
      if cfg.residual:
        key = (
          f"encoder.downsamples.{i}.downsamples.{j}"
          if orig
          else f"encoder.down_blocks.{i}.resnets.{j}"
        )
      else:
        key = (
          f"encoder.downsamples.{flat}"
          if orig
          else f"encoder.down_blocks.{flat}"
        )
        flat += 1
      plan.resblock(key, stage + ("resnets", j), in_dim, dims[i + 1], layout)
    if i < n - 1:
      temporal = cfg.temporal_downsample[i]
      if cfg.residual:
        key = (
          f"encoder.downsamples.{i}.downsamples.{cfg.num_res_blocks}"
          if orig
          else f"encoder.down_blocks.{i}.downsampler"
        )
      else:
        key = (
          f"encoder.downsamples.{flat}"
          if orig
          else f"encoder.down_blocks.{flat}"
        )
        flat += 1
      plan.resample(key, stage + ("downsample",), temporal)
  plan.mid(
    "encoder.middle" if orig else "encoder.mid_block",
    enc + ("mid",),
    dims[-1],
    layout,
  )
  plan.norm(
    "encoder.head.0" if orig else "encoder.norm_out",
    enc + ("norm_out",),
    dims[-1],
  )
  plan.conv(
    "encoder.head.2" if orig else "encoder.conv_out", enc + ("conv_out",)
  )

  # 1x1x1 convs around the latent.
  plan.conv("conv1" if orig else "quant_conv", ("quant_conv",))
  plan.conv("conv2" if orig else "post_quant_conv", ("post_quant_conv",))

  # Decoder.
  dec = ("decoder",)
  plan.conv("decoder.conv1" if orig else "decoder.conv_in", dec + ("conv_in",))
  dims = cfg.decoder_widths()
  plan.mid(
    "decoder.middle" if orig else "decoder.mid_block",
    dec + ("mid",),
    dims[0],
    layout,
  )
  temporal_up = tuple(reversed(cfg.temporal_downsample))
  flat = 0
  for i in range(n):
    stage = dec + ("stages", i)
    first_in = dims[i] // 2 if (i > 0 and not cfg.residual) else dims[i]
    for j in range(cfg.num_res_blocks + 1):
      in_dim = first_in if j == 0 else dims[i + 1]
      if cfg.residual:
        key = (
          f"decoder.upsamples.{i}.upsamples.{j}"
          if orig
          else f"decoder.up_blocks.{i}.resnets.{j}"
        )
      elif orig:
        key = f"decoder.upsamples.{flat}"
        flat += 1
      else:
        key = f"decoder.up_blocks.{i}.resnets.{j}"
      plan.resblock(key, stage + ("resnets", j), in_dim, dims[i + 1], layout)
    if i < n - 1:
      if cfg.residual:
        key = (
          f"decoder.upsamples.{i}.upsamples.{cfg.num_res_blocks + 1}"
          if orig
          else f"decoder.up_blocks.{i}.upsampler"
        )
      elif orig:
        key = f"decoder.upsamples.{flat}"
        flat += 1
      else:
        key = f"decoder.up_blocks.{i}.upsamplers.0"
      plan.resample(key, stage + ("upsample",), temporal_up[i])
  plan.norm(
    "decoder.head.0" if orig else "decoder.norm_out",
    dec + ("norm_out",),
    dims[-1],
  )
  plan.conv(
    "decoder.head.2" if orig else "decoder.conv_out", dec + ("conv_out",)
  )
  return plan.maps


# ---------------------------------------------------------------------------
# Reading.


def detect_layout(keys) -> Layout:
  keys = set(keys)
  if "encoder.conv_in.weight" in keys:
    return "diffusers"
  if "encoder.conv1.weight" in keys:
    return "original"
  sample = sorted(keys)[:5]
  raise ValueError(
    "Not a Wan VAE checkpoint: neither 'encoder.conv1.weight' (original "
    "layout) nor 'encoder.conv_in.weight' (diffusers) is present; first "
    f"keys: {sample}."
  )


def _shared_prefix(keys) -> str:
  """Concatenation of the PREFIXES every key starts with (``model.vae.``)."""
  keys = list(keys)
  prefix = ""
  while keys:
    nxt = next(
      (p for p in PREFIXES if all(k.startswith(prefix + p) for k in keys)), None
    )
    if nxt is None:
      break
    prefix += nxt
  return prefix


def open_vae_checkpoint(path: str | os.PathLike) -> Checkpoint:
  """Opens a Wan VAE checkpoint with any shared wrapper prefix stripped."""
  ckpt = open_checkpoint(path)
  prefix = _shared_prefix(list(ckpt))
  return open_checkpoint(path, strip_prefixes=(prefix,)) if prefix else ckpt


def config_from_diffusers(config: dict[str, Any], **overrides) -> WanVAEConfig:
  """``WanVAEConfig`` from an ``AutoencoderKLWan`` ``config.json`` dict."""
  if config.get("attn_scales"):
    raise ValueError(
      f"attn_scales={config['attn_scales']} is not supported: "
      "both Wan VAEs use [] (attention only in the mid blocks)."
    )
  if config.get("dropout", 0.0):
    raise ValueError(
      f"dropout={config['dropout']} is not supported "
      "(inference model; the Wan VAEs use 0)."
    )
  z = int(config.get("z_dim", 16))
  base = int(config.get("base_dim", 96))
  patch = config.get("patch_size") or 1
  residual = bool(config.get("is_residual", False))
  fields = dict(
    name=overrides.pop("name", f"diffusers-z{z}"),
    z_dim=z,
    encoder_dim=base,
    decoder_dim=int(config.get("decoder_base_dim") or base),
    dim_mult=tuple(config.get("dim_mult", (1, 2, 4, 4))),
    num_res_blocks=int(config.get("num_res_blocks", 2)),
    temporal_downsample=tuple(
      bool(t) for t in config.get("temperal_downsample", (False, True, True))
    ),
    residual=residual,
    patch_size=int(patch),
    video_channels=int(config.get("in_channels", 3)) // int(patch) ** 2,
    latents_mean=tuple(float(v) for v in config["latents_mean"]),
    latents_std=tuple(float(v) for v in config["latents_std"]),
  )
  fields.update(overrides)
  return WanVAEConfig(**fields)


# Fields of a ``WanVAEConfig`` that the weights' shapes determine; two
# configs with equal fields load the same tensors.
ARCHITECTURE_FIELDS = (
  "z_dim",
  "encoder_dim",
  "decoder_dim",
  "dim_mult",
  "num_res_blocks",
  "temporal_downsample",
  "residual",
  "patch_size",
  "video_channels",
)
# The released Wan VAEs (the others in ``VARIANTS`` are test-sized).
RELEASED_VARIANTS = ("wan2.2", "wan2.1")


def _encoder_entries(ckpt: Checkpoint, residual: bool) -> list[str]:
  """Key prefixes of the encoder's down path, in order."""
  pattern = (
    r"encoder\.downsamples\.(\d+)\.downsamples\.(\d+)\."
    if residual
    else r"encoder\.downsamples\.(\d+)\."
  )
  found = set()
  for key in ckpt:
    m = re.match(pattern, key)
    if m:
      found.add(tuple(int(g) for g in m.groups()))
  name = (
    "encoder.downsamples.{}.downsamples.{}"
    if residual
    else "encoder.downsamples.{}"
  )
  return [name.format(*idx) for idx in sorted(found)]


def config_from_shapes(ckpt: Checkpoint, **overrides) -> WanVAEConfig:
  """The architecture that an original-layout checkpoint's shapes give.

  Widths, stage multipliers, residual blocks per stage, which down stages
  halve time, the pixel patch size and ``z_dim`` are all read off the
  tensors (3 video channels assumed). The latent statistics are not in the
  weights: the released VAE's of the same ``z_dim`` (48: Wan2.2, 16:
  Wan2.1), else zero mean and unit std.

  Raises:
    ValueError: the shapes are not those of a Wan VAE (naming the key).
  """

  def shape(key):
    if key not in ckpt:
      raise ValueError(
        f"{ckpt.source}: no tensor {key!r}; not a Wan VAE in "
        "the original layout."
      )
    return ckpt.shape(key)

  encoder_dim, pixel_channels = shape("encoder.conv1.weight")[:2]
  z_dim = shape("conv2.weight")[0]
  patch = round((pixel_channels / 3) ** 0.5)
  if 3 * patch * patch != pixel_channels:
    raise ValueError(
      f"{ckpt.source}: encoder.conv1.weight takes "
      f"{pixel_channels} channels, not 3 * patch**2."
    )
  residual = any(
    re.match(r"encoder\.downsamples\.\d+\.downsamples\.", k) for k in ckpt
  )
  stages, temporal = [[]], []
  for prefix in _encoder_entries(ckpt, residual):
    if f"{prefix}.resample.1.weight" in ckpt:
      temporal.append(f"{prefix}.time_conv.weight" in ckpt)
      stages.append([])
    else:
      stages[-1].append(shape(f"{prefix}.residual.2.weight")[0])
  blocks = {len(s) for s in stages}
  if len(blocks) != 1 or 0 in blocks:
    raise ValueError(
      f"{ckpt.source}: encoder stages have "
      f"{[len(s) for s in stages]} residual blocks; a Wan VAE "
      "has the same number in every stage."
    )
  widths = [s[-1] for s in stages]
  if any(w % encoder_dim for w in widths):
    raise ValueError(
      f"{ckpt.source}: encoder stage widths {widths} are not "
      f"multiples of encoder.conv1's {encoder_dim}."
    )
  dim_mult = tuple(w // encoder_dim for w in widths)
  decoder_in = shape("decoder.conv1.weight")[0]
  if decoder_in % dim_mult[-1]:
    raise ValueError(
      f"{ckpt.source}: decoder.conv1.weight has {decoder_in} "
      f"channels, not a multiple of {dim_mult[-1]}."
    )
  stats = {
    48: (WAN22_LATENTS_MEAN, WAN22_LATENTS_STD),
    16: (WAN21_LATENTS_MEAN, WAN21_LATENTS_STD),
  }.get(z_dim, ((0.0,) * z_dim, (1.0,) * z_dim))
  fields = dict(
    name=f"derived-z{z_dim}",
    z_dim=z_dim,
    encoder_dim=encoder_dim,
    decoder_dim=decoder_in // dim_mult[-1],
    dim_mult=dim_mult,
    num_res_blocks=blocks.pop(),
    temporal_downsample=tuple(temporal),
    residual=residual,
    patch_size=patch,
    latents_mean=stats[0],
    latents_std=stats[1],
  )
  fields.update(overrides)
  return WanVAEConfig(**fields)


def matching_variant(cfg: WanVAEConfig) -> str | None:
  """The named variant with ``cfg``'s architecture (released ones first)."""
  names = sorted(VAE_VARIANTS, key=lambda n: n not in RELEASED_VARIANTS)
  for name in names:
    variant = VAE_VARIANTS[name]
    if all(getattr(variant, f) == getattr(cfg, f) for f in ARCHITECTURE_FIELDS):
      return name
  return None


def infer_original_config(ckpt: Checkpoint, **overrides) -> WanVAEConfig:
  """The config an original-layout checkpoint's shapes give: the named
  variant when they match one (Wan2.2 z48, Wan2.1 z16, ...), else the
  derived config (:func:`config_from_shapes`)."""
  derived = config_from_shapes(ckpt)
  name = matching_variant(derived)
  if name is not None:
    return WanVAEConfig.from_variant(name, **overrides)
  return derived.replace(**overrides)


def load_wan_vae(
  path: str | os.PathLike,
  cfg: WanVAEConfig | None = None,
  *,
  dtype: Any = None,
  mesh=None,
) -> WanVAE:
  """Builds a :class:`WanVAE` from an original or diffusers checkpoint.

  Args:
    path: ``Wan2.2_VAE.pth`` / ``Wan2.1_VAE.pth`` (any wrapper prefix or
      ``model_state`` nesting), a safetensors file, or a diffusers ``vae/``
      directory (its ``config.json`` gives the config when ``cfg`` is None).
    cfg: the architecture; inferred when None.
    dtype: parameter dtype to cast to (default: ``cfg.param_dtype``).
    mesh: place parameters by their logical axes on this mesh.

  Raises:
    CheckpointMismatchError: listing every missing, unexpected and
      mis-shaped key at once.
  """
  ckpt = open_vae_checkpoint(path)
  layout = detect_layout(list(ckpt))
  if cfg is None:
    config_file = pathlib.Path(path) / "config.json"
    if layout == "diffusers" and config_file.is_file():
      cfg = config_from_diffusers(json.loads(config_file.read_text()))
    elif layout == "original":
      cfg = infer_original_config(ckpt)
    else:
      raise ValueError(
        f"{path}: diffusers weights without a config.json; pass a WanVAEConfig."
      )
  if dtype is not None:
    cfg = cfg.replace(param_dtype=dtype)
  graphdef, abstract = nnx.split(
    nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(0)))
  )
  state = assign_lib.assign(
    abstract, keymaps(cfg, layout), ckpt, dtype=dtype, mesh=mesh
  )
  return nnx.merge(graphdef, state)


# ---------------------------------------------------------------------------
# Writing.


def export_tensors(
  model: WanVAE, layout: Layout = "original"
) -> Iterator[tuple[str, np.ndarray]]:
  """``(torch_key, array)`` pairs in the torch layout of ``layout``."""
  return assign_lib.export(nnx.state(model), keymaps(model.cfg, layout))


def save_wan_vae(
  model: WanVAE, path: str | os.PathLike, layout: Layout = "original"
) -> pathlib.Path:
  """Writes ``model`` atomically as ``.safetensors`` or ``.pth``.

  ``.pth`` in the original layout loads with DiffSynth's ``WanVideoVAE``
  (after its ``model.`` prefixing); ``.safetensors`` in the diffusers layout
  is ``diffusion_pytorch_model.safetensors`` of ``AutoencoderKLWan``.
  """
  path = pathlib.Path(path)
  items = export_tensors(model, layout)
  if path.suffix == ".safetensors":
    return assign_lib.save_safetensors(items, path)
  if path.suffix not in (".pth", ".pt"):
    raise ValueError(f"{path}: export as .safetensors or .pth/.pt.")
  import torch

  tensors = {k: torch.from_numpy(np.array(v)) for k, v in items}
  with atomic.atomic_path(path, suffix=".tmp") as tmp:
    torch.save(tensors, tmp)
  return path


def diffusers_config(cfg: WanVAEConfig) -> dict[str, Any]:
  """``AutoencoderKLWan`` constructor arguments for ``cfg``."""
  return dict(
    base_dim=cfg.encoder_dim,
    decoder_base_dim=cfg.decoder_dim,
    z_dim=cfg.z_dim,
    dim_mult=list(cfg.dim_mult),
    num_res_blocks=cfg.num_res_blocks,
    attn_scales=[],
    temperal_downsample=list(cfg.temporal_downsample),
    dropout=0.0,
    latents_mean=list(cfg.latents_mean),
    latents_std=list(cfg.latents_std),
    is_residual=cfg.residual,
    in_channels=cfg.pixel_channels,
    out_channels=cfg.pixel_channels,
    patch_size=cfg.patch_size if cfg.patch_size > 1 else None,
    scale_factor_temporal=cfg.temporal_factor,
    scale_factor_spatial=cfg.spatial_factor,
  )
