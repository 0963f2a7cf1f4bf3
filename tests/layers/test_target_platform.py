"""Attention follows the platform of the mesh it is traced under, so a TPU
program compiled from a CPU host gets the splash kernel, not XLA's
materialised logits."""

import types

import jax
import jax.numpy as jnp
import pytest

from kiwi_jax import sharding
from kiwi_jax.layers import attention, splash


def _fake_mesh(platform):
  return types.SimpleNamespace(
    empty=False, abstract_device=types.SimpleNamespace(platform=platform)
  )


def test_target_platform_is_the_mesh_devices_platform(monkeypatch):
  assert sharding.target_platform() == jax.default_backend()
  mesh = sharding.make_mesh({"data": 2}, jax.devices()[:2])
  with sharding.use_mesh(mesh):
    assert sharding.target_platform() == "cpu"
  monkeypatch.setattr(
    jax.sharding, "get_abstract_mesh", lambda: _fake_mesh("tpu")
  )
  assert sharding.target_platform() == "tpu"


@pytest.mark.skipif(
  splash.unavailable_reason() is not None,
  reason="this jax has no usable splash attention",
)
def test_none_chooses_splash_for_a_tpu_mesh(monkeypatch):
  q = jnp.zeros((1, 8, 2, 16), jnp.bfloat16)
  assert attention.choose_implementation(q, q) == "xla"  # CPU
  monkeypatch.setattr(
    jax.sharding, "get_abstract_mesh", lambda: _fake_mesh("tpu")
  )
  assert attention.choose_implementation(q, q) == "splash"
  assert (
    attention.choose_implementation(
      q, q, segment_ids=jnp.zeros((1, 8), jnp.int32)
    )
    == "splash"
  )
