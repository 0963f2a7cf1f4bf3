"""The Grain pipeline: order, resume, sharding, mixing, hooks, latent cache."""

import jax
import numpy as np
import pytest

from kiwi_jax import sharding
from kiwi_jax.data import examples, latent_cache, refvie_mini, transforms
from kiwi_jax.data import loader as pipeline
from tests.data.conftest import CFG

EVAL = examples.ExampleConfig(max_frames=5, max_pixels=64 * 64, train=False)
TRAIN = examples.ExampleConfig(max_frames=5, max_pixels=64 * 64, train=True)


def _specs(mini_records, names=("image", "video", "ref"), weights=None):
  weights = weights or [1.0] * len(names)
  return [
    pipeline.SourceSpec(str(mini_records[n]), w, n)
    for n, w in zip(names, weights)
  ]


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for k in a:
    if isinstance(a[k], dict):
      _assert_batches_equal(a[k], b[k])
    else:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_same_seed_same_order_other_seed_differs(mini_records):
  cfg = pipeline.PipelineConfig(batch_size=2, seed=5)
  kw = dict(shard_index=0, shard_count=1)
  specs = _specs(mini_records)
  first = [
    b["key"].tolist()
    for b in _take(pipeline.make_iterator(specs, TRAIN, cfg, **kw), 9)
  ]
  again = [
    b["key"].tolist()
    for b in _take(pipeline.make_iterator(specs, TRAIN, cfg, **kw), 9)
  ]
  other = [
    b["key"].tolist()
    for b in _take(
      pipeline.make_iterator(
        specs, TRAIN, pipeline.PipelineConfig(batch_size=2, seed=6), **kw
      ),
      9,
    )
  ]
  assert first == again
  assert first != other


def test_batches_hold_decoded_clips_and_the_true_frames(mini_records):
  it = pipeline.make_iterator(
    _specs(mini_records, ["video"]),
    EVAL,
    pipeline.PipelineConfig(batch_size=1, shuffle=False),
    shard_index=0,
    shard_count=1,
  )
  batch = next(it)
  assert batch["source_video"].shape == (1, 5, 64, 64, 3)
  assert batch["source_video"].dtype == np.uint8
  key = batch["key"][0]
  sample = refvie_mini.make_sample(0, int(key[1:]), CFG)
  np.testing.assert_array_equal(batch["source_video"][0], sample.source)
  np.testing.assert_array_equal(batch["target_video"][0], sample.target)
  assert batch["prompt"][0] == sample.prompt
  assert batch["source_id"].tolist() == [0]


def test_reference_is_padded_at_eval_and_shrunk_in_training(mini_records):
  kw = dict(shard_index=0, shard_count=1)
  cfg = pipeline.PipelineConfig(batch_size=1, shuffle=False)
  spec = _specs(mini_records, ["ref"])
  ev = next(pipeline.make_iterator(spec, EVAL, cfg, **kw))
  sample = refvie_mini.make_sample(0, int(ev["key"][0][1:]), CFG)
  # A square reference on a square clip: `ImageOps.pad` scales it up to fill
  # the whole canvas, no white margin.
  assert ev["ref_image"].shape == (1, 64, 64, 3)
  assert not (ev["ref_image"][0] == 255).all(-1).all()
  tr = next(pipeline.make_iterator(spec, TRAIN, cfg, **kw))
  white_border = (tr["ref_image"][0, 0] == 255).all()
  assert white_border, "training shrink (< 1.0) leaves a white margin"
  del sample


def _stand_in_mllm(frames, prompt, ref_image):
  """A stand-in for the Qwen preprocessing: fixed-size arrays per example."""
  tokens = np.frombuffer(prompt.encode()[:8].ljust(8), np.uint8)
  return {
    "input_ids": tokens.astype(np.int32),
    "frame_means": frames.mean(axis=(1, 2, 3)).astype(np.float32),
    "has_ref": np.array(ref_image is not None),
  }


def test_mllm_hook_sees_frames_prompt_and_unpadded_reference(mini_records):
  seen = []

  def hook(frames, prompt, ref_image):
    seen.append(
      (frames.shape, prompt, None if ref_image is None else ref_image.shape)
    )
    return _stand_in_mllm(frames, prompt, ref_image)

  it = pipeline.make_iterator(
    _specs(mini_records, ["ref"]),
    TRAIN,
    pipeline.PipelineConfig(batch_size=2),
    mllm_transform=hook,
    shard_index=0,
    shard_count=1,
  )
  batch = next(it)
  assert batch["mllm"]["input_ids"].shape == (2, 8)
  assert batch["mllm"]["has_ref"].tolist() == [True, True]
  assert seen[0][0] == (5, 64, 64, 3)
  # The 32x32 reference fits the budget and is a multiple of 32: unchanged,
  # not padded to the clip.
  assert seen[0][2] == (32, 32, 3)


