"""Low-memory editing (``kiwi_jax.pipeline.low_memory``): bf16 weights,
one weight group on the device per phase, the VAE's source and frames on
the host; on 8 fake CPU devices, the last one standing in for the host."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kiwi_jax.cli import edit as cli
from kiwi_jax.models.kiwi.model import abstract_kiwi
from kiwi_jax.models.vae import WanVAEConfig, init_wan_vae, tiling
from kiwi_jax.pipeline import EditPipeline, low_memory
from kiwi_jax.testing import kiwi as tiny_kiwi

FAST_COMPILE = {"xla_backend_optimization_level": 0}
DEVICE, HOST = jax.devices()[0], jax.devices()[-1]


def test_groups_and_config():
  cfg = low_memory.low_memory_config(tiny_kiwi.tiny_kiwi_config("wan_vae"))
  for part in (cfg.dit, cfg.mllm, cfg.vae):
    assert part.param_dtype == jnp.bfloat16 and part.dtype == jnp.bfloat16
  assert cfg.dit.attention is None and cfg.mllm.attention is None
  assert cfg.vae.attention_implementation is None
  assert [low_memory.group_of(c) for c in ("mllm", "connector", "dit")] == [
    "mllm",
    "mllm",
    "dit",
  ]
  assert low_memory.host_device(DEVICE) == HOST
  # The 5B's groups at bf16, from its shape-only state (parameter counts:
  # Qwen2.5-VL-3B + queries + connectors, Wan2.2-TI2V-5B DiT, Wan2.2 VAE).
  from kiwi_jax.models.kiwi.config import KiwiEditConfig

  _, state = abstract_kiwi(
    low_memory.low_memory_config(KiwiEditConfig.from_variant("kiwi-5b"))
  )
  sizes = low_memory.group_bytes(state)
  assert sizes["vae"] == 2 * 704_688_668
  assert 7.0e9 < sizes["mllm"] < 8.0e9 and 9.9e9 < sizes["dit"] < 10.1e9


def test_residency_moves_each_group_and_the_vae_runner():
  cfg = low_memory.low_memory_config(tiny_kiwi.tiny_kiwi_config("wan_vae"))
  graphdef, abstract = abstract_kiwi(cfg)  # zeros: only placement matters
  state = jax.tree.map(
    lambda a: jax.device_put(jnp.zeros(a.shape, a.dtype), HOST), abstract
  )
  model = nnx.merge(graphdef, state)
  pipe = type("Pipe", (), {})()
  pipe.graphdef, pipe.state = graphdef, state
  pipe._vae_runner = tiling.VAERunner(model.vae)
  residency = low_memory.Residency(DEVICE, HOST)
  expected = {
    "mllm_encode": "mllm",
    "vae_encode": "vae",
    "compile": "dit",
    "denoise": "dit",
    "vae_decode": "vae",
  }
  for phase, group in expected.items():
    residency.enter(pipe, phase)
    where = low_memory.group_devices(pipe.state)
    assert where[group] == {DEVICE}, phase
    assert all(where[g] == {HOST} for g in where if g != group), phase
    runner = {
      d for x in jax.tree.leaves(pipe._vae_runner.state) for d in x.devices()
    }
    assert runner == {DEVICE if group == "vae" else HOST}, phase
  residency.enter(pipe, "write")  # not a phase with weights: nothing moves
  assert low_memory.group_devices(pipe.state)["vae"] == {DEVICE}
  # Leaving the device drops the group there: the host arrays are the
  # very buffers loaded, not copies made on the way back.
  residency.enter(pipe, "mllm_encode")
  pointers = [
    [x.unsafe_buffer_pointer() for x in jax.tree.leaves(t["dit"])]
    for t in (pipe.state, state)
  ]
  assert pointers[0] == pointers[1]


def test_cast_model_rounds_each_weight_to_bf16():
  graphdef, abstract = abstract_kiwi(tiny_kiwi.tiny_kiwi_config())
  rng = np.random.default_rng(0)
  model = nnx.merge(
    graphdef,
    jax.tree.map(
      lambda a: jnp.asarray(rng.standard_normal(a.shape), a.dtype), abstract
    ),
  )
  low = low_memory.cast_model(model)
  want = jax.tree.leaves(nnx.state(model))
  got = jax.tree.leaves(nnx.state(low))
  assert len(got) == len(want)
  for g, w in zip(got, want):
    assert g.dtype == (jnp.bfloat16 if w.dtype == jnp.float32 else w.dtype)
    np.testing.assert_array_equal(g, w.astype(g.dtype))
  assert low.cfg.dit.dtype == jnp.bfloat16


def test_vae_runner_host_source_and_host_frames_are_exact():
  """The low-memory VAE path gives the default path's values bit for bit:
  the runner slices a host array instead of a device one, and the decoded
  frames are concatenated on the host instead of the device."""
  model = init_wan_vae(WanVAEConfig.from_variant("wan2.2-tiny"), seed=1)
  runner = tiling.VAERunner(model, compiler_options=FAST_COMPILE)
  video = np.random.default_rng(0).uniform(-1, 1, (1, 5, 64, 80, 3))
  video = video.astype(np.float32)
  kw = dict(tiled=True, tile_size=(2, 3), tile_stride=(1, 2))
  z = runner.encode(jnp.asarray(video), **kw)
  np.testing.assert_array_equal(runner.encode(video, **kw), z)
  frames = low_memory.decode_to_host(runner, z, tiled=True)
  assert isinstance(frames, np.ndarray) and frames.shape == video.shape
  np.testing.assert_array_equal(frames, runner.decode(z, tiled=True))


@pytest.fixture(scope="module")
def edits(toy_checkpoint, sample):
  """(default result, low-memory result, {phase: group devices})."""
  frames, _, prompt = sample
  noise = np.random.default_rng(5).standard_normal((1, 5, 32, 32, 12))
  noise = noise.astype(np.float32)
  kw = dict(steps=3, max_frames=5, max_pixels=64 * 96)
  default = EditPipeline.from_pretrained(toy_checkpoint).edit(
    frames, prompt, noise=noise, **kw
  )
  pipe = EditPipeline.from_pretrained(toy_checkpoint, low_memory=True)
  where = {}

  def on_phase(name):
    where[name] = low_memory.group_devices(pipe.state)

  low = pipe.edit(
    frames,
    prompt,
    noise=jnp.asarray(noise, jnp.bfloat16),
    on_phase=on_phase,
    **kw,
  )
  return default, low, where, pipe


@pytest.mark.slow  # the fixture compiles two tiny pipelines (~50 s)
def test_low_memory_weights_are_bf16_and_on_the_host_when_idle(edits):
  *_, pipe = edits
  leaves = jax.tree.leaves(pipe.state)
  assert {x.dtype for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)} == {
    jnp.dtype(jnp.bfloat16)
  }
  # After the edit only the VAE's group (empty for this codec) may be on
  # the device; the MLLM's and the DiT's wait on the host.
  where = low_memory.group_devices(pipe.state)
  assert where["mllm"] == {HOST} and where["dit"] == {HOST}


@pytest.mark.slow  # the fixture compiles two tiny pipelines (~50 s)
def test_mllm_is_off_the_device_while_the_dit_runs(edits):
  *_, where, _ = edits
  assert where["mllm_encode"]["mllm"] == {DEVICE}
  assert where["mllm_encode"]["dit"] == {HOST}
  for phase in ("compile", "denoise"):
    assert where[phase]["mllm"] == {HOST}, phase
    assert where[phase]["dit"] == {DEVICE}, phase


@pytest.mark.slow  # the fixture compiles two tiny pipelines (~50 s)
def test_low_memory_edit_is_close_to_the_default(edits):
  """bf16 weights and compute against float32, the same noise (rounded to
  bf16), 3 steps on the tiny random model. Measured: mean |latent diff| /
  mean |latent| 0.030, max |latent diff| 0.14, frames at most 9 of 255
  apart (mean 1.7); asserted: <= 0.06, <= 0.3, <= 20 and mean <= 3, and
  not equal (the low-memory run does compute in bf16)."""
  default, low, *_ = edits
  diff = np.abs(low.latents - default.latents)
  frames = np.abs(low.frames.astype(int) - default.frames)
  assert low.frames.shape == default.frames.shape
  assert 0 < diff.mean() <= 0.06 * np.abs(default.latents).mean()
  assert diff.max() <= 0.3
  assert frames.max() <= 20 and frames.mean() <= 3


def test_low_memory_refuses_a_mesh(toy_checkpoint):
  from kiwi_jax import sharding

  with pytest.raises(ValueError, match="one device"):
    EditPipeline.from_pretrained(
      toy_checkpoint,
      low_memory=True,
      mesh=sharding.make_mesh({"data": 2}, jax.devices()[:2]),
    )


def test_cli_low_memory_with_mesh_is_one_line(
  toy_checkpoint, media, tmp_path, capsys
):
  code = cli.main(
    [
      "--checkpoint",
      str(toy_checkpoint),
      "--video",
      str(media / "video.mp4"),
      "--prompt",
      "Make it snowy.",
      "--out",
      str(tmp_path / "out.mp4"),
      "--low-memory",
      "--mesh",
      "data=2",
    ]
  )
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and "--low-memory" in err[0]
  assert not (tmp_path / "out.mp4").exists()
