"""WanDiT: shapes, full-size parameter counts, Kiwi paths, remat, errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kiwi_jax.models.dit import (
  REMAT_POLICIES,
  ConditionalEmbedder,
  WanDiT,
  WanDiTConfig,
  parameter_count,
  patchify,
  unpatchify,
)

# Reference §1.1 / 1.2 ([ran] counts of WanModel) and 1.7 (592,896 per 5B
# conditional embedder; 14B: 5120 * 16 * 4 + 5120).
FULL_SIZE = {
  "wan2.2-ti2v-5b": (4_999_787_712, 592_896),
  "wan2.1-t2v-14b": (14_288_491_584, 332_800),
}


@functools.partial(nnx.jit, static_argnames=("context_is_text",))
def _velocity(model, latents, timestep, context, **kwargs):
  # One compilation per test instead of op-by-op dispatch (slow on CPU).
  return model(latents, timestep, context, **kwargs).velocity


def _tiny(**kw):
  return WanDiTConfig.from_variant("tiny", **kw)


def _inputs(b=1, t=5, h=6, w=14, c=48, seed=0):
  k = jax.random.split(jax.random.key(seed), 3)
  latents = jax.random.normal(k[0], (b, t, h, w, c))
  context = jax.random.normal(k[1], (b, 7, 48))
  timestep = jnp.linspace(100.0, 900.0, b)
  return latents, timestep, context


@pytest.mark.parametrize("name", sorted(FULL_SIZE))
def test_full_size_parameter_counts(name):
  stock, per_embedder = FULL_SIZE[name]
  cfg = WanDiTConfig.from_variant(name)
  model = nnx.eval_shape(lambda: WanDiT(cfg, rngs=nnx.Rngs(0)))
  count = parameter_count(model)
  print(f"{name}: {count:,} parameters")
  assert count == stock
  kiwi = nnx.eval_shape(
    lambda: WanDiT(
      cfg.replace(source_condition=True, reference_condition=True),
      rngs=nnx.Rngs(0),
    )
  )
  assert parameter_count(kiwi) == stock + 2 * per_embedder
  blocks = nnx.state(model.blocks)
  assert blocks["self_attn"]["q"]["kernel"].shape == (
    cfg.num_layers,
    cfg.dim,
    cfg.dim,
  )
  assert model.head.proj.kernel.shape == (cfg.dim, cfg.out_patch_features)


def test_patchify_roundtrip_and_order():
  x = jnp.arange(2 * 3 * 4 * 6 * 5, dtype=jnp.float32).reshape(2, 3, 4, 6, 5)
  tokens = patchify(x, (1, 2, 2))
  assert tokens.shape == (2, 3, 2, 3, 20)
  # Channel fastest inside a patch: (pt, ph, pw, c).
  np.testing.assert_array_equal(tokens[0, 0, 0, 0, :5], x[0, 0, 0, 0])
  np.testing.assert_array_equal(tokens[0, 0, 0, 0, 5:10], x[0, 0, 0, 1])
  np.testing.assert_array_equal(tokens[0, 0, 0, 0, 10:15], x[0, 0, 1, 0])
  back = unpatchify(tokens.reshape(2, 18, 20), (3, 2, 3), (1, 2, 2))
  np.testing.assert_array_equal(back, x)


def test_forward_shapes_prime_grid():
  model = WanDiT(
    _tiny(source_condition=True, reference_condition=True), rngs=nnx.Rngs(0)
  )
  latents, timestep, context = _inputs(b=2)
  out = _velocity(
    model,
    latents,
    timestep,
    context,
    source_latents=latents,
    sigma=jnp.array([0.3, 0.7]),
    ref_latents=latents[:, :1],
  )
  assert out.shape == latents.shape
  assert bool(jnp.all(jnp.isfinite(out)))


def test_zero_init_source_condition_is_identity():
  model = WanDiT(_tiny(source_condition=True), rngs=nnx.Rngs(1))
  latents, timestep, context = _inputs()
  plain = _velocity(model, latents, timestep, context)
  with_src = _velocity(
    model,
    latents,
    timestep,
    context,
    source_latents=latents * 3,
    sigma=jnp.array([0.9]),
  )
  np.testing.assert_array_equal(plain, with_src)


def test_source_scaled_by_sigma():
  cfg = _tiny(source_condition=True)
  model = WanDiT(cfg, rngs=nnx.Rngs(1))
  model.vae_condition = ConditionalEmbedder(
    cfg.in_channels, cfg.dim, cfg.patch_size, zero_init=False, rngs=nnx.Rngs(5)
  )
  latents, timestep, context = _inputs()
  plain = _velocity(model, latents, timestep, context)
  zero_sigma = _velocity(
    model,
    latents,
    timestep,
    context,
    source_latents=latents,
    sigma=jnp.array([0.0]),
  )
  some_sigma = _velocity(
    model,
    latents,
    timestep,
    context,
    source_latents=latents,
    sigma=jnp.array([0.5]),
  )
  np.testing.assert_allclose(plain, zero_sigma, atol=1e-6)
  assert float(jnp.max(jnp.abs(plain - some_sigma))) > 1e-3


def test_per_token_timesteps_equal_to_global():
  model = WanDiT(_tiny(reference_condition=True), rngs=nnx.Rngs(2))
  latents, _, context = _inputs(t=3, h=6, w=10)
  ref = latents[:, :1] * 0.5
  seq = 3 * 3 * 5 + 3 * 5  # video tokens + one reference frame
  scalar = _velocity(
    model, latents, jnp.array([321.0]), context, ref_latents=ref
  )
  per_token = _velocity(
    model, latents, jnp.full((1, seq), 321.0), context, ref_latents=ref
  )
  np.testing.assert_allclose(scalar, per_token, atol=2e-5)


def test_reference_order_changes_rope_and_layout():
  # With ref_pad_first the ref frame is prepended at RoPE time 0 and the
  # video moves to 1..f; the two layouts are different models of the data.
  latents, timestep, context = _inputs(t=2, h=4, w=6)
  outs = []
  for pad_first in (False, True):
    model = WanDiT(
      _tiny(reference_condition=True, ref_pad_first=pad_first), rngs=nnx.Rngs(3)
    )
    outs.append(
      _velocity(model, latents, timestep, context, ref_latents=latents[:, :1])
    )
  assert outs[0].shape == outs[1].shape == latents.shape
  assert float(jnp.max(jnp.abs(outs[0] - outs[1]))) > 1e-4


def test_remat_policies_same_gradients():
  latents, timestep, context = _inputs(t=2, h=4, w=6)

  def grads(cfg):
    model = WanDiT(cfg, rngs=nnx.Rngs(4))

    def loss(m):
      return jnp.mean(jnp.square(m(latents, timestep, context).velocity))

    return jax.jit(nnx.grad(loss))(model)

  base = grads(_tiny())
  for policy in ("full", "save_qkv_attention"):
    assert policy in REMAT_POLICIES
    other = grads(_tiny(remat_policy=policy))
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), base, other
    )


def test_text_path_and_context_checks():
  model = WanDiT(_tiny(), rngs=nnx.Rngs(0))
  latents, timestep, _ = _inputs()
  text = jnp.ones((1, 5, 32))
  out = _velocity(model, latents, timestep, text, context_is_text=True)
  np.testing.assert_allclose(
    out, _velocity(model, latents, timestep, model.embed_text(text)), atol=1e-6
  )
  with pytest.raises(ValueError, match="context_is_text"):
    model(latents, timestep, text)


def test_bad_inputs_name_the_problem():
  model = WanDiT(_tiny(source_condition=True), rngs=nnx.Rngs(0))
  latents, timestep, context = _inputs()
  with pytest.raises(ValueError, match="not divisible by the patch size"):
    model(latents[:, :, :5], timestep, context)
  with pytest.raises(ValueError, match="float\\[1, 105\\]"):
    model(latents, jnp.ones((1, 7)), context)
  with pytest.raises(ValueError, match="sigma must be"):
    model(latents, timestep, context, source_latents=latents)
  with pytest.raises(ValueError, match="no ref_vae_condition"):
    model(latents, timestep, context, ref_latents=latents[:, :1])
  with pytest.raises(ValueError, match="rope_max_seq_len"):
    model(jnp.zeros((1, 33, 2, 2, 48)), timestep, context)
  with pytest.raises(ValueError, match="remat_policy"):
    _tiny(remat_policy="sometimes")


def test_bf16_compute_close_to_fp32():
  latents, timestep, context = _inputs(t=2, h=4, w=6)
  fp32 = WanDiT(_tiny(), rngs=nnx.Rngs(6))
  bf16 = WanDiT(_tiny(dtype=jnp.bfloat16), rngs=nnx.Rngs(6))
  want = _velocity(fp32, latents, timestep, context)
  got = _velocity(bf16, latents, timestep, context)
  assert got.dtype == jnp.bfloat16
  err = float(jnp.max(jnp.abs(got.astype(jnp.float32) - want)))
  assert err < 0.05 * float(jnp.max(jnp.abs(want)))
