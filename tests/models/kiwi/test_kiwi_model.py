"""KiwiEdit assembly: full-size shapes (abstract), configs, mode errors."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from kiwi_jax.models.dit import ConditionalEmbedder, WanDiT
from kiwi_jax.models.kiwi.config import VARIANTS, KiwiEditConfig
from kiwi_jax.models.kiwi.connectors import Connector
from kiwi_jax.models.kiwi.model import abstract_kiwi, pure


def _size(ctor):
  state = nnx.state(nnx.eval_shape(ctor))
  return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(state))


def test_5b_kiwi_parts_have_the_reference_sizes():
  """Reference §1.1 / 1.7 parameter counts of the kiwi-5b variant's parts."""
  cfg = KiwiEditConfig.from_variant("kiwi-5b")
  rngs = lambda: nnx.Rngs(0)  # noqa: E731
  assert (
    _size(lambda: Connector(cfg.mllm_hidden, cfg.dit.dim, rngs=rngs()))
    == 15_734_784
  )
  assert (
    _size(
      lambda: ConditionalEmbedder(
        cfg.dit.in_channels, cfg.dit.dim, cfg.dit.patch_size, rngs=rngs()
      )
    )
    == 592_896
  )
  # The DiT with both embedders: 4,999,787,712 + 2 * 592,896.
  assert _size(lambda: WanDiT(cfg.dit, rngs=rngs())) == (
    4_999_787_712 + 2 * 592_896
  )
  assert (
    cfg.num_image_queries,
    cfg.num_video_queries,
    cfg.num_ref_queries,
    cfg.mllm_hidden,
  ) == (256, 512, 768, 2048)


def test_tiny_assembly_has_every_part():
  cfg = KiwiEditConfig.from_variant("tiny")
  _, state = abstract_kiwi(cfg)
  assert set(state.keys()) == {
    "mllm",
    "image_queries",
    "video_queries",
    "ref_queries",
    "connector",
    "ref_connector",
    "dit",
    "vae",
  }
  assert state["ref_queries"]["q"].get_value().shape == (
    cfg.num_ref_queries,
    cfg.mllm_hidden,
  )
  assert state["connector"]["fc1"]["kernel"].get_value().shape == (
    cfg.mllm_hidden,
    cfg.dit.dim,
  )
  assert "ref_vae_condition" in state["dit"]


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_configs_round_trip_through_json(name):
  cfg = VARIANTS[name]
  again = KiwiEditConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
  assert again == cfg
  with pytest.raises(ValueError, match="unknown fields"):
    KiwiEditConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_config_validation():
  cfg = KiwiEditConfig.from_variant("tiny")
  with pytest.raises(ValueError, match="readout"):
    cfg.replace(readout="middle")
  with pytest.raises(ValueError, match="reference queries"):
    cfg.replace(num_ref_queries=0)
  with pytest.raises(ValueError, match="shift"):
    cfg.replace(flow_shift=0.0)
  stage1 = cfg.replace(
    num_video_queries=0,
    num_ref_queries=0,
    ref_connector=False,
    dit=cfg.dit.replace(source_condition=False, reference_condition=False),
  )
  assert stage1.modes() == ("image",)
  with pytest.raises(ValueError, match="Unknown mode"):
    cfg.num_queries("audio")


def test_flow_shift_travels_with_the_config():
  cfg = KiwiEditConfig.from_variant("tiny").replace(flow_shift=1.0)
  assert KiwiEditConfig.from_dict(cfg.to_dict()).flow_shift == 1.0
  # A config written before the field existed keeps Wan's shift.
  old = {k: v for k, v in cfg.to_dict().items() if k != "flow_shift"}
  assert KiwiEditConfig.from_dict(old).flow_shift == 5.0


def test_conditions_from_hidden_layout_and_errors():
  """Reference mode puts ref_connector rows first; absent parts are named."""
  cfg = KiwiEditConfig.from_variant("tiny")
  graphdef, state = abstract_kiwi(cfg)
  fn = pure(graphdef, "conditions_from_hidden")
  m = cfg.mllm
  n_q, n_ref = cfg.num_ref_queries, 3
  ids = np.array(
    [
      [1, m.vision_start_token_id]
      + [m.image_token_id] * n_ref
      + [m.vision_end_token_id]
      + [m.query_token_id] * n_q
      + [2, 40]
    ]
  )
  hidden = jax.ShapeDtypeStruct(ids.shape + (cfg.mllm_hidden,), np.float32)
  out = jax.eval_shape(
    lambda st, h: fn(st, h, ids, "reference", ref_tokens=n_ref), state, hidden
  )
  assert out.context.shape == (1, n_ref + n_q, cfg.dit.dim)
  assert out.mask.shape == (1, n_ref + n_q)
  out = jax.eval_shape(lambda st, h: fn(st, h, ids, "video"), state, hidden)
  assert out.context.shape == (1, cfg.num_video_queries, cfg.dit.dim)
  with pytest.raises(ValueError, match="ref_tokens must be in"):
    jax.eval_shape(lambda st, h: fn(st, h, ids, "reference"), state, hidden)
  stage1 = cfg.replace(
    num_video_queries=0,
    num_ref_queries=0,
    ref_connector=False,
    dit=cfg.dit.replace(source_condition=False, reference_condition=False),
  )
  g1, s1 = abstract_kiwi(stage1)
  with pytest.raises(ValueError, match="no video queries"):
    jax.eval_shape(
      lambda st, h: pure(g1, "conditions_from_hidden")(st, h, ids, "video"),
      s1,
      hidden,
    )
  with pytest.raises(ValueError, match="no public method"):
    pure(graphdef, "_private")
