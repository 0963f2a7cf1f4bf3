"""The plan's pure parts, no libtpu needed: slice names, HLO counting,
out-of-memory messages, --mesh / --programs parsing, shape-only batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs import demo, kiwi_wan22_5b
from kiwi_jax.models.mllm import bucketing
from kiwi_jax.plan import batches, hlo_stats, run, topology
from kiwi_jax.tasks.kiwi_task import KiwiTask


@pytest.mark.parametrize(
  "name, chips, topo, hbm",
  [
    ("v5p-8", 4, "v5:2x2x1", 95.74),
    ("v5p-64", 32, "v5:2x4x4", 95.74),
    ("v5p-256", 128, "v5:4x4x8", 95.74),
    ("v6e-8", 8, "v6e:2x4", 31.25),
    ("v6e-64", 64, "v6e:8x8", 31.25),
    ("V5E-4", 4, "v5e:2x2", 15.75),
    ("v4-16", 8, "v4:2x2x2", 31.75),
  ],
)
def test_slice_names(name, chips, topo, hbm):
  s = topology.parse_slice(name)
  assert (s.chips, s.topology, s.hbm_gib) == (chips, topo, hbm)
  assert s.hbm_bytes == int(hbm * 2**30)


@pytest.mark.parametrize(
  "name", ["v5p-7", "v5p-4096", "v7-8", "v6e", "tpu", "v5p-x", ""]
)
def test_unknown_slice_lists_valid_names(name):
  with pytest.raises(topology.UnknownSliceError) as e:
    topology.parse_slice(name)
  message = str(e.value)
  assert "\n" not in message
  assert "v5p-8" in message and "v6e-256" in message


_HLO = """
ENTRY %main {
  %p = f32[8,16]{1,0} parameter(0)
  %all-gather.1 = f32[32,16]{1,0} all-gather(%p), dimensions={0}
  %ags = (f32[8,16]{1,0}, f32[32,16]{1,0}) all-gather-start(%p), dimensions={0}
  %agd = f32[32,16]{1,0} all-gather-done(%ags)
  %all-reduce.2 = f32[32,16]{1,0} all-reduce(%all-gather.1), to_apply=%add
  %rs = bf16[4,16]{1,0} reduce-scatter(%all-reduce.2), dimensions={0}
  %cp = f32[8,16]{1,0} collective-permute(%p), source_target_pairs={{0,1}}
  %a2a = f32[8,16]{1,0} all-to-all(%p), dimensions={0}
  %dot.3 = f32[32,32]{1,0} dot(%all-reduce.2, %all-reduce.2)
  %dot.4 = bf16[32,32]{1,0} dot(%rs, %rs)
  %conv = f32[1,8,8,4]{3,2,1,0} convolution(%x, %w), window={size=3x3}
  %fusion = f32[32,16]{1,0} fusion(%all-reduce.2), calls=%all-gather.fused
}
"""


def test_counts_collectives_and_matmuls_in_hlo_text():
  assert hlo_stats.count_collectives(_HLO) == {
    "all-gather": 2,
    "all-reduce": 1,
    "reduce-scatter": 1,
    "all-to-all": 1,
    "collective-permute": 1,
  }
  assert hlo_stats.count_matmuls(_HLO) == {"total": 3, "f32": 2}


_FUSED_RS_HLO = """
%all-reduce-scatter (input: f32[128,128]) -> f32[128,32] {
  %input = f32[128,128]{0,1} parameter(0)
  %all-reduce.74 = f32[128,128]{0,1} all-reduce(%input), to_apply=%add
  ROOT %ds = f32[128,32]{0,1} dynamic-slice(%all-reduce.74, %i, %j)
}

