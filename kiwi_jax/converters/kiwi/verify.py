"""Compare a converted Kiwi-Edit model with the PyTorch stack, per component.

The torch side is built from the *source* checkpoint (canonical tensors,
LoRA merged): diffusers ``WanTransformer3DModel`` and ``AutoencoderKLWan``,
transformers ``Qwen2_5_VLModel`` and the Kiwi pieces restated in
:mod:`kiwi_jax.converters.kiwi.torch_model`. One fixed, seeded input per component:

* ``<mode>/context``: a prompt with a source video (image in image mode), the
  instruction, in reference mode a ref image, the queries and
  ``<|im_end|>\\n``, through the MLLM, readout and connectors;
* ``<mode>/velocity``: one denoising step on the torch context, with source
  injection (and ref tokens in reference mode);
* ``vae/encode``, ``vae/decode``: a 5-frame clip at one latent tile.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from kiwi_jax.converters import wan_vae
from kiwi_jax.converters.kiwi.torch_model import TorchKiwi, canonical_tensors
from kiwi_jax.models.mllm.rope_index import mrope_position_ids
from kiwi_jax.models.mllm.vision import vision_metadata

IMAGE_GRID, VIDEO_GRID = (1, 4, 6), (2, 4, 4)


def _prompt(cfg, mode, rng):
  m = cfg.mllm
  ids = [m.vision_start_token_id]
  images, videos = [], []
  grid = IMAGE_GRID if mode == "image" else VIDEO_GRID
  pad = m.image_token_id if mode == "image" else m.video_token_id
  ids += [pad] * (int(np.prod(grid)) // 4) + [m.vision_end_token_id]
  (images if mode == "image" else videos).append(grid)
  ids += list(rng.integers(14, 100, size=5))
  if mode == "reference":
    ids += [m.vision_start_token_id]
    ids += [m.image_token_id] * (int(np.prod(IMAGE_GRID)) // 4)
    ids += [m.vision_end_token_id]
    images.append(IMAGE_GRID)
  ids += [m.query_token_id] * cfg.num_queries(mode)
  # Two closing tokens after the queries, as <|im_end|> "\n" in the real
  # prompt (the readout takes the last N positions, reference §2.4).
  ids += list(rng.integers(14, 100, size=2))
  ids = np.asarray(ids)
  pix = {
    k: [
      rng.standard_normal((int(np.prod(g)), 1176)).astype(np.float32)
      for g in gs
    ]
    for k, gs in (("image", images), ("video", videos))
  }
  pos = mrope_position_ids(
    ids,
    image_grid_thw=images,
    video_grid_thw=videos,
    image_token_id=m.image_token_id,
    video_token_id=m.video_token_id,
    vision_start_token_id=m.vision_start_token_id,
    tokens_per_second=m.vision.tokens_per_second,
  )
  return ids, images, videos, pix, pos


def _contexts(model, tk, mode, rng):
  cfg = model.cfg
  ids, images, videos, pix, pos = _prompt(cfg, mode, rng)
  kw = {"position_ids": torch.from_numpy(pos.astype(np.int64))[:, None]}
  if images:
    kw["pixel_values"] = torch.from_numpy(np.concatenate(pix["image"]))
    kw["image_grid_thw"] = torch.tensor(images)
  if videos:
    kw["pixel_values_videos"] = torch.from_numpy(np.concatenate(pix["video"]))
    kw["video_grid_thw"] = torch.tensor(videos)
    kw["second_per_grid_ts"] = torch.ones(len(videos))
  types = np.zeros_like(ids)
  types[ids == cfg.mllm.image_token_id] = 1
  types[ids == cfg.mllm.video_token_id] = 2
  kw["mm_token_type_ids"] = torch.from_numpy(types)[None]
  want = tk.encode(torch.from_numpy(ids)[None], mode, **kw).numpy()
  meta = vision_metadata(images + videos, cfg.mllm.vision)
  pixels = np.concatenate(pix["image"] + pix["video"])
  # Window-aligned slots: zero rows after the real patches.
  pixels = np.pad(
    pixels, ((0, meta["positions"].shape[0] - len(pixels)), (0, 0))
  )
  inputs = {
    "input_ids": jnp.asarray(ids)[None],
    "position_ids": jnp.asarray(pos)[:, None],
    "pixel_values": jnp.asarray(pixels)[None],
    "vision_meta": {k: jnp.asarray(v)[None] for k, v in meta.items()},
  }
  n_ref = int(np.prod(IMAGE_GRID)) // 4 if mode == "reference" else 0
  got = nnx.jit(lambda m, x: m.encode_conditions(x, mode, ref_tokens=n_ref))(
    model, inputs
  ).context
  return np.asarray(got), want


def _velocity(model, tk, mode, context, rng):
  cfg = model.cfg
  c = cfg.dit.in_channels
  shape = (1, 2, 4, 6, c)
  lat = rng.standard_normal(shape).astype(np.float32)
  src = rng.standard_normal(shape).astype(np.float32)
  ref = rng.standard_normal((1, 1) + shape[2:]).astype(np.float32)
  t, sigma = np.array([700.0], np.float32), np.array([0.7], np.float32)
  kw = {}
  if cfg.dit.source_condition:
    kw.update(source_latents=src, sigma=sigma)
  if mode == "reference":
    kw["ref_latents"] = ref
  got = nnx.jit(lambda m, *a, **k: m.denoise_step(*a, **k))(
    model, lat, t, jnp.asarray(context), **kw
  )

  def tt(x):
    return torch.from_numpy(np.moveaxis(x, -1, 1).copy())

  want = tk.velocity(
    tt(lat),
    torch.from_numpy(t),
    torch.from_numpy(context),
    source=tt(src) if "source_latents" in kw else None,
    sigma=torch.from_numpy(sigma),
    ref=tt(ref) if mode == "reference" else None,
    ref_pad_first=cfg.dit.ref_pad_first,
  ).numpy()
  return np.asarray(got), np.moveaxis(want, 1, -1)


def _torch_vae(ckpt, cfg):
  """``AutoencoderKLWan`` loaded from the source's original-name tensors."""
  from diffusers import AutoencoderKLWan

  orig = {km.jax_path: km for km in wan_vae.keymaps(cfg, "original")}
  diff = {km.jax_path: km for km in wan_vae.keymaps(cfg, "diffusers")}
  tensors = canonical_tensors(ckpt, "vae.")
  sd = {}
  for path, km in orig.items():
    value = km.transform.forward(tensors["vae." + km.torch_key])
    sd[diff[path].torch_key] = torch.from_numpy(
      np.ascontiguousarray(diff[path].transform.inverse(value))
    )
  vae = AutoencoderKLWan(**wan_vae.diffusers_config(cfg)).eval()
  vae.load_state_dict(sd, strict=True)
  return vae


