"""Several seeds in one run (`EditPipeline.edit_seeds`, `kiwi-edit --seeds`)
on the tiny Kiwi-Edit checkpoint."""

import os
import shutil

import numpy as np
import pytest

from kiwi_jax.cli import edit as cli
from kiwi_jax.data import video_io
from kiwi_jax.diffusion import sampler
from kiwi_jax.pipeline import EditInputError, EditPipeline, edit_pipeline
from kiwi_jax.pipeline import seeds as seeds_lib

STEPS = 3
CLIP = dict(steps=STEPS, max_frames=5, max_pixels=96 * 64)
CLI_STEPS = ["--steps", str(STEPS), "--max-frames", "5", "--no-progress"]


@pytest.fixture(scope="module")
def pipe(toy_checkpoint):
  return EditPipeline.from_pretrained(toy_checkpoint)


def counting(monkeypatch, module, name, counts):
  real = getattr(module, name)

  def wrapper(*args, **kwargs):
    counts[name] = counts.get(name, 0) + 1
    return real(*args, **kwargs)

  monkeypatch.setattr(module, name, wrapper)


def test_each_seed_equals_its_separate_run(pipe, sample, monkeypatch):
  source, ref, prompt = sample
  seeds = [3, 0, 7]
  separate = {k: pipe.edit(source, prompt, ref, seed=k, **CLIP) for k in seeds}
  counts, batches = {}, []
  counting(monkeypatch, edit_pipeline.stages, "encode_conditions", counts)
  counting(monkeypatch, edit_pipeline.stages, "encode_video", counts)
  real_loop = pipe._denoise_loop

  def loop(args, *rest, **kwargs):
    batches.append(args[0].shape[0])
    return real_loop(args, *rest, **kwargs)

  monkeypatch.setattr(pipe, "_denoise_loop", loop)
  steps_seen = []
  together = pipe.edit_seeds(
    source,
    prompt,
    ref,
    seeds=seeds,
    seed_batch=2,
    on_step=lambda d, t: steps_seen.append((d, t)),
    **CLIP,
  )
  # The conditions are encoded once (one MLLM pass, source + reference VAE
  # passes), the loop runs on batches of 2 then 1 seeds.
  assert counts == {"encode_conditions": 1, "encode_video": 2}
  assert batches == [2, 1]
  assert steps_seen[-1] == (2 * STEPS, 2 * STEPS)
  assert together.seeds == seeds
  for k in seeds:
    one, many = separate[k], together[k]
    assert many.latents.shape == one.latents.shape
    np.testing.assert_allclose(many.latents, one.latents, atol=2e-5, rtol=1e-5)
    diff = np.abs(many.frames.astype(int) - one.frames.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01
  # Different seeds give different edits.
  assert not np.allclose(together[3].latents, together[0].latents)


def test_seed_noise_is_the_single_runs_noise(pipe):
  shape = (1, 2, 4, 6, pipe.latent_channels)
  stacked = pipe._seed_noise([5, 9], shape)
  for i, k in enumerate([5, 9]):
    single = sampler.initial_noise(k, shape, pipe.latent_dtype)
    assert stacked[i : i + 1].dtype == single.dtype
    np.testing.assert_array_equal(
      np.asarray(stacked[i : i + 1]), np.asarray(single)
    )


def test_grid_and_saved_files(pipe, sample, tmp_path):
  source, _, prompt = sample
  results = pipe.edit_seeds(source, prompt, seeds=[1, 2], **CLIP)
  grid = results.grid()
  t, h, w, _ = results[1].frames.shape
  assert grid.shape == (t, h, 3 * w, 3)
  np.testing.assert_array_equal(grid[:, :, :w], results[1].source.frames)
  np.testing.assert_array_equal(grid[:, :, w : 2 * w], results[1].frames)
  np.testing.assert_array_equal(grid[:, :, 2 * w :], results[2].frames)
  written = results.save(tmp_path / "e.gif", fps=8)
  assert [p.name for p in written] == [
    "e_seed1.gif",
    "e_seed2.gif",
    "e_grid.gif",
  ]
  assert sorted(os.listdir(tmp_path)) == [
    "e_grid.gif",
    "e_seed1.gif",
    "e_seed2.gif",
  ]


def test_failed_write_leaves_nothing(pipe, sample, tmp_path, monkeypatch):
  source, _, prompt = sample
  results = pipe.edit_seeds(
    source, prompt, seeds=[1, 2], steps=1, max_frames=5, max_pixels=96 * 64
  )
  real = seeds_lib.outputs_lib.write_frames

  def fail_on_grid(path, *args):
    if "_grid" in str(path):
      raise RuntimeError("disk full")
    return real(path, *args)

  monkeypatch.setattr(seeds_lib.outputs_lib, "write_frames", fail_on_grid)
  with pytest.raises(RuntimeError, match="disk full"):
    results.save(tmp_path / "e.gif", fps=8)
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
  "seeds,needle",
  [
    ([], "at least one"),
    ([0, 0], "repeated"),
    ([-1], "0..4294967295"),
    ([2**32], "0..4294967295"),
    (["1"], "integer"),
    (3, "list"),
  ],
)
def test_api_rejects_bad_seeds(pipe, sample, seeds, needle):
  source, _, prompt = sample
  with pytest.raises(EditInputError, match=needle):
    pipe.edit_seeds(source, prompt, seeds=seeds, **CLIP)
  with pytest.raises(TypeError, match="seeds="):
    pipe.edit_seeds(source, prompt, seeds=[0], seed=1, **CLIP)
  with pytest.raises(EditInputError, match="seed_batch"):
    pipe.edit_seeds(source, prompt, seeds=[0], seed_batch=0, **CLIP)