ENTRY %main.1 (p: f32[128,128]) -> f32[128,32] {
  %p = f32[128,128]{0,1} parameter(0)
  %all-reduce.2 = f32[128,128]{0,1} all-reduce(%p), to_apply=%add
  ROOT %fusion = f32[128,32]{0,1} fusion(%p), kind=kCustom, calls=%all-reduce-scatter
}
"""


def test_a_tpu_reduce_scatter_fusion_counts_as_one_reduce_scatter():
  counts = hlo_stats.count_collectives(_FUSED_RS_HLO)
  assert (counts["all-reduce"], counts["reduce-scatter"]) == (1, 1)


def test_counts_collectives_of_a_compiled_sharded_program():
  mesh = jax.make_mesh((8,), ("x",))
  fn = jax.jit(
    lambda a, b: a @ b,
    in_shardings=(
      NamedSharding(mesh, P(None, "x")),
      NamedSharding(mesh, P("x", None)),
    ),
    out_shardings=NamedSharding(mesh, P()),
  )
  text = (
    fn.lower(
      jax.ShapeDtypeStruct((16, 64), jnp.float32),
      jax.ShapeDtypeStruct((64, 32), jnp.float32),
    )
    .compile()
    .as_text()
  )
  counts = hlo_stats.count_collectives(text)
  assert counts["all-reduce"] + counts["reduce-scatter"] >= 1
  assert counts["all-to-all"] == 0
  assert hlo_stats.count_matmuls(text)["total"] >= 1


def test_counts_the_collectives_a_scan_body_issues():
  """The all-reduce of a sharded contraction inside a scan is in a loop; the
  one after it is not."""
  mesh = jax.make_mesh((8,), ("x",))
  row = NamedSharding(mesh, P(None, "x"))

  def fn(a, ws):
    def body(h, w):
      return jnp.tanh(h @ w), None

    h, _ = jax.lax.scan(body, a, ws)
    return h @ a.T

  compiled = (
    jax.jit(
      fn,
      in_shardings=(row, NamedSharding(mesh, P(None, "x", None))),
      out_shardings=NamedSharding(mesh, P()),
    )
    .lower(
      jax.ShapeDtypeStruct((16, 64), jnp.float32),
      jax.ShapeDtypeStruct((3, 64, 64), jnp.float32),
    )
    .compile()
  )
  text = compiled.as_text()
  total = hlo_stats.count_collectives(text)
  looped = hlo_stats.collectives_in_loops(text)
  reduces = ("all-reduce", "reduce-scatter")
  assert sum(looped[c] for c in reduces) >= 1
  assert sum(total[c] for c in reduces) > sum(looped[c] for c in reduces)
  assert hlo_stats.collectives_in_loops(_HLO) == dict.fromkeys(
    hlo_stats.COLLECTIVES, 0
  )


def test_memory_need_from_out_of_memory_messages():
  temps = hlo_stats.memory_need(
    "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory "
    "required for HLO temporaries (43.66G) exceeds available HBM "
    "(15.75G)."
  )
  assert temps == {
    "need_bytes": int(43.66 * 2**30),
    "available_bytes": int(15.75 * 2**30),
    "what": "HLO temporaries",
  }
  used = hlo_stats.memory_need(
    "Ran out of memory in memory space hbm. "
    "Used 1.74T of 95.74G hbm. Exceeded by 1.6T"
  )
  assert used["need_bytes"] == int(1.74 * 2**40)
  assert hlo_stats.memory_need("INTERNAL: something else") is None
  assert hlo_stats.is_out_of_memory("RESOURCE_EXHAUSTED: x")


def test_mesh_and_program_flags():
  assert run.parse_mesh("fsdp=4, sequence=2") == {"fsdp": 4, "sequence": 2}
  assert run.parse_mesh("") == {}
  for bad in ("fsdp", "model=2", "fsdp=two"):
    with pytest.raises(ValueError, match="--mesh item"):
      run.parse_mesh(bad)
  names = ["train/image", "train/video", "edit/mllm_encode", "edit/dit_step"]
  assert run.select(names, "edit,train/video") == [
    "edit/mllm_encode",
    "edit/dit_step",
    "train/video",
  ]
  assert run.select(names, "all") == names
  with pytest.raises(ValueError, match="matches no program"):
    run.select(names, "train/reference")
  sizes = run.mesh_sizes(kiwi_wan22_5b.get_config("stage=2"), {"fsdp": 4})
  assert sizes == {"data": 1, "fsdp": 4, "tensor": 1, "sequence": 1}


def test_shape_only_batches_of_the_5b_config():
  config = kiwi_wan22_5b.get_config("stage=3")
  clips = batches.clip_shapes(config)
  assert [(c.mode, c.frames, c.height, c.width) for c in clips] == [
    ("image", 1, 704, 1280),
    ("video", 81, 704, 1280),
    ("reference", 81, 704, 1280),
  ]
  task = KiwiTask(config)
  batch = batches.train_batch(task, clips[2], 2)
  assert batch["target_video"].shape == (2, 81, 704, 1280, 3)
  assert batch["ref_image"].shape == (2, 704, 1280, 3)
  mllm = batch["mllm"]
  seq, patches = mllm["input_ids"].shape[1], mllm["pixel_values"].shape[1]
  assert seq in bucketing.SEQ_BUCKETS and patches in bucketing.PATCH_BUCKETS
  assert mllm["position_ids"].shape == (2, 3, seq)
  cfg = task.model_cfg
  ids = mllm["input_ids"][0]
  assert np.sum(ids == cfg.mllm.query_token_id) == cfg.num_ref_queries
  start, end = mllm["ref_span"][0]
  assert np.all(ids[start:end] == cfg.mllm.image_token_id)
  assert 0 < end - start <= int(config.kiwi.ref_tokens)
  # The FLOP formula reads these batches as it reads real ones.
  assert task.step_flops(batch).train > 0


def test_shape_only_batches_of_the_demo_config():
  config = demo.get_config("")
  clips = batches.clip_shapes(config)
  assert [(c.mode, c.frames, c.height, c.width) for c in clips] == [
    ("image", 1, 32, 32)
  ]
  example = batches.mllm_example(KiwiTask(config).model_cfg, clips[0])
  assert example["segment_ids"].sum() < example["input_ids"].size


def test_programs_of_every_mode_build_on_a_cpu_mesh():
  config = demo.get_config("")
  with config.unlocked():
    config.kiwi.stage = 3
    config.kiwi.data.batch_size = 4
  mesh = run.slice_mesh(jax.devices()[:4], {"data": -1})
  from kiwi_jax.plan import programs  # pylint: disable=g-import-not-at-top

  builders = programs.all_programs(config, mesh)
  assert list(builders) == [
    "train/image",
    "train/video",
    "train/reference",
    *programs.EDIT_PROGRAMS,
  ]
  dit = builders["edit/dit_step"]()
  assert dit.batch == 1 and dit.model_flops > 0
  latents, conditions, source, ref = dit.args[1:]
  assert ref.shape[:2] == (1, 1) and source.shape == latents.shape
  # kiwi.ref_tokens 0 (the demo's) became the reference's count.
  assert 0 < config.kiwi.ref_tokens <= 16
  assert conditions.context.shape[1] == (
    config.kiwi.ref_tokens + 11
  )  # tiny: 11 reference queries
  assert dit.lower().as_text()
  train = builders["train/reference"]()
  assert train.batch == 4 and train.model_flops > 0
  assert train.args[1]["ref_image"].shape == (4, 32, 32, 3)
