"""EditPipeline: progress from inside the compiled loop, sharded inference
on 8 fake CPU devices, guidance off by default, image mode."""

import jax
import numpy as np
import pytest

from kiwi_jax import sharding
from kiwi_jax.pipeline import EditInputError, EditPipeline
from tests.pipeline import toy_editor

NOISE = (
  np.random.default_rng(3).standard_normal((1, 3, 4, 6, 4)).astype(np.float32)
)


@pytest.fixture(scope="module")
def pipe(toy_pipeline):
  return toy_pipeline


def test_progress_reports_every_step_once(pipe, sample):
  seen = []
  result = pipe.edit(
    sample[0],
    sample[2],
    steps=3,
    noise=NOISE,
    on_step=lambda done, total: seen.append((done, total)),
  )
  assert seen == [(i, 3) for i in range(1, 4)]
  assert set(result.seconds) >= {
    "mllm_encode",
    "vae_encode",
    "denoise",
    "vae_decode",
    "total",
  }


def test_call_returns_uint8_frames(pipe, sample):
  frames = pipe(
    sample[0],
    sample[2],
    ref_image=sample[1],
    steps=3,
    max_frames=5,
    max_pixels=64 * 96,
    seed=1,
  )
  # 72x100 over 6144 px: int(72 / 1.0825) = 66, int(100 / 1.0825) = 92,
  # floored to multiples of 32.
  assert frames.dtype == np.uint8 and frames.shape == (5, 64, 64, 3)


def test_seed_and_reference_matter(pipe, sample):
  a = pipe.edit(sample[0], sample[2], steps=3, seed=0).latents
  b = pipe.edit(sample[0], sample[2], steps=3, seed=0).latents
  c = pipe.edit(sample[0], sample[2], steps=3, seed=1).latents
  d = pipe.edit(sample[0], sample[2], sample[1], steps=3, seed=0).latents
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c) and not np.allclose(a, d)


def test_guidance_is_off_by_default_and_scale_one_is_conditional(pipe, sample):
  base = pipe.edit(sample[0], sample[2], steps=3, noise=NOISE).latents
  guided = pipe.edit(
    sample[0], sample[2], steps=3, noise=NOISE, guidance_scale=1.0
  ).latents
  strong = pipe.edit(
    sample[0],
    sample[2],
    steps=3,
    noise=NOISE,
    guidance_scale=4.0,
    negative_prompt="blurry",
  ).latents
  np.testing.assert_allclose(guided, base, atol=1e-5)
  assert not np.allclose(strong, base, atol=1e-3)


def test_text_and_reference_guidance(pipe, sample):
  source, ref, prompt = sample
  base = pipe.edit(source, prompt, ref, steps=3, noise=NOISE).latents
  # Scales of 1 telescope to the fully conditioned velocity.
  ones = pipe.edit(
    source,
    prompt,
    ref,
    steps=3,
    noise=NOISE,
    guidance_scale=1.0,
    ref_guidance_scale=1.0,
  ).latents
  np.testing.assert_allclose(ones, base, atol=1e-5)
  # A zero reference scale is the text-guided edit without the reference.
  no_ref = pipe.edit(source, prompt, steps=3, noise=NOISE).latents
  zero = pipe.edit(
    source,
    prompt,
    ref,
    steps=3,
    noise=NOISE,
    guidance_scale=1.0,
    ref_guidance_scale=0.0,
  ).latents
  np.testing.assert_allclose(zero, no_ref, atol=1e-5)
  with pytest.raises(EditInputError, match="reference image"):
    pipe.edit(source, prompt, steps=3, ref_guidance_scale=2.0)


def test_image_mode_and_source_free(pipe, sample):
  image = sample[0][0]
  result = pipe.edit(image, "Make it red.", steps=3)
  assert result.frames.shape == (1, 64, 96, 3) and result.source.is_image
  free = pipe.edit(image, "Make it red.", steps=3, use_source=False)
  assert free.seconds["vae_encode"] == 0.0
  assert not np.allclose(free.latents, result.latents)


def test_bad_arguments(pipe, sample):
  with pytest.raises(EditInputError, match="prompt"):
    pipe.edit(sample[0], " ")
  with pytest.raises(EditInputError, match="steps"):
    pipe.edit(sample[0], "x", steps=0)
  with pytest.raises(ValueError, match="noise shape"):
    pipe.edit(sample[0], "x", noise=NOISE[:, :2])
  with pytest.raises(ValueError, match="schedule"):
    pipe.edit(sample[0], "x", steps=3, scheduler="unipc")