def _vae(model, ckpt, rng):
  cfg = model.cfg.vae
  f = cfg.spatial_factor
  video = rng.uniform(-1, 1, (1, 5, 2 * f, 2 * f, 3)).astype(np.float32)
  vae = _torch_vae(ckpt, cfg)
  mean = np.asarray(cfg.latents_mean, np.float32)
  std = np.asarray(cfg.latents_std, np.float32)
  with torch.no_grad():
    x = torch.from_numpy(np.moveaxis(video, -1, 1).copy())
    mu = np.moveaxis(vae.encode(x).latent_dist.mode().numpy(), 1, -1)
    want_z = (mu - mean) / std
    dec = (
      vae.decode(
        torch.from_numpy(np.moveaxis(want_z * std + mean, -1, 1).copy())
      )
      .sample.clamp(-1, 1)
      .numpy()
    )
  got_z = np.asarray(nnx.jit(lambda m, v: m.encode_video(v))(model, video))
  got_v = np.asarray(
    nnx.jit(lambda m, z: m.decode_latents(z))(model, jnp.asarray(want_z))
  )
  return {
    "vae/encode": (got_z, want_z),
    "vae/decode": (got_v, np.moveaxis(dec, 1, -1)),
  }


def verify(
  model, sources, components=("mllm", "dit", "vae"), seed=0
) -> dict[str, float]:
  """Max abs error per component between ``model`` and the torch stack."""
  rng = np.random.default_rng(seed)
  cfg = model.cfg
  errors = {}
  if "mllm" in components or "dit" in components:
    tk = TorchKiwi(sources.checkpoint, cfg)
    for mode in cfg.modes():
      got, want = _contexts(model, tk, mode, rng)
      if "mllm" in components:
        errors[f"{mode}/context"] = float(np.abs(got - want).max())
      if "dit" in components:
        got, want = _velocity(model, tk, mode, want, rng)
        errors[f"{mode}/velocity"] = float(np.abs(got - want).max())
  if "vae" in components:
    for name, (got, want) in _vae(model, sources.checkpoint, rng).items():
      errors[name] = float(np.abs(got - want).max())
  jax.clear_caches()
  return errors
