"""Long-video editing in blended windows (``kiwi_jax.pipeline.windows``,
``window_programs``, ``EditPipeline.edit(window=, overlap=)``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kiwi_jax.models.kiwi.model import abstract_kiwi
from kiwi_jax.models.vae import tiling
from kiwi_jax.pipeline import EditInputError, EditPipeline, windows
from kiwi_jax.testing import kiwi as tiny_kiwi

PROMPT = "Make it snowy."
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def moving_clip(frames=41, size=32):
  """A smooth pattern drifting one pixel a frame."""
  t = np.arange(frames)[:, None, None]
  y, x = np.arange(size)[None, :, None], np.arange(size)[None, None, :]
  wave = np.sin(2 * np.pi * (x + t) / 16) * np.cos(2 * np.pi * y / 20)
  return np.repeat((127.5 + 100 * wave)[..., None], 3, -1).astype(np.uint8)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory, tiny_tokenizer_dir):
  """A tiny converted checkpoint whose random DiT depends strongly enough
  on its window (weights perturbed by 0.5) for seams to show."""
  path = tiny_kiwi.save_tiny_kiwi(
    tmp_path_factory.mktemp("windows") / "ckpt",
    tokenizer_dir=tiny_tokenizer_dir,
    perturb=0.5,
  )
  return EditPipeline.from_pretrained(path, compile_cache_dir="off")


def test_window_plan_math():
  # The Wan geometry: 41 frames = 11 latent frames, windows of 3, share 1.
  plan = windows.WindowPlan.build(41, 9, 4, 4)
  assert (plan.num_frames, plan.length, plan.overlap) == (11, 3, 1)
  assert plan.starts == (0, 2, 4, 6, 8)
  # Frame-per-latent codec: windows of 9 sharing 4; the last moved back.
  plan = windows.WindowPlan.build(41, 9, 4, 1)
  assert plan.starts == (0, 5, 10, 15, 20, 25, 30, 32)
  assert windows.WindowPlan.build(45, 9, 4, 4).starts == (0, 2, 4, 6, 8, 9)
  assert windows.WindowPlan.build(9, 81, 16, 4).starts == (0,)
  assert windows.WindowPlan.build(81, 81, 16, 4).num_windows == 1


@pytest.mark.parametrize(
  "frames,window,overlap,factor",
  [
    (41, 9, 4, 1),
    (41, 9, 4, 4),
    (45, 9, 4, 4),
    (101, 17, 12, 1),
    (33, 9, 0, 1),
  ],
)
def test_blending_weights_sum_to_one(frames, window, overlap, factor):
  plan = windows.WindowPlan.build(frames, window, overlap, factor)
  for weights in (plan.weights(), plan.cut_weights()):
    assert weights.shape == (plan.num_windows, plan.length)
    assert np.all(weights >= 0)
    np.testing.assert_allclose(plan.coverage(weights), 1.0, atol=1e-6)
  assert set(np.unique(plan.cut_weights())) <= {0.0, 1.0}
  exclusive = plan.exclusive()
  total = np.zeros(plan.num_frames)
  for (s, e), w in zip(plan.spans(), plan.weights()):
    total[s:e] += w == 1
  assert np.all(total[exclusive] == 1)  # one window's own frames: weight 1


def test_cross_fade_is_linear():
  plan = windows.WindowPlan.build(41, 9, 4, 1)  # two windows share 4 frames
  w = plan.weights()
  np.testing.assert_allclose(w[0, -4:], [0.8, 0.6, 0.4, 0.2], rtol=1e-6)
  np.testing.assert_allclose(w[1, :4], [0.2, 0.4, 0.6, 0.8], rtol=1e-6)
  np.testing.assert_array_equal(plan.cut_weights()[0, -4:], [1, 1, 0, 0])
  # The last two share 32..38: a tie at 35 goes to the earlier window.
  assert plan.cuts() == [7, 12, 17, 22, 27, 32, 36]


@pytest.mark.parametrize(
  "window,overlap,needle",
  [
    (8, 4, r"4k\+1"),
    (1, 0, r"4k\+1"),
    (-3, 0, r"4k\+1"),
    (9, 2, "multiple of 4"),
    (9, -4, "multiple of 4"),
    (9, 12, "smaller than window"),
    (9, None, "needs overlap"),
    (True, 0, r"4k\+1"),
  ],
)
def test_bad_window_args(window, overlap, needle):
  with pytest.raises(EditInputError, match=needle):
    windows.check_window_args(window, overlap, 4)


def edit(pipe, clip, **kw):
  return pipe.edit(clip, PROMPT, steps=kw.pop("steps", 2), **kw)


def time_constant_noise(pipe, clip):
  """One noise frame for every latent frame: the random model's output is
  then smooth inside a window (with i.i.d. noise it is frame-wise noise,
  where no seam can show), so a measure can see the windows disagree."""
  t = (len(clip) - 1) // pipe.temporal_factor + 1
  h = clip.shape[1] // pipe.spatial_factor
  frame = jax.random.normal(jax.random.key(0), (1, 1, h, h, 12))
  return jnp.broadcast_to(frame, (1, t, h, h, 12))


def test_41_frames_without_seams(pipe):
  clip = moving_clip()
  kw = dict(window=9, overlap=4, window_mode="streamed", steps=8)
  kw.update(noise=time_constant_noise(pipe, clip), denoising_strength=0.6)
  blended = edit(pipe, clip, **kw)
  stitched = edit(pipe, clip, window_blend="none", **kw)
  assert blended.frames.shape == (41, 32, 32, 3)
  assert stitched.frames.shape == (41, 32, 32, 3)
  plan = windows.WindowPlan.build(41, 9, 4, pipe.temporal_factor)
  smooth = windows.seam_ratios(blended.frames, plan, pipe.temporal_factor)
  seams = windows.seam_ratios(stitched.frames, plan, pipe.temporal_factor)
  assert len(smooth) == plan.num_windows - 1 == 7
  assert smooth.max() <= windows.SEAM_FACTOR, smooth
  assert seams.max() > windows.SEAM_FACTOR, seams
  assert seams.mean() > smooth.mean() and seams.max() > smooth.max()


def test_batched_equals_streamed(pipe):
  clip = moving_clip()
  kw = dict(window=9, overlap=4, seed=3)
  seen = {"streamed": ([], []), "batched": ([], [])}
  streamed, batched = (
    edit(
      pipe,
      clip,
      window_mode=mode,
      on_phase=seen[mode][0].append,
      on_step=lambda done, total, m=mode: seen[m][1].append((done, total)),
      **kw,
    )
    for mode in ("streamed", "batched")
  )
  phases = ["mllm_encode", "vae_encode", "compile", "denoise", "vae_decode"]
  assert seen["batched"] == (phases, [(1, 2), (2, 2)])
  # The per-window step compiles on its first call, inside "denoise".
  assert seen["streamed"] == (
    [p for p in phases if p != "compile"],
    [(1, 2), (2, 2)],
  )
  # Equal within float32 rounding (a batch of N windows and N batches of
  # one order the DiT's sums differently; latents here reach ~30).
  np.testing.assert_allclose(
    batched.latents, streamed.latents, rtol=1e-4, atol=1e-4
  )
  assert (
    np.abs(batched.frames.astype(int) - streamed.frames.astype(int)).max() <= 1
  )


def test_a_clip_that_fits_one_window_is_todays_edit(pipe):
  clip = moving_clip(frames=17)
  today = edit(pipe, clip, seed=5)
  for window in (17, 81):
    windowed = edit(pipe, clip, seed=5, window=window, overlap=8)
    assert np.array_equal(windowed.frames, today.frames)
    assert np.array_equal(windowed.latents, today.latents)


def test_auto_mode_rule():
  small = windows.WindowPlan.build(41, 9, 4, 4)  # 5 windows x 3 = 15
  large = windows.WindowPlan.build(161, 81, 16, 4)  # 2 windows x 21
  from kiwi_jax.pipeline import window_edit

  assert window_edit.choose_mode(small, "auto") == "batched"
  assert window_edit.choose_mode(large, "auto") == "streamed"
  assert window_edit.choose_mode(small, "streamed") == "streamed"


def test_what_windows_do_not_combine_with(pipe):
  clip = moving_clip(frames=17)
  with pytest.raises(EditInputError, match="guidance"):
    edit(pipe, clip, window=9, overlap=4, guidance_scale=2.0)
  with pytest.raises(EditInputError, match="window_mode"):
    edit(pipe, clip, window=9, overlap=4, window_mode="fast")
  with pytest.raises(EditInputError, match="overlap needs window"):
    edit(pipe, clip, overlap=4)
  with pytest.raises(TypeError, match="window"):
    pipe.edit_seeds(clip, PROMPT, seeds=[0, 1], window=9, overlap=4)


def test_wan_vae_streams_the_clip_through_the_chunked_vae(
  tiny_tokenizer_dir, monkeypatch
):
  """With the Wan VAE the source stays on the host (the runner sends one
  chunk to the device at a time) and the decode streams frame by frame.
  The tiny Kiwi-Edit over the tiny Wan VAE gets random weights straight
  from its abstract state (a jitted init takes a minute on CPU)."""
  graphdef, abstract = abstract_kiwi(tiny_kiwi.tiny_kiwi_config("wan_vae"))
  rng = np.random.default_rng(0)
  state = jax.tree.map(
    lambda x: jnp.asarray(rng.normal(0, 0.1, x.shape).astype(x.dtype)),
    abstract,
  )
  model = nnx.merge(graphdef, state)
  pipe = EditPipeline.from_model(model, tiny_tokenizer_dir)
  vae = nnx.merge(pipe.graphdef, pipe.state).vae
  pipe._vae_runner = tiling.VAERunner(vae, compiler_options=FAST_COMPILE)
  seen = {"encode": [], "stream": 0}
  encode, stream = tiling.VAERunner.encode, tiling.VAERunner.decode_stream

  def host_encode(self, video, **kw):
    seen["encode"].append(type(video))
    return encode(self, video, **kw)

  def counted_stream(self, latents, **kw):
    for frames in stream(self, latents, **kw):
      seen["stream"] += 1
      yield frames

  def no_whole_decode(self, *a, **kw):
    raise AssertionError("the whole clip was decoded on the device")

  monkeypatch.setattr(tiling.VAERunner, "encode", host_encode)
  monkeypatch.setattr(tiling.VAERunner, "decode_stream", counted_stream)
  monkeypatch.setattr(tiling.VAERunner, "decode", no_whole_decode)
  clip = moving_clip(frames=17)  # 5 latent frames: windows 0-2, 2-4
  out = pipe.edit(clip, PROMPT, steps=1, window=9, overlap=4)
  assert out.frames.shape == (17, 32, 32, 3)
  assert out.latents.shape[1] == 5
  assert seen["encode"][0] is np.ndarray  # the source, from the host
  assert seen["stream"] == 5  # one latent frame at a time