def test_sharded_inference_matches_single_device(pipe, sample):
  assert jax.device_count() == 8
  mesh = sharding.make_mesh({"fsdp": 2, "tensor": 2, "sequence": 2})
  sharded = EditPipeline(*toy_editor.make_toy_editor(), mesh=mesh)
  kernel = sharded.state["mlp"]["fc1"]["kernel"][...]
  assert len(kernel.sharding.device_set) == 8
  assert kernel.addressable_shards[0].data.shape == (8, 16)  # fsdp x tensor
  seen = []
  got = sharded.edit(
    sample[0],
    sample[2],
    sample[1],
    steps=3,
    noise=NOISE,
    on_step=lambda done, total: seen.append(done),
  )
  want = pipe.edit(sample[0], sample[2], sample[1], steps=3, noise=NOISE)
  assert seen == [1, 2, 3]
  np.testing.assert_allclose(got.latents, want.latents, atol=1e-5)
  np.testing.assert_array_equal(got.frames.shape, want.frames.shape)


def test_phases_are_announced_once_in_order(pipe, sample):
  source, ref, prompt = sample
  seen = []
  kwargs = dict(
    steps=2,
    noise=NOISE,
    guidance_scale=2.0,
    ref_guidance_scale=2.0,
    on_phase=seen.append,
  )
  first = pipe.edit(source, prompt, ref, **kwargs)
  assert seen == [
    "mllm_encode",
    "vae_encode",
    "compile",
    "denoise",
    "vae_decode",
  ]
  seen.clear()  # the same shapes again: the loop is already compiled
  again = pipe.edit(source, prompt, ref, **kwargs)
  assert seen == ["mllm_encode", "vae_encode", "denoise", "vae_decode"]
  np.testing.assert_array_equal(first.latents, again.latents)
  seen.clear()
  pipe.edit(source[0], prompt, steps=2, use_source=False, on_phase=seen.append)
  assert seen == ["mllm_encode", "compile", "denoise", "vae_decode"]


def test_out_of_range_arguments_and_outputs(pipe, sample, media, tmp_path):
  from kiwi_jax.pipeline import EditOutputError
  from kiwi_jax.utils.paths import OutputIsInputError

  for kwargs, needle in [
    ({"steps": 100_000_000_000}, "1..1000"),
    ({"seed": -1}, "seed"),
    ({"guidance_scale": float("nan")}, "finite"),
    ({"negative_prompt": "\udcff"}, "UTF-8"),
  ]:
    with pytest.raises(EditInputError, match=needle):
      pipe.edit(sample[0], "x", **{"steps": 2, **kwargs})
  with pytest.raises(EditInputError, match="UTF-8"):
    pipe.edit(sample[0], "caf\udce9", steps=2)
  video = tmp_path / "v.mp4"
  video.write_bytes((media / "video.mp4").read_bytes())
  result = pipe.edit(str(video), "x", steps=2)
  with pytest.raises(EditOutputError, match="frame rate"):
    result.save(tmp_path / "o.mp4", fps=0)
  with pytest.raises(OutputIsInputError, match="same file"):
    result.save(tmp_path / "." / "v.mp4")
  assert video.read_bytes() == (media / "video.mp4").read_bytes()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]


def test_shift_defaults_to_the_models_own(pipe, sample):
  def latents(p, **kw):
    return p.edit(sample[0], sample[2], steps=3, noise=NOISE, **kw).latents

  default = latents(pipe)
  np.testing.assert_array_equal(default, latents(pipe, shift=5.0))
  assert not np.allclose(default, latents(pipe, shift=1.0), atol=1e-4)
  # A model trained with shift 1 samples with it unless told otherwise.
  cfg = toy_editor.ToyEditorConfig(flow_shift=1.0)
  even = EditPipeline(*toy_editor.make_toy_editor(cfg))
  np.testing.assert_array_equal(latents(even), latents(even, shift=1.0))
  np.testing.assert_array_equal(latents(even, shift=5.0), default)
  with pytest.raises(ValueError, match="shift"):
    latents(pipe, shift=0.0)