def test_cli_writes_each_seed_and_the_grid(
  toy_checkpoint, media, tmp_path, capsys
):
  out = tmp_path / "edit.mp4"
  common = [
    "--checkpoint",
    toy_checkpoint,
    "--video",
    media / "video.mp4",
    "--prompt",
    "Make it blue.",
    *CLI_STEPS,
  ]
  assert (
    cli.main([str(a) for a in common + ["--out", out, "--seeds", "4,1"]]) == 0
  )
  line = capsys.readouterr().out
  assert "2 seeds" in line and "edit_grid.mp4" in line
  assert sorted(os.listdir(tmp_path)) == [
    "edit_grid.mp4",
    "edit_seed1.mp4",
    "edit_seed4.mp4",
  ]
  grid = video_io.decode_video((tmp_path / "edit_grid.mp4").read_bytes())
  seed1 = video_io.decode_video((tmp_path / "edit_seed1.mp4").read_bytes())
  assert seed1.shape == (5, 64, 96, 3)
  assert grid.shape == (5, 64, 3 * 96, 3)
  single = tmp_path / "single" / "s1.mp4"
  assert (
    cli.main([str(a) for a in common + ["--out", single, "--seed", "1"]]) == 0
  )
  again = video_io.decode_video(single.read_bytes())
  assert np.abs(again.astype(int) - seed1.astype(int)).mean() < 0.5


def bad_run(capsys, *argv):
  code = cli.main([str(a) for a in argv])
  err = capsys.readouterr().err
  assert code == 2 and err.startswith("kiwi-edit: error:")
  assert err.count("\n") == 1
  return err


@pytest.mark.parametrize(
  "flags,needle",
  [
    (["--seeds", "0,,1"], "empty entry"),
    (["--seeds", "a"], "'a' is not a seed"),
    (["--seeds", "0,1,0"], "seed 0 is repeated"),
    (["--seeds", "-1"], "'-1' is not a seed"),
    (["--seeds", ""], "empty entry"),
    (["--seeds", "4294967296"], "0..4294967295"),
    (["--seed", "0", "--seeds", "1,2"], "--seed and --seeds"),
    (["--seeds", "1,2", "--seed-batch", "0"], "--seed-batch"),
    (["--seed_batch", "2"], "--seed-batch needs --seeds"),
  ],
)
def test_cli_flag_errors(
  toy_checkpoint, media, tmp_path, capsys, flags, needle
):
  err = bad_run(
    capsys,
    "--checkpoint",
    toy_checkpoint,
    "--video",
    media / "video.mp4",
    "--prompt",
    "x",
    "--out",
    tmp_path / "o.mp4",
    *CLI_STEPS,
    *flags,
  )
  assert needle in err
  assert os.listdir(tmp_path) == []


def test_cli_refuses_a_seed_output_over_the_source(
  toy_checkpoint, media, tmp_path, capsys
):
  video = tmp_path / "clip_seed2.mp4"
  shutil.copy(media / "video.mp4", video)
  before = video.read_bytes()
  err = bad_run(
    capsys,
    "--checkpoint",
    toy_checkpoint,
    "--video",
    video,
    "--prompt",
    "x",
    "--out",
    tmp_path / "clip.mp4",
    "--seeds",
    "1,2",
    *CLI_STEPS,
  )
  assert "clip_seed2.mp4" in err
  assert video.read_bytes() == before
  assert sorted(os.listdir(tmp_path)) == ["clip_seed2.mp4"]


def test_help_names_the_seed_flags():
  text = cli.build_parser().format_help()
  for flag in ("--seeds", "--seed-batch", "_grid"):
    assert flag in text


def test_output_paths_and_chunks():
  names = [
    p.name
    for p in seeds_lib.output_paths(
      "d/e.png", [2, 0], side_by_side=True, image_mode=True
    )
  ]
  assert names == [
    "e_seed2.png",
    "e_seed2_concat.png",
    "e_seed2_concat.gif",
    "e_seed0.png",
    "e_seed0_concat.png",
    "e_seed0_concat.gif",
    "e_grid.png",
  ]
  assert seeds_lib.chunks([5, 6, 7], 2) == [[5, 6], [7]]
  assert seeds_lib.chunks([5, 6, 7], None) == [[5, 6, 7]]
  assert seeds_lib.parse_seeds(" 3, 1") == [3, 1]
