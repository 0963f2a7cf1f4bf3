"""Parity with diffusers ``WanTransformer3DModel`` through the real converter,
and the diffusers -> JAX -> diffusers round trip."""

import functools

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

pytestmark = pytest.mark.torch

# Wan2.2-TI2V-like: 48 latent channels, per-token timesteps. Wan2.1-like: 16
# channels, 3 heads of 12 (RoPE split 4/4/4), 3 layers.
CONFIGS = {
  "wan22": dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=24,
    in_channels=48,
    out_channels=48,
    text_dim=32,
    freq_dim=32,
    ffn_dim=64,
    num_layers=2,
    rope_max_seq_len=32,
  ),
  "wan21": dict(
    patch_size=(1, 2, 2),
    num_attention_heads=3,
    attention_head_dim=12,
    in_channels=16,
    out_channels=16,
    text_dim=24,
    freq_dim=16,
    ffn_dim=56,
    num_layers=3,
    rope_max_seq_len=32,
  ),
}


def _randomize(module, seed):
  """Replaces every weight (norm weights too) so no term is trivially 1/0."""
  import torch

  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      noise = torch.randn(p.shape, generator=gen) * 0.2
      p.copy_(noise + 1.0 if "norm" in name else noise)


@functools.cache
def _saved_model(kind, directory):
  from diffusers import WanTransformer3DModel

  model = WanTransformer3DModel(
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    **CONFIGS[kind],
  ).eval()
  _randomize(model, seed=len(kind))
  model.save_pretrained(directory)
  return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  root = tmp_path_factory.mktemp("wan_diffusers")

  def get(kind):
    directory = str(root / kind)
    return _saved_model(kind, directory), directory

  return get


@functools.partial(nnx.jit, static_argnames=("context_is_text",))
def _velocity(model, latents, timestep, context, context_is_text=False):
  return model(
    latents, timestep, context, context_is_text=context_is_text
  ).velocity


def _compare(torch_model, jax_model, latents, timestep, text):
  import torch

  with torch.no_grad():
    want = torch_model(
      torch.from_numpy(latents).permute(0, 4, 1, 2, 3),
      torch.from_numpy(timestep),
      torch.from_numpy(text),
    ).sample
  want = want.permute(0, 2, 3, 4, 1).numpy()
  got = np.asarray(
    _velocity(
      jax_model,
      jnp.asarray(latents),
      jnp.asarray(timestep),
      jnp.asarray(text),
      context_is_text=True,
    )
  )
  err = float(np.max(np.abs(got - want)))
  print(f"max abs error {err:.2e} (output scale {np.abs(want).max():.2f})")
  assert err <= 1e-4


def _load(directory):
  from kiwi_jax.converters import wan_dit

  cfg = wan_dit.config_from_diffusers(directory)
  return wan_dit.load_wan_dit(directory, cfg)


def test_wan22_per_token_timesteps(saved):
  torch_model, directory = saved("wan22")
  model = _load(directory)
  rng = np.random.default_rng(0)
  b, t, h, w = 2, 3, 6, 10
  latents = rng.standard_normal((b, t, h, w, 48), dtype=np.float32)
  text = rng.standard_normal((b, 7, 32), dtype=np.float32)
  # TI2V: the clean first latent frame gets timestep 0, the rest t.
  per_frame = np.array([[0.0, 640.0, 640.0], [0.0, 37.5, 37.5]], np.float32)
  timestep = np.repeat(per_frame, (h // 2) * (w // 2), axis=1)
  _compare(torch_model, model, latents, timestep, text)
  _compare(
    torch_model, model, latents, np.array([999.0, 1.0], np.float32), text
  )


def test_wan21_scalar_timesteps(saved):
  torch_model, directory = saved("wan21")
  model = _load(directory)
  assert model.cfg.num_layers == 3 and model.cfg.in_channels == 16
  rng = np.random.default_rng(1)
  latents = rng.standard_normal((1, 5, 6, 14, 16), dtype=np.float32)
  text = rng.standard_normal((1, 11, 24), dtype=np.float32)
  _compare(torch_model, model, latents, np.array([483.0], np.float32), text)


def test_roundtrip_diffusers_jax_diffusers(saved, tmp_path):
  from safetensors.numpy import load_file

  from kiwi_jax.converters import wan_dit

  _, directory = saved("wan21")
  model = _load(directory)
  wan_dit.save_diffusers(model, tmp_path / "out")
  name = "diffusion_pytorch_model.safetensors"
  original = load_file(f"{directory}/{name}")
  exported = load_file(str(tmp_path / "out" / name))
  assert sorted(original) == sorted(exported)
  for key, value in original.items():
    assert exported[key].dtype == value.dtype, key
    np.testing.assert_array_equal(exported[key], value, err_msg=key)
  again = wan_dit.config_from_diffusers(tmp_path / "out")
  assert again == model.cfg
