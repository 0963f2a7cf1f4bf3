"""The pipeline with a tiny converted Kiwi-Edit against PyTorch.

The checkpoint is the kiwi tests' fake stage-3 DiffSynth release
(``tests/converters/kiwi_fakes.py``) converted by ``kiwi_jax.converters.kiwi.convert``. The
torch side is ``kiwi_jax.converters.kiwi.torch_model.TorchKiwi`` (the faithful restatement
of the Kiwi forward) inside the reference sampling loop
(``torch_reference``), fed the same initial noise and the same VAE latents
(the VAE has its own parity tests); the MLLM context is computed by both
sides from the same processor output. fp32, max abs error <= 1e-4.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
# Runs once the Kiwi-Edit assembly (branch `kiwi`) is merged.
pytest.importorskip("kiwi_jax.models.kiwi.model")
pytest.importorskip("kiwi_jax.converters.kiwi.convert")

from kiwi_jax.cli import edit as cli  # noqa: E402
from kiwi_jax.converters.checkpoint_io import Checkpoint  # noqa: E402
from kiwi_jax.converters.kiwi import convert as kiwi_conv  # noqa: E402
from kiwi_jax.converters.kiwi import sources as kiwi_sources  # noqa: E402
from kiwi_jax.converters.kiwi.torch_model import TorchKiwi  # noqa: E402
from kiwi_jax.data import video_io  # noqa: E402
from kiwi_jax.models.kiwi.config import KiwiEditConfig  # noqa: E402
from kiwi_jax.pipeline import EditPipeline  # noqa: E402
from kiwi_jax.pipeline import inputs as inputs_lib  # noqa: E402
from kiwi_jax.pipeline import programs as stages  # noqa: E402
from tests.converters import kiwi_fakes  # noqa: E402
from tests.pipeline.torch_reference import TorchFlowMatchScheduler  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

CFG = KiwiEditConfig.from_variant("tiny")
STEPS = 3


def dict_checkpoint(tensors):
  """The fake model's canonical tensors as a lazy checkpoint."""
  index = {
    k: {"shape": v.shape, "dtype": "float32"} for k, v in tensors.items()
  }
  return Checkpoint("truth", index, lambda k, item: tensors[k])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """(converted dir, TorchKiwi) of one fake stage-3 release."""
  root = tmp_path_factory.mktemp("kiwi")
  truth = kiwi_fakes.truth(CFG)
  paths = kiwi_fakes.write_diffsynth(
    truth, kiwi_fakes.lora_factors(CFG), CFG, root / "src"
  )
  sources = kiwi_sources.from_diffsynth(
    **paths, lora="merge", ref_pad_first=False
  )
  out, _ = kiwi_conv.convert(sources, root / "out", CFG)
  return out, TorchKiwi(dict_checkpoint(truth), CFG)


@pytest.fixture(scope="module")
def clip(sample):
  """5 frames of 64x96 (latents 2 x 4 x 6) and a reference image."""
  return sample[0][:5, 4:68, 2:98], sample[1], sample[2]


def torch_qwen_kwargs(example, mode):
  """A processor example as transformers' Qwen2.5-VL keyword arguments."""
  ids = example["input_ids"]
  grids = np.asarray(example["grid_thw"])
  n_images = {"image": 1, "video": 0, "reference": 1}[mode]
  sizes = np.prod(grids, axis=1)
  pixels = example["pixel_values"]
  kw = {}
  if n_images:
    kw["pixel_values"] = torch.from_numpy(pixels[: sizes[:n_images].sum()])
    kw["image_grid_thw"] = torch.from_numpy(grids[:n_images].astype(np.int64))
  if len(grids) > n_images:
    kw["pixel_values_videos"] = torch.from_numpy(
      pixels[sizes[:n_images].sum() :]
    )
    kw["video_grid_thw"] = torch.from_numpy(grids[n_images:].astype(np.int64))
    kw["second_per_grid_ts"] = torch.ones(len(grids) - n_images)
  m = CFG.mllm
  types = np.zeros_like(ids)
  types[ids == m.image_token_id] = 1
  types[ids == m.video_token_id] = 2
  kw["mm_token_type_ids"] = torch.from_numpy(types)[None]
  kw["position_ids"] = torch.from_numpy(
    example["position_ids"].astype(np.int64)
  )[:, None]
  return torch.from_numpy(ids.astype(np.int64))[None], kw


