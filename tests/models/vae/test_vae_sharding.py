"""Wan VAE on a mesh: the batch-sharded result equals the unsharded one."""

import jax
import numpy as np
import pytest

from kiwi_jax import sharding
from kiwi_jax.models.vae import WanVAEConfig, init_wan_vae, tiling


def _video(frames, h, w, seed=0):
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, (1, frames, h, w, 3)).astype(np.float32)


@pytest.mark.slow
def test_batch_sharded_equals_unsharded():
  """Batch split over 2 fake devices (mesh axis ``data``) gives the
  unsharded result; activations carry logical-axis constraints."""
  runner = tiling.VAERunner(
    init_wan_vae(WanVAEConfig.from_variant("wan2.2-tiny"), seed=1),
    compiler_options={"xla_backend_optimization_level": 0},
  )
  video = np.concatenate([_video(5, 32, 48, seed=5), _video(5, 32, 48, 6)])
  want_z = np.asarray(runner.encode(video))
  want_x = np.asarray(runner.decode(want_z))
  mesh = sharding.make_mesh({"data": 2}, devices=jax.devices()[:2])
  with sharding.use_mesh(mesh):
    z = runner.encode(sharding.host_to_global(video, mesh))
    x = runner.decode(sharding.host_to_global(want_z, mesh))
  assert len(z.sharding.device_set) == 2
  np.testing.assert_allclose(np.asarray(z), want_z, rtol=0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(x), want_x, rtol=0, atol=1e-5)
