"""RoPE helpers and the timestep sinusoid against numpy/torch restatements."""

import jax.numpy as jnp
import numpy as np
import pytest

from kiwi_jax.layers import rope, timestep_sinusoid

RNG = np.random.default_rng(0)


def test_wan_axis_split_for_head_dim_128():
  assert rope.wan_rope_axis_dims(128) == (44, 42, 42)


def test_wan_rope_matches_complex_float64_reference():
  f, h, w, heads, hd = 3, 5, 7, 2, 24
  x = RNG.normal(size=(2, f * h * w, heads, hd)).astype(np.float32)
  pos = rope.wan_grid_positions(f, h, w)
  cos, sin = rope.wan_rope_cos_sin(*pos, hd)
  got = rope.apply_interleaved_rope(jnp.asarray(x), cos, sin)

  # Reference: precompute_freqs_cis_3d + rope_apply, float64 complex.
  dt, dh, dw = rope.wan_rope_axis_dims(hd)

  def table(k, n):
    freqs = 1.0 / 10000 ** (np.arange(0, k, 2)[: k // 2] / k)
    return np.exp(1j * np.outer(np.arange(n), freqs))

  tt, th, tw = table(dt, f), table(dh, h), table(dw, w)
  freqs = np.concatenate(
    [
      np.broadcast_to(tt[:, None, None], (f, h, w, tt.shape[-1])),
      np.broadcast_to(th[None, :, None], (f, h, w, th.shape[-1])),
      np.broadcast_to(tw[None, None, :], (f, h, w, tw.shape[-1])),
    ],
    -1,
  ).reshape(f * h * w, 1, -1)
  xc = x.astype(np.float64).reshape(2, f * h * w, heads, hd // 2, 2)
  xc = xc[..., 0] + 1j * xc[..., 1]
  out = xc * freqs
  want = np.stack([out.real, out.imag], -1).reshape(x.shape)
  np.testing.assert_allclose(got, want, atol=2e-6)


def test_wan_frame_offset_shifts_time_axis_only():
  a = rope.wan_rope_angles(*rope.wan_grid_positions(2, 3, 3, 1), 24)
  b = rope.wan_rope_angles(*rope.wan_grid_positions(3, 3, 3), 24)[9:]
  np.testing.assert_array_equal(a, b)


def _np_mrope(pos, hd, theta, section):
  inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
  freqs = pos[..., None].astype(np.float64) * inv  # [3, B, T, hd/2]
  emb = np.concatenate([freqs, freqs], -1)
  chunks = np.split(emb, np.cumsum(list(section) * 2)[:-1], axis=-1)
  emb = np.concatenate([c[i % 3] for i, c in enumerate(chunks)], -1)
  return np.cos(emb), np.sin(emb)


def test_mrope_matches_chunked_section_reference():
  section, hd = (2, 3, 3), 16
  pos = RNG.integers(0, 50, size=(3, 2, 11))
  cos, sin = rope.mrope_cos_sin(jnp.asarray(pos), hd, 1e6, section)
  want_cos, want_sin = _np_mrope(pos, hd, 1e6, section)
  np.testing.assert_allclose(cos, want_cos, atol=2e-5)
  np.testing.assert_allclose(sin, want_sin, atol=2e-5)
  with pytest.raises(ValueError, match="must sum"):
    rope.mrope_cos_sin(jnp.asarray(pos), hd, 1e6, (2, 2, 2))


def test_rotate_half_matches_reference_formula():
  x = RNG.normal(size=(2, 7, 3, 10)).astype(np.float32)
  pos = np.arange(7)
  cos, sin = rope.rope_1d_cos_sin(jnp.asarray(pos), 10)
  got = rope.apply_rotary_half(jnp.asarray(x), cos, sin)
  c, s = np.asarray(cos)[:, None], np.asarray(sin)[:, None]
  rot = np.concatenate([-x[..., 5:], x[..., :5]], -1)
  np.testing.assert_allclose(got, x * c + rot * s, atol=1e-6)
  # Position 0 is the identity.
  np.testing.assert_allclose(got[:, 0], x[:, 0], atol=1e-7)


@pytest.mark.torch
def test_sinusoid_matches_diffusers():
  import torch
  from diffusers.models.embeddings import get_timestep_embedding

  t = np.array([0.0, 4.98, 500.0, 996.0, 1000.0], np.float32)
  want = get_timestep_embedding(
    torch.from_numpy(t), 256, flip_sin_to_cos=True, downscale_freq_shift=0
  ).numpy()
  got = timestep_sinusoid(jnp.asarray(t), 256)
  # Both are fp32 angle products of t up to 1000: ~1e-4 apart at most.
  np.testing.assert_allclose(got, want, atol=1e-4)
  # Against the float64 DiffSynth formula (sinusoidal_embedding_1d).
  half = 128
  f64 = np.power(10000.0, -np.arange(half) / half)
  args = t.astype(np.float64)[:, None] * f64
  exact = np.concatenate([np.cos(args), np.sin(args)], -1)
  np.testing.assert_allclose(got, exact, atol=1e-4)


def test_sinusoid_per_token_shape_and_order():
  t = jnp.asarray([[0.0, 1.0, 2.0]])
  emb = timestep_sinusoid(t, 8)
  assert emb.shape == (1, 3, 8)
  np.testing.assert_allclose(emb[0, 0], [1, 1, 1, 1, 0, 0, 0, 0])
  with pytest.raises(ValueError, match="even"):
    timestep_sinusoid(t, 7)