def to_torch(x):
  """channels-last [B, t, h, w, c] -> torch [B, c, t, h, w]."""
  return torch.from_numpy(np.moveaxis(np.asarray(x, np.float32), -1, 1).copy())


def test_latents_match_torch_reference_loop(converted, clip):
  """Reference mode: MLLM context with the reference image, source
  injection and reference tokens (video mode is the same path without the
  reference pieces; the kiwi parity tests cover both modes per step)."""
  out, tk = converted
  frames, ref, prompt = clip
  pipe = EditPipeline.from_pretrained(out)
  source = inputs_lib.load_source(frames)
  noise = (
    np.random.default_rng(0)
    .standard_normal((1, 2, 4, 6, CFG.dit.in_channels))
    .astype(np.float32)
  )
  # Whole-clip VAE stages, so the latents fed to torch below come from the
  # same compiled programs.
  result = pipe.edit(
    source, prompt, ref, steps=STEPS, noise=noise, vae_tiling=False
  )

  mode = "reference"
  arrays, options = pipe.processor(prompt, frames=source.frames, ref_image=ref)
  assert options["mode"] == mode
  # The torch side gets the unpadded processor output.
  example = pipe.processor.qwen(
    prompt, frames=source.frames, ref_image=ref, mode=mode
  )
  ids, kw = torch_qwen_kwargs(example, mode)
  context = tk.encode(ids, mode, **kw)
  jax_context = stages.encode_conditions(
    pipe.graphdef, pipe.state, arrays, tuple(sorted(options.items()))
  ).context
  np.testing.assert_allclose(
    np.asarray(jax_context), context.numpy(), atol=1e-4, rtol=0
  )

  src = stages.encode_video(
    pipe.graphdef, pipe.state, inputs_lib.to_model_range(source.frames)[None]
  )
  padded = inputs_lib.pad_reference(ref, *source.size)
  ref_lat = to_torch(
    stages.encode_video(
      pipe.graphdef, pipe.state, inputs_lib.to_model_range(padded)[None, None]
    )
  )
  scheduler = TorchFlowMatchScheduler(STEPS)
  z = to_torch(noise)
  with torch.no_grad():
    for t in scheduler.timesteps:
      # The reference casts t to its torch_dtype: the DiT's, float32 here.
      t_model = t.unsqueeze(0).to(getattr(torch, str(np.dtype(CFG.dit.dtype))))
      sigma = scheduler.get_sigma(t_model).reshape(1)
      v = tk.velocity(
        z,
        t_model.float(),
        context,
        source=to_torch(src),
        sigma=sigma,
        ref=ref_lat,
      )
      z = scheduler.step(v, t, z)
  want = np.moveaxis(z.numpy(), 1, -1)
  print(
    "max abs errors: context",
    np.abs(np.asarray(jax_context) - context.numpy()).max(),
    "latents",
    np.abs(result.latents - want).max(),
  )
  np.testing.assert_allclose(result.latents, want, atol=1e-4, rtol=0)
  assert np.abs(want - noise).max() > 0.1


