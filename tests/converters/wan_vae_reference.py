"""Shared helpers for the Wan VAE tests against diffusers ``AutoencoderKLWan``.

The reference-side pieces (tile split, blend masks, DiffSynth's unclamped
per-tile decode) are re-stated here from reference §5.1 and DiffSynth's
``WanVideoVAE.tiled_encode/tiled_decode`` independently of
``kiwi_jax.models.vae.tiling``, so the tests compare two implementations.
"""

from __future__ import annotations

import numpy as np
import torch

from kiwi_jax.converters.wan_vae import diffusers_config
from kiwi_jax.models.vae import WanVAEConfig


def tiny_config(style: str) -> WanVAEConfig:
  """Tiny 2.2- or 2.1-style config with non-trivial latent statistics."""
  base = WanVAEConfig.from_variant(f"{style}-tiny")
  rng = np.random.default_rng(7)
  return base.replace(
    latents_mean=tuple(rng.uniform(-0.5, 0.5, base.z_dim).tolist()),
    latents_std=tuple(rng.uniform(0.5, 2.0, base.z_dim).tolist()),
  )


def build_diffusers(cfg: WanVAEConfig, seed: int = 0):
  """A random ``AutoencoderKLWan`` in ``cfg``'s shape (gammas randomised)."""
  from diffusers import AutoencoderKLWan

  torch.manual_seed(seed)
  vae = AutoencoderKLWan(**diffusers_config(cfg)).eval()
  with torch.no_grad():
    for name, p in vae.named_parameters():
      if name.endswith("gamma"):
        p.uniform_(0.5, 1.5)
  return vae


def to_torch_video(video: np.ndarray) -> torch.Tensor:
  """[B, T, H, W, C] -> [B, C, T, H, W]."""
  return torch.from_numpy(np.ascontiguousarray(video.transpose(0, 4, 1, 2, 3)))


def to_jax_layout(x: torch.Tensor) -> np.ndarray:
  """[B, C, T, H, W] -> [B, T, H, W, C]."""
  return x.detach().numpy().transpose(0, 2, 3, 4, 1)


def reference_encode(vae, cfg: WanVAEConfig, video: np.ndarray) -> np.ndarray:
  """Normalised mu, ``(mu - mean) * (1/std)`` as DiffSynth computes it."""
  with torch.no_grad():
    mu = vae.encode(to_torch_video(video)).latent_dist.mode()
  mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)
  inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)
  return to_jax_layout((mu - mean) * inv_std)


def reference_decode(
  vae, cfg: WanVAEConfig, latents: np.ndarray, clamp: bool = True
) -> np.ndarray:
  """Video from normalised latents; unclamped like DiffSynth's per-tile
  ``model.decode`` when ``clamp=False`` (diffusers' own decode clamps)."""
  z = torch.from_numpy(np.ascontiguousarray(latents.transpose(0, 4, 1, 2, 3)))
  mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)
  inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)
  z = z / inv_std + mean
  with torch.no_grad():
    if clamp:
      return to_jax_layout(vae.decode(z).sample)
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

    vae.clear_cache()
    x = vae.post_quant_conv(z)
    outs = []
    for i in range(z.shape[2]):
      vae._conv_idx = [0]
      outs.append(
        vae.decoder(
          x[:, :, i : i + 1],
          feat_cache=vae._feat_map,
          feat_idx=vae._conv_idx,
          first_chunk=i == 0,
        )
      )
    out = torch.cat(outs, 2)
    if cfg.patch_size > 1:
      out = unpatchify(out, cfg.patch_size)
    vae.clear_cache()
    return to_jax_layout(out)


def _split(size, tile, stride):
  spans = []
  for start in range(0, size, stride):
    if start - stride >= 0 and start - stride + tile >= size:
      continue
    spans.append((start, start + tile))
  return spans


def _ramp(length, first, last, border):
  x = np.ones(length, np.float32)
  if not first:
    x[:border] = (np.arange(border) + 1) / border
  if not last:
    x[-border:] = np.flip((np.arange(border) + 1) / border)
  return x


def reference_tiled(
  fn,
  data: np.ndarray,
  tile,
  stride,
  out_factor: float,
  border,
  out_channels: int,
) -> np.ndarray:
  """DiffSynth's tile loop: ``fn`` on each crop of ``data`` [B,T,H,W,C],
  outputs placed at ``start * out_factor`` and averaged with ramp masks."""
  _, _, h, w, _ = data.shape
  values = weight = None
  for h0, h1 in _split(h, tile[0], stride[0]):
    for w0, w1 in _split(w, tile[1], stride[1]):
      out = fn(data[:, :, h0:h1, w0:w1])
      if values is None:
        b, t = out.shape[:2]
        values = np.zeros(
          (b, t, int(h * out_factor), int(w * out_factor), out_channels),
          np.float64,
        )
        weight = np.zeros(values.shape[2:4], np.float64)
      mh = _ramp(out.shape[2], h0 == 0, h1 >= h, border[0])
      mw = _ramp(out.shape[3], w0 == 0, w1 >= w, border[1])
      mask = np.minimum(mh[:, None], mw[None, :])
      y0, x0 = int(h0 * out_factor), int(w0 * out_factor)
      values[:, :, y0 : y0 + out.shape[2], x0 : x0 + out.shape[3]] += (
        out * mask[None, None, :, :, None]
      )
      weight[y0 : y0 + out.shape[2], x0 : x0 + out.shape[3]] += mask
  return values / weight[None, None, :, :, None]
