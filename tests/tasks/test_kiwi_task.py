"""One Kiwi-Edit train step per curriculum stage, on the tiny model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kiwi_jax import sharding
from kiwi_jax.tasks import kiwi_task
from kiwi_jax.train_lib import optimizers, train_step
from kiwi_jax.train_lib.train_state import ModelSplit, Precision
from tests.tasks.conftest import host_batch, kiwi_config

pytestmark = pytest.mark.slow  # four step compilations of the tiny Kiwi

FP32 = Precision(master_dtype="float32", compute_dtype=None)


def _training(config, mesh=None):
  task = kiwi_task.KiwiTask(config)
  opt = optimizers.OptimizerConfig.from_mapping(config.optimizer)
  optimizer = optimizers.make_optimizer(opt)
  ctor = lambda: task.build_model(nnx.Rngs(0))  # noqa: E731
  split = ModelSplit.build(
    ctor, task.trainable, task.frozen, mesh=mesh, precision=FP32
  )
  state = train_step.init_train_state(ctor, split, optimizer, FP32, 0, mesh)
  step = train_step.make_train_step(
    split, task.loss_fn, optimizer, opt, FP32, mesh=mesh
  )
  return task, split, state, step


def _global(task, host, mesh=None):
  mesh = mesh or sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
  return task.global_batch(host, mesh)


# stage -> (mode it is tested on, parameters that must / must not train)
STAGES = {
  1: (
    "image",
    ("image_queries/q", "connector/fc1/kernel"),
    ("video_queries/q", "dit/vae_condition", "dit/blocks"),
  ),
  2: (
    "video",
    ("video_queries/q", "dit/blocks", "dit/vae_condition"),
    (
      "ref_queries/q",
      "ref_connector",
      "dit/ref_vae_condition",
      "dit/text_embedding",
      "mllm/visual",
      "vae/",
    ),
  ),
  3: (
    "reference",
    ("ref_queries/q", "ref_connector/fc1/kernel", "dit/ref_vae_condition"),
    (
      "dit/text_embedding",
      "mllm/visual",
      "vae/",
      "mllm/language_model/embed_tokens",
    ),
  ),
}


@pytest.fixture(scope="module")
def stage_training(tiny_tokenizer_dir, kiwi_batches):
  """``stage -> (task, split, initial state, step)``, built once each."""
  _, ref_tokens = kiwi_batches
  cache = {}

  def get(stage):
    if stage not in cache:
      cache[stage] = _training(
        kiwi_config(stage, tiny_tokenizer_dir, ref_tokens)
      )
    task, split, state, step = cache[stage]
    return task, split, jax.tree.map(jnp.copy, state), step  # donated

  return get


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_step_per_stage_trains_its_set_and_freezes_the_rest(
  stage, kiwi_batches, stage_training
):
  batches, _ = kiwi_batches
  mode, must, must_not = STAGES[stage]
  task, split, state, step = stage_training(stage)
  names = split.trainable_names()
  for part in must:
    assert any(part in n for n in names), (stage, part)
  for part in must_not:
    assert not any(part in n for n in names), (stage, part)
  assert any("lora_a" in n for n in names) and not any(
    "lora" not in n and n.startswith("mllm/") for n in names
  )
  frozen_before = jax.tree.map(np.asarray, state.frozen)
  params_before = jax.tree.map(np.asarray, state.params)
  state, metrics = step(state, _global(task, batches[mode]))
  assert np.isfinite(float(metrics["training_loss"]))
  assert float(metrics["l2_grads"]) > 0
  jax.tree.map(
    np.testing.assert_array_equal,
    frozen_before,
    jax.tree.map(np.asarray, state.frozen),
  )
  moved = jax.tree.leaves(
    jax.tree.map(
      lambda a, b: bool(np.any(a != np.asarray(b))), params_before, state.params
    )
  )
  assert sum(moved) > len(moved) // 2  # LoRA B and most others moved


def test_loss_falls_when_overfitting(kiwi_batches, stage_training):
  """Stage 2 (the DiT trains) on two video edits: the same compiled step."""
  batches, _ = kiwi_batches
  task, _, state, step = stage_training(2)
  batch = _global(task, batches["video"])
  losses = []
  for _ in range(30):
    state, metrics = step(state, batch)
    losses.append(float(metrics["mse"]))
  assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:8]), losses


def test_sharded_step_equals_single_device(
  kiwi_batches, stage_training, tiny_tokenizer_dir
):
  """data x fsdp x tensor = 2 x 2 x 2 against one device, stage 2: the
  batch (4, split over data and fsdp) and the weights are sharded."""
  _, ref_tokens = kiwi_batches
  task, _, single, single_step = stage_training(2)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  _, _, sharded, sharded_step = _training(
    kiwi_config(2, tiny_tokenizer_dir, ref_tokens), mesh
  )
  assert any(
    len(x.sharding.device_set) > 1 and not x.sharding.is_fully_replicated
    for x in jax.tree.leaves(sharded.params)
  )
  host = host_batch(task.hook, "local_remove", [0, 1, 2, 3])
  for _ in range(2):
    single, m1 = single_step(single, _global(task, host))
    sharded, m2 = sharded_step(sharded, _global(task, host, mesh))
  np.testing.assert_allclose(
    m1["training_loss"], m2["training_loss"], rtol=1e-4
  )
  # Adam normalises tiny gradients, so fp32 reduction-order differences of
  # the sharded step show up as ~3e-5 in weights that moved by ~2e-3.
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4),
    single.params,
    jax.device_get(sharded.params),
  )


def test_pixel_unshuffle_codec_is_invertible():
  from kiwi_jax.models.kiwi.codec import PixelUnshuffle

  codec = PixelUnshuffle(2)
  video = jax.random.uniform(
    jax.random.key(0), (1, 3, 6, 10, 3), minval=-1, maxval=1
  )
  latents = codec.encode(video)
  assert latents.shape == (1, 3, 3, 5, 12)
  np.testing.assert_allclose(codec.decode(latents), video, atol=1e-6)
  with pytest.raises(ValueError, match="multiple"):
    codec.encode(jnp.zeros((1, 1, 5, 4, 3)))


def test_padded_reference_rows_are_masked_out(kiwi_batches, tiny_tokenizer_dir):
  """Reference mode with ``kiwi.ref_tokens`` above the references' token
  count (padded, masked rows) gives the loss of the exact count."""
  batches, ref_tokens = kiwi_batches
  losses = []
  for rows in (ref_tokens, ref_tokens + 5):
    task = kiwi_task.KiwiTask(kiwi_config(3, tiny_tokenizer_dir, rows))
    graphdef, state = nnx.split(task.build_model(nnx.Rngs(0)))
    # The connectors start at zero (a zero context); move every weight.
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    state = jax.tree.unflatten(
      treedef,
      [
        x + 0.05 * jax.random.normal(k, x.shape, x.dtype)
        if jnp.issubdtype(x.dtype, jnp.floating)
        else x
        for x, k in zip(leaves, keys)
      ],
    )
    batch = _global(task, batches["reference"])
    loss = jax.jit(
      lambda s, b, t=task: t.loss_fn(
        nnx.merge(graphdef, s), b, jax.random.key(3)
      )[0]
    )(state, batch)
    losses.append(float(loss))
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
  too_few = kiwi_task.KiwiTask(
    kiwi_config(3, tiny_tokenizer_dir, ref_tokens - 1)
  )
  with pytest.raises(ValueError, match="padded count"):
    _global(too_few, batches["reference"])


class _VideoWriter:
  def __init__(self):
    self.videos = {}

  def write_videos(self, step, videos, fps=15.0):
    del fps
    self.videos.update({(step, k): v for k, v in videos.items()})


def test_sample_writes_edits_of_the_first_examples(
  tmp_path, tiny_tokenizer_dir
):
  """``sample_every`` videos: ``source | edit | target`` of the first
  example of each data source, in file order."""
  from kiwi_jax.data import refvie_mini  # pylint: disable=g-import-not-at-top
  from tests.tasks.conftest import MINI  # pylint: disable=g-import-not-at-top

  csvs = refvie_mini.write_dataset(
    tmp_path / "media", num_videos=2, num_images=0, seed=0, cfg=MINI
  )
  records = refvie_mini.build_records(
    tmp_path / "media", tmp_path / "rec", csvs, cfg=MINI
  )
  del records
  config = kiwi_config(2, tiny_tokenizer_dir, 0)
  config.unlock()
  config.kiwi.data.sources = [
    {
      "path": str(tmp_path / "rec" / "video"),
      "weight": 1.0,
      "name": "video",
      "max_frames": 5,
    }
  ]
  config.kiwi.sample_steps = 2
  config.lock()
  task = kiwi_task.KiwiTask(config)
  writer = _VideoWriter()
  task.sample(task.build_model(nnx.Rngs(0)), 7, writer)
  assert list(writer.videos) == [(7, "sample/video/0")]
  video = writer.videos[7, "sample/video/0"]
  assert video.shape == (5, 32, 96, 3) and video.dtype == np.uint8
  first = refvie_mini.make_sample(0, 0, MINI)
  np.testing.assert_array_equal(video[:, :, :32], first.source)
  np.testing.assert_array_equal(video[:, :, 64:], first.target)


def test_edit_below_strength_one_starts_from_the_source(
  kiwi_batches, tiny_tokenizer_dir, monkeypatch
):
  """With a zero velocity an edit returns its starting point: the source
  noised to the first sigma below strength 1, pure noise at strength 1."""
  from kiwi_jax.diffusion import sampler  # pylint: disable=g-import-not-at-top
  from kiwi_jax.models.kiwi.model import KiwiEdit  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr(
    KiwiEdit,
    "denoise_step",
    lambda self, latents, *a, **k: jnp.zeros_like(latents),
  )
  from kiwi_jax.pipeline import EditPipeline  # pylint: disable=g-import-not-at-top

  batches, _ = kiwi_batches
  task = kiwi_task.KiwiTask(kiwi_config(2, tiny_tokenizer_dir, 0))
  pipe = EditPipeline(task.build_model(nnx.Rngs(0)), task.processor)
  frames = batches["video"]["source_video"][0]
  source = frames.astype(np.float32) / 127.5 - 1.0
  for strength in (0.3, 1.0):
    edited = (
      pipe.edit(
        frames,
        "Remove it.",
        steps=2,
        max_frames=5,
        max_pixels=32 * 32,
        denoising_strength=strength,
      ).frames.astype(np.float32)
      / 127.5
      - 1.0
    )
    sigma = float(
      sampler.SamplingPlan.build(2, denoising_strength=strength).sigmas[0]
    )
    # decode((1 - s) encode(src) + s noise) = (1 - s) src + s noise / scale
    residual = (edited - (1.0 - sigma) * source) / sigma
    assert abs(float(np.std(residual)) - 0.5) < 0.05, strength  # noise / 2
    if strength == 1.0:
      assert sigma == 1.0


def test_cached_latents_give_the_pixel_loss(kiwi_batches, tiny_tokenizer_dir):
  """A batch from the latent cache (``*_latents``) trains like the pixels
  it was encoded from."""
  from kiwi_jax.models.kiwi import codec  # pylint: disable=g-import-not-at-top

  batches, _ = kiwi_batches
  task = kiwi_task.KiwiTask(kiwi_config(2, tiny_tokenizer_dir, 0))
  graphdef, state = nnx.split(task.build_model(nnx.Rngs(0)))
  pixels = batches["video"]
  latents = {"mllm": pixels["mllm"]}
  for name in ("source", "target"):
    latents[f"{name}_latents"] = np.asarray(
      nnx.merge(graphdef, state).encode_video(
        codec.pixels_to_unit(jnp.asarray(pixels[f"{name}_video"]))
      )
    )
  assert kiwi_task.batch_mode(latents) == "video"
  loss = jax.jit(
    lambda s, b: task.loss_fn(nnx.merge(graphdef, s), b, jax.random.key(5))[0]
  )
  np.testing.assert_allclose(
    float(loss(state, _global(task, latents))),
    float(loss(state, _global(task, pixels))),
    rtol=1e-6,
  )


def test_training_grid_follows_the_models_flow_shift(tiny_tokenizer_dir):
  """``kiwi.model.flow_shift`` sets the sigmas training draws from."""
  from kiwi_jax.diffusion import schedules  # pylint: disable=g-import-not-at-top

  config = kiwi_config(2, tiny_tokenizer_dir, 0)
  default = kiwi_task.KiwiTask(config).grid.sigmas
  config.unlock()
  config.kiwi.model.flow_shift = 2.0
  config.lock()
  shifted = kiwi_task.KiwiTask(config).grid.sigmas
  n = schedules.DIFFSYNTH.num_train_timesteps
  np.testing.assert_allclose(default, schedules.DIFFSYNTH.sigmas(n))
  np.testing.assert_allclose(
    shifted, schedules.get_schedule("diffsynth", 2.0).sigmas(n)
  )
  assert not np.allclose(shifted, default)