def test_resume_from_state_gives_identical_next_batch(mini_records):
  kw = dict(shard_index=0, shard_count=1, mllm_transform=_stand_in_mllm)
  cfg = pipeline.PipelineConfig(batch_size=2, seed=1)
  specs = _specs(mini_records)
  it = pipeline.make_iterator(specs, TRAIN, cfg, **kw)
  _take(it, 7)  # Past one epoch of the image source (2 batches of 2).
  state = it.get_state()
  want = _take(it, 3)
  resumed = pipeline.make_iterator(specs, TRAIN, cfg, **kw)
  resumed.set_state(state)
  for a, b in zip(want, _take(resumed, 3)):
    _assert_batches_equal(a, b)


@pytest.mark.slow  # Spawns worker processes: ~5 s on 2 idle cores.
def test_resume_with_worker_processes(mini_records):
  cfg = pipeline.PipelineConfig(batch_size=1, seed=2, num_workers=2)
  kw = dict(shard_index=0, shard_count=1)
  specs = _specs(mini_records, ["video", "ref"])
  it = pipeline.make_iterator(specs, TRAIN, cfg, **kw)
  _take(it, 5)
  state = it.get_state()
  want = _take(it, 2)
  resumed = pipeline.make_iterator(specs, TRAIN, cfg, **kw)
  resumed.set_state(state)
  for a, b in zip(want, _take(resumed, 2)):
    _assert_batches_equal(a, b)
  # Workers do not change the data: same batches as in-process decoding.
  single = pipeline.make_iterator(
    specs, TRAIN, pipeline.PipelineConfig(batch_size=1, seed=2), **kw
  )
  _take(single, 5)
  for a, b in zip(want, _take(single, 2)):
    _assert_batches_equal(a, b)


def test_processes_see_disjoint_shards(mini_records):
  cfg = pipeline.PipelineConfig(batch_size=1, num_epochs=1)
  keys = []
  for index in range(2):
    it = pipeline.make_iterator(
      _specs(mini_records, ["video"]),
      EVAL,
      cfg,
      shard_index=index,
      shard_count=2,
    )
    keys.append({b["key"][0] for b in it})
  assert len(keys[0]) == len(keys[1]) > 0
  assert not keys[0] & keys[1]