def test_cli_with_converted_kiwi(converted, clip, tmp_path, capsys):
  """End to end with the reference's tiled VAE runner (the default)."""
  out, _ = converted
  frames, ref, prompt = clip
  from PIL import Image

  from kiwi_jax.utils.video_files import write_mp4

  write_mp4(tmp_path / "in.mp4", frames, fps=10)
  Image.fromarray(ref).save(tmp_path / "ref.png")
  assert (
    cli.main(
      [
        "--checkpoint",
        str(out),
        "--video",
        str(tmp_path / "in.mp4"),
        "--ref",
        str(tmp_path / "ref.png"),
        "--prompt",
        prompt,
        "--out",
        str(tmp_path / "edit.mp4"),
        "--steps",
        str(STEPS),
        "--no-progress",
      ]
    )
    == 0
  )
  decoded = video_io.decode_video((tmp_path / "edit.mp4").read_bytes())
  assert decoded.shape == (5, 64, 96, 3)
  assert "96x64, 5 frames" in capsys.readouterr().out


def test_step_cache_with_converted_kiwi(converted, clip):
  """Off: no counter; threshold 0: the off latents bit for bit with every
  block counted; a huge threshold runs the blocks at step 0 only."""
  out, _ = converted
  frames, ref, prompt = clip
  pipe = EditPipeline.from_pretrained(out)
  kw = dict(steps=STEPS, vae_tiling=False)
  off = pipe.edit(frames, prompt, ref, **kw)
  zero = pipe.edit(frames, prompt, ref, cache_threshold=0.0, **kw)
  huge = pipe.edit(frames, prompt, ref, cache_threshold=1e6, **kw)
  assert off.block_evals is None
  np.testing.assert_array_equal(zero.latents, off.latents)
  assert zero.block_evals == STEPS * CFG.dit.num_layers
  assert huge.block_evals == CFG.dit.num_layers
  assert np.isfinite(huge.latents).all()
  assert not np.array_equal(huge.latents, off.latents)


def test_sharded_kiwi_pipeline_matches_single_device(converted, clip):
  """fsdp x tensor x sequence = 2 x 2 x 2 on 8 fake devices."""
  from kiwi_jax import sharding

  out, _ = converted
  frames, ref, prompt = clip
  noise = (
    np.random.default_rng(1)
    .standard_normal((1, 2, 4, 6, CFG.dit.in_channels))
    .astype(np.float32)
  )
  mesh = sharding.make_mesh({"fsdp": 2, "tensor": 2, "sequence": 2})
  sharded = EditPipeline.from_pretrained(out, mesh=mesh)
  got = sharded.edit(
    frames, prompt, ref, steps=STEPS, noise=noise, vae_tiling=False
  )
  want = EditPipeline.from_pretrained(out).edit(
    frames, prompt, ref, steps=STEPS, noise=noise, vae_tiling=False
  )
  np.testing.assert_allclose(got.latents, want.latents, atol=1e-5)
  assert np.abs(got.frames.astype(int) - want.frames).max() <= 1


def test_eval_runner_with_converted_kiwi(converted, tmp_path, capsys):
  """`eval.py run` + `metrics` on a small RefVIE-mini benchmark with the
  tiny converted model (issue 8): every item edited, a rerun edits nothing,
  the metrics table is written."""
  import eval as eval_cli
  from tests.evaluators import eval_fakes

  root = tmp_path / "bench"
  yaml_path = eval_fakes.make_refvie_mini(str(root), count=2)
  bench = [
    "--bench",
    "refvie",
    "--dataset_file",
    yaml_path,
    "--data_root",
    str(root),
    "--no_progress",
    "--save_dir",
    str(tmp_path / "out"),
  ]
  run = (
    ["run"]
    + bench
    + [
      "--checkpoint_dir",
      str(converted[0]),
      "--max_frames",
      "5",
      "--max_pixels",
      str(64 * 64),
    ]
  )
  assert eval_cli.main(run) == 0
  assert "2 edited" in capsys.readouterr().out
  assert eval_cli.main(run) == 0
  assert "0 edited, 2 already done" in capsys.readouterr().out
  assert eval_cli.main(["metrics"] + bench) == 0
  table = capsys.readouterr().out
  assert "| subject | 1 |" in table and "| background | 1 |" in table
