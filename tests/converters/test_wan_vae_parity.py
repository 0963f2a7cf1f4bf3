"""Parity of the JAX Wan VAE with diffusers ``AutoencoderKLWan`` (fp32, random
weights, converted through ``kiwi_jax.converters.wan_vae`` from a ``save_pretrained``
directory), in tiny 2.2-style (z48-like: patchify, residual stages) and
2.1-style configs, for 1, 5, 9 and 17 frames; plus tiled encode/decode
against DiffSynth's tiling re-stated over diffusers tiles.
"""

import numpy as np
import pytest
import wan_vae_reference as ref

from kiwi_jax.converters.wan_vae import load_wan_vae
from kiwi_jax.models.vae.tiling import VAERunner

pytestmark = [pytest.mark.torch, pytest.mark.slow]

ENCODE_ATOL = 1e-4
DECODE_ATOL = 1e-3
# Faster XLA:CPU compiles (LLVM -O0); numerics are unchanged.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@pytest.fixture(scope="module", params=["wan2.2", "wan2.1"])
def pair(request, tmp_path_factory):
  cfg = ref.tiny_config(request.param)
  torch_vae = ref.build_diffusers(cfg)
  path = tmp_path_factory.mktemp(f"{request.param}_diffusers")
  torch_vae.save_pretrained(path)
  model = load_wan_vae(path)  # config from config.json, weights converted
  assert model.cfg.latents_mean == pytest.approx(cfg.latents_mean)
  return cfg, torch_vae, VAERunner(model, compiler_options=FAST_COMPILE)


def _video(frames, h, w, seed=0):
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, (1, frames, h, w, 3)).astype(np.float32)


@pytest.mark.parametrize("frames", [1, 5, 9, 17])
def test_encode_decode_match_diffusers(pair, frames):
  cfg, torch_vae, runner = pair
  video = _video(frames, 32, 48, seed=frames)
  want = ref.reference_encode(torch_vae, cfg, video)
  got = np.asarray(runner.encode(video))
  assert (
    got.shape
    == want.shape
    == (
      1,
      (frames - 1) // 4 + 1,
      32 // cfg.spatial_factor,
      48 // cfg.spatial_factor,
      cfg.z_dim,
    )
  )
  np.testing.assert_allclose(got, want, rtol=0, atol=ENCODE_ATOL)

  # Decode the reference latents so both sides start from the same input.
  want_video = ref.reference_decode(torch_vae, cfg, want)
  got_video = np.asarray(runner.decode(want))
  assert got_video.shape == video.shape
  np.testing.assert_allclose(got_video, want_video, rtol=0, atol=DECODE_ATOL)


@pytest.mark.parametrize("pair", ["wan2.2"], indirect=True)
def test_tiled_matches_reference_tiling(pair):
  """Tile split, ramp masks and blending against DiffSynth's procedure run
  over diffusers tiles: a 3x3 grid with overlap whose last column is cut
  short by the border, as at 720p (the tiling code is the same for both
  VAEs, so the 2.2 style with its pixel patchify is the one run)."""
  cfg, torch_vae, runner = pair
  f = cfg.spatial_factor
  # Tiles of the same pixel size as the untiled test (32x48) reuse its
  # compiled chunk functions.
  tile, stride = (32 // f, 48 // f), (16 // f, 32 // f)
  video = _video(5, 64, 96, seed=3)
  want = ref.reference_tiled(
    lambda crop: ref.reference_encode(torch_vae, cfg, crop),
    video,
    (tile[0] * f, tile[1] * f),
    (stride[0] * f, stride[1] * f),
    1 / f,
    (tile[0] - stride[0], tile[1] - stride[1]),
    cfg.z_dim,
  )
  got = np.asarray(
    runner.encode(video, tiled=True, tile_size=tile, tile_stride=stride)
  )
  np.testing.assert_allclose(got, want, rtol=0, atol=ENCODE_ATOL)

  latents = ref.reference_encode(torch_vae, cfg, video)
  want_video = np.clip(
    ref.reference_tiled(
      lambda crop: ref.reference_decode(torch_vae, cfg, crop, clamp=False),
      latents,
      tile,
      stride,
      f,
      ((tile[0] - stride[0]) * f, (tile[1] - stride[1]) * f),
      3,
    ),
    -1,
    1,
  )
  got_video = np.asarray(
    runner.decode(latents, tiled=True, tile_size=tile, tile_stride=stride)
  )
  np.testing.assert_allclose(got_video, want_video, rtol=0, atol=DECODE_ATOL)