def test_the_global_batches_do_not_depend_on_the_process_count(mini_records):
  """Process p's batches are rows p*b..(p+1)*b of each global batch of
  one process, mixture and random transforms included."""
  specs = _specs(mini_records, ["image", "video"])

  def batches(index, count, n=5):
    return _take(
      pipeline.make_iterator(
        specs,
        TRAIN,
        pipeline.PipelineConfig(batch_size=4 // count, seed=3),
        shard_index=index,
        shard_count=count,
      ),
      n,
    )

  parts = [batches(0, 2), batches(1, 2)]
  for one, first, second in zip(batches(0, 1), *parts):
    assert one["key"].tolist() == (
      first["key"].tolist() + second["key"].tolist()
    )
    np.testing.assert_array_equal(
      one["source_video"],
      np.concatenate([first["source_video"], second["source_video"]]),
    )


def test_mixture_ratios_hold(mini_records):
  cfg = pipeline.PipelineConfig(batch_size=1, seed=3)
  it = pipeline.make_iterator(
    _specs(mini_records, weights=[2.0, 1.0, 1.0]),
    EVAL,
    cfg,
    shard_index=0,
    shard_count=1,
  )
  ids = np.array([next(it)["source_id"][0] for _ in range(300)])
  fractions = np.bincount(ids, minlength=3) / len(ids)
  np.testing.assert_allclose(fractions, [0.5, 0.25, 0.25], atol=0.02)
  # Equal weights give the reference's round robin (reference §4.4).
  it = pipeline.make_iterator(
    _specs(mini_records), EVAL, cfg, shard_index=0, shard_count=1
  )
  assert [next(it)["source_id"][0] for _ in range(6)] == [0, 1, 2, 0, 1, 2]


def test_mixed_shapes_in_one_batch_name_the_field():
  with pytest.raises(ValueError, match="source_video: shapes differ"):
    examples.stack_examples(
      [
        {"source_video": np.zeros((1, 32, 32, 3)), "prompt": "a"},
        {"source_video": np.zeros((5, 32, 32, 3)), "prompt": "b"},
      ]
    )


def test_global_batch_on_fake_devices(mini_records):
  mesh = sharding.make_mesh({"data": -1})
  it = pipeline.make_iterator(
    _specs(mini_records, ["video"]),
    EVAL,
    pipeline.PipelineConfig(batch_size=8, num_epochs=None),
    shard_index=0,
    shard_count=1,
  )
  local = next(it)
  batch = pipeline.to_global_batch(local, mesh)
  assert isinstance(batch["source_video"], jax.Array)
  assert batch["source_video"].shape == (8, 5, 64, 64, 3)
  assert len(batch["source_video"].sharding.device_set) == len(jax.devices())
  np.testing.assert_array_equal(
    np.asarray(batch["source_video"]), local["source_video"]
  )
  assert batch["prompt"].dtype == object


def _pool_encoder(video):
  """A stand-in VAE: 4x temporal (first frame alone), 16x spatial pooling."""
  b, t, h, w, c = video.shape
  first, rest = video[:, :1], video[:, 1:]
  frames = [first] + (
    [rest.reshape(b, -1, 4, h, w, c).mean(2)] if t > 1 else []
  )
  video = np.concatenate(frames, 1)
  return video.reshape(b, -1, h // 16, 16, w // 16, 16, c).mean((3, 5))


def test_latent_cache_is_read_like_media_records(mini_records, tmp_path):
  kw = dict(shard_index=0, shard_count=1, mllm_transform=_stand_in_mllm)
  media = pipeline.make_iterator(
    _specs(mini_records, ["ref"]),
    EVAL,
    pipeline.PipelineConfig(batch_size=2, shuffle=False, num_epochs=1),
    **kw,
  )
  media_batches = list(media)
  latent_cache.build_latent_cache(
    media_batches, _pool_encoder, tmp_path / "cache", num_shards=2
  )
  cached = pipeline.make_iterator(
    [pipeline.SourceSpec(str(tmp_path / "cache"))],
    EVAL,
    pipeline.PipelineConfig(batch_size=1, shuffle=False, num_epochs=1),
    shard_index=0,
    shard_count=1,
  )
  got = {b["key"][0]: b for b in cached}
  want = {}
  for batch in media_batches:
    for i, key in enumerate(batch["key"]):
      want[key] = (batch, i)
  assert sorted(got) == sorted(want)
  for key, (batch, i) in want.items():
    cached_batch = got[key]
    assert cached_batch["target_latents"].shape == (1, 2, 4, 4, 3)
    np.testing.assert_allclose(
      cached_batch["source_latents"][0],
      _pool_encoder(transforms.to_unit_range(batch["source_video"][i : i + 1]))[
        0
      ],
      rtol=1e-6,
    )
    assert cached_batch["ref_latents"].shape == (1, 1, 4, 4, 3)
    np.testing.assert_array_equal(
      cached_batch["mllm"]["input_ids"][0], batch["mllm"]["input_ids"][i]
    )
    assert cached_batch["prompt"][0] == batch["prompt"][i]


def test_reads_a_tfds_directory_like_array_records(mini_dir, tmp_path):
  from kiwi_jax.data import metadata, tfds_builder

  rows = metadata.read_csv_rows(mini_dir / "refvie_mini_video.csv")
  path, _ = tfds_builder.build_tfds({"train": rows}, mini_dir, tmp_path)
  small = examples.ExampleConfig(max_frames=5, max_pixels=32 * 32)
  it = pipeline.make_iterator(
    [pipeline.SourceSpec(str(path), example=small)],
    EVAL,
    pipeline.PipelineConfig(batch_size=2, num_epochs=1),
    shard_index=0,
    shard_count=1,
  )
  batches = list(it)
  assert len(batches) == len(rows) // 2
  assert batches[0]["source_video"].shape == (2, 5, 32, 32, 3)
  assert isinstance(batches[0]["key"][0], str)


def test_iterator_state_round_trips_through_orbax(mini_records, tmp_path):
  grain = pytest.importorskip("grain")
  ocp = pytest.importorskip("orbax.checkpoint")
  kw = dict(shard_index=0, shard_count=1)
  cfg = pipeline.PipelineConfig(batch_size=1, seed=4)
  specs = _specs(mini_records)
  it = pipeline.make_iterator(specs, TRAIN, cfg, **kw)
  _take(it, 4)
  manager = ocp.CheckpointManager(tmp_path / "ckpt")
  manager.save(
    4, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it))
  )
  manager.wait_until_finished()
  want = next(it)
  resumed = pipeline.make_iterator(specs, TRAIN, cfg, **kw)
  manager.restore(
    4,
    args=ocp.args.Composite(
      data_iter=grain.checkpoint.CheckpointRestore(resumed)
    ),
  )
  _assert_batches_equal(want, next(resumed))


def test_each_epoch_is_shuffled_differently(mini_records):
  it = pipeline.make_iterator(
    _specs(mini_records, ["video"]),
    EVAL,
    pipeline.PipelineConfig(batch_size=1, seed=0, num_epochs=2),
    shard_index=0,
    shard_count=1,
  )
  keys = [b["key"][0] for b in it]
  half = len(keys) // 2
  assert sorted(keys[:half]) == sorted(keys[half:])
  assert keys[:half] != keys[half:]
