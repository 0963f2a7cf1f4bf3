"""LoRA on the decoder (separate params, merge/unmerge, gradients), remat."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kiwi_jax.layers import Dense
from kiwi_jax.models.mllm import Qwen25VL, Qwen25VLConfig, lora
from kiwi_jax.models.mllm.rope_index import text_position_ids

TINY = Qwen25VLConfig.from_variant("tiny")


def _lora_model(rank=3):
  cfg = TINY.replace(text=dataclasses.replace(TINY.text, lora_rank=rank))
  return Qwen25VL(cfg, rngs=nnx.Rngs(0))


@nnx.jit
def _text_hidden(model, ids, pos):
  return model(ids, pos).last_hidden_state


def _text_forward(model):
  ids = jnp.asarray(np.arange(20, 37))[None]
  pos = jnp.asarray(text_position_ids(17))[:, None]
  return np.asarray(_text_hidden(model, ids, pos))


def test_lora_is_separate_trainable_state_and_merges_exactly():
  model = _lora_model()
  lora_state = nnx.state(model, nnx.LoRAParam)
  # a and b for q/k/v/o in each of the 2 layers.
  assert len(jax.tree.leaves(lora_state)) == 2 * 4 * 2
  attn = model.language_model.layers[0].self_attn
  assert attn.q_proj.lora_a.shape == (64, 3)
  assert attn.q_proj.lora_b.get_metadata()["logical_axes"] == (
    "lora_rank",
    "heads",
  )
  before = _text_forward(model)
  # Zero-initialised b: LoRA starts as the identity update.
  for layer in lora.lora_layers(model):
    np.testing.assert_array_equal(layer.lora_b[...], 0)
  key = jax.random.key(3)
  for layer in lora.lora_layers(model):
    key, sub = jax.random.split(key)
    layer.lora_b[...] = 0.2 * jax.random.normal(sub, layer.lora_b.shape)
  kernel = np.asarray(attn.o_proj.kernel[...])
  adapted = _text_forward(model)
  assert np.max(np.abs(adapted - before)) > 1e-3
  lora.merge_lora(model)
  assert not np.allclose(np.asarray(attn.o_proj.kernel[...]), kernel)
  np.testing.assert_allclose(_text_forward(model), adapted, atol=1e-5)
  lora.unmerge_lora(model)
  np.testing.assert_allclose(
    np.asarray(attn.o_proj.kernel[...]), kernel, atol=1e-6
  )
  np.testing.assert_allclose(_text_forward(model), adapted, atol=1e-5)


@pytest.mark.parametrize("remat", [False, True])
def test_lora_gradients_flow_to_lora_params_only(remat):
  model = _lora_model()
  if remat:  # same parameters, blocks rematerialised in the backward pass
    model.language_model.remat = True
  graphdef, lora_params, rest = nnx.split(model, nnx.LoRAParam, ...)

  def loss(lora_params):
    m = nnx.merge(graphdef, lora_params, rest)
    ids = jnp.asarray(np.arange(20, 31))[None]
    pos = jnp.asarray(text_position_ids(11))[:, None]
    # Not sum(h^2): after the final RMSNorm that is nearly constant.
    target = jax.random.normal(jax.random.key(0), (1, 11, 64))
    return jnp.sum(m(ids, pos).last_hidden_state * target)

  grads = jax.jit(jax.grad(loss))(lora_params)
  flat = nnx.to_flat_state(grads)
  assert all(path[-1] in ("lora_a", "lora_b") for path, _ in flat)
  assert any(np.abs(np.asarray(v.get_value())).max() > 0 for _, v in flat)
  # Gradients with and without remat agree (the first run stores them).
  norms = [float(jnp.linalg.norm(v.get_value())) for _, v in flat]
  _GRAD_NORMS.setdefault("value", norms)
  np.testing.assert_allclose(norms, _GRAD_NORMS["value"], rtol=1e-4)


_GRAD_NORMS = {}


@pytest.mark.torch
def test_converter_loads_base_weights_into_a_lora_model(tmp_path):
  from kiwi_jax.converters import qwen2_5_vl as conv

  base = Qwen25VL(TINY, rngs=nnx.Rngs(5))
  path = conv.save_qwen2_5_vl(base, tmp_path / "q.safetensors", layout="v5")
  cfg = TINY.replace(text=dataclasses.replace(TINY.text, lora_rank=2))
  model = conv.load_qwen2_5_vl(path, cfg)
  np.testing.assert_allclose(
    _text_forward(model), _text_forward(base), atol=1e-6
  )
  assert len(jax.tree.leaves(nnx.state(model, nnx.LoRAParam))) == 16


def test_remat_gives_the_same_gradients_through_both_towers():
  from kiwi_jax.models.mllm.rope_index import mrope_position_ids
  from kiwi_jax.models.mllm.vision import vision_metadata

  grid = (1, 8, 12)
  ids = np.asarray(
    [30, TINY.vision_start_token_id]
    + [TINY.image_token_id] * 24
    + [TINY.vision_end_token_id, 40]
  )
  pos = mrope_position_ids(
    ids,
    image_grid_thw=[grid],
    image_token_id=12,
    video_token_id=13,
    vision_start_token_id=9,
  )
  meta = {
    k: jnp.asarray(v)[None]
    for k, v in vision_metadata([grid], TINY.vision).items()
  }
  pixels = jax.random.normal(jax.random.key(1), (1, 128, 1176))
  target = jax.random.normal(jax.random.key(2), (1, ids.size, 64))
  grads = []
  for remat in (False, True):
    model = Qwen25VL(TINY.replace(remat=remat), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)

    def loss(params):
      out = nnx.merge(graphdef, params)(
        jnp.asarray(ids)[None], jnp.asarray(pos)[:, None], pixels, meta
      )
      return jnp.sum(out.last_hidden_state * target)

    grads.append(jax.jit(jax.grad(loss))(params))
  flat = [
    [np.asarray(v.get_value()) for _, v in nnx.to_flat_state(g)] for g in grads
  ]
  for a, b in zip(*flat):
    np.testing.assert_allclose(a, b, atol=1e-4 * max(1.0, np.abs(a).max()))


def test_mlp_lora_targets_change_only_the_mlp_after_b_moves():
  """The 14B scripts' targets: q/k/v/o plus the MLP's gate/up/down."""
  from kiwi_jax.models.mllm.lora import ALL_LORA_TARGETS

  base = Qwen25VL(TINY, rngs=nnx.Rngs(0))
  cfg = TINY.replace(
    text=dataclasses.replace(
      TINY.text, lora_rank=3, lora_targets=ALL_LORA_TARGETS
    )
  )
  model = Qwen25VL(cfg, rngs=nnx.Rngs(1))
  nnx.update(model, nnx.state(base))
  mlp = model.language_model.layers[1].mlp
  assert len(jax.tree.leaves(nnx.state(model, nnx.LoRAParam))) == 2 * 7 * 2
  t = TINY.text
  assert mlp.down_proj.lora_a.shape == (t.intermediate_size, 3)
  assert mlp.gate_proj.lora_b.shape == (3, t.intermediate_size)
  assert mlp.up_proj.lora_a.get_metadata()["logical_axes"] == (
    "embed",
    "lora_rank",
  )
  assert mlp.down_proj.lora_b.get_metadata()["logical_axes"] == (
    "lora_rank",
    "embed",
  )
  want = _text_forward(base)
  np.testing.assert_array_equal(_text_forward(model), want)  # B is zero
  for proj in ("gate_proj", "up_proj", "down_proj"):
    layer = getattr(mlp, proj)
    layer.lora_b[...] = 0.3 * jax.random.normal(
      jax.random.key(5), layer.lora_b.shape
    )
  adapted = _text_forward(model)
  assert np.max(np.abs(adapted - want)) > 1e-3
  kernel = np.asarray(mlp.down_proj.kernel[...])
  lora.merge_lora(model)
  np.testing.assert_allclose(
    np.asarray(mlp.down_proj.kernel[...]),
    kernel
    + np.asarray(mlp.down_proj.lora_a[...])
    @ np.asarray(mlp.down_proj.lora_b[...]),
    atol=1e-6,
  )
  np.testing.assert_allclose(_text_forward(model), adapted, atol=1e-5)
  lora.unmerge_lora(model)
  np.testing.assert_allclose(
    np.asarray(mlp.down_proj.kernel[...]), kernel, atol=1e-6
  )


def test_default_targets_keep_the_mlp_plain_and_bad_targets_fail():
  model = _lora_model()
  mlp = model.language_model.layers[0].mlp
  assert type(mlp.gate_proj) is Dense and not hasattr(mlp.gate_proj, "lora_a")
  with pytest.raises(ValueError, match="lora_targets"):
    dataclasses.replace(TINY.text, lora_targets=("q_proj", "mlp"))
