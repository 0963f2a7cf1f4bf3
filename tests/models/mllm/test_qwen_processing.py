"""Torch-free preprocessing: resize rules, pixels, patches, chat, tokens."""

import numpy as np
import pytest
from PIL import Image

from kiwi_jax.models.mllm import Qwen25VLConfig, processing
from kiwi_jax.models.mllm import vision_preprocess as vp

CFG = Qwen25VLConfig.from_variant("tiny")


def _image(h, w, seed=0, channels=3):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (h, w, channels), dtype=np.uint8)


def test_smart_resize_matches_spec_examples():
  # Reference §2.3: a 1024x1024 stage-1 image -> 1036x1036 (37x37 tokens).
  assert vp.smart_resize(1024, 1024, 28, 3136, 12845056) == (1036, 1036)
  # 720x1280 source: training (no cap) 728x1288 -> 560x1008, 720 tokens per
  # temporal grid; inference (262,144 px) 336x672, 288 tokens per grid.
  assert vp.video_frame_size(720, 1280, 16) == (560, 1008)
  assert vp.video_frame_size(720, 1280, 16, max_pixels=262144) == (336, 672)
  with pytest.raises(ValueError, match="Aspect ratio"):
    vp.smart_resize(10, 2500, 28)


def test_frame_sampling_is_linspace_round_half_even():
  expected = [0, 5, 11, 16, 21, 27, 32, 37, 43, 48, 53, 59, 64, 69, 75, 80]
  np.testing.assert_array_equal(vp.sample_frame_indices(81), expected)
  np.testing.assert_array_equal(vp.sample_frame_indices(7), np.arange(7))


@pytest.mark.parametrize(
  "size,max_pixels",
  [((97, 131), None), ((150, 230), None), ((300, 410), 28 * 28 * 20)],
)
def test_image_matches_transformers_pil_processor(size, max_pixels):
  from transformers import Qwen2VLImageProcessor

  image = Image.fromarray(_image(*size, seed=size[0]))
  hf = Qwen2VLImageProcessor(
    min_pixels=vp.IMAGE_MIN_PIXELS, max_pixels=max_pixels or vp.IMAGE_MAX_PIXELS
  )
  ref = hf(images=[image], return_tensors="np")
  patches, grid = vp.preprocess_image(image, max_pixels=max_pixels)
  np.testing.assert_array_equal(grid, ref["image_grid_thw"][0])
  np.testing.assert_array_equal(patches, ref["pixel_values"])


def test_rgba_is_composited_on_white():
  rgba = _image(56, 56, channels=4)
  rgba[..., 3] = 0
  rgb = np.asarray(vp.to_rgb(rgba))
  assert (rgb == 255).all()


def _unpatchify_reference(patches, grid, c=3, tp=2, p=14, m=2):
  """Explicit index restatement of Qwen's patch order."""
  t, gh, gw = grid
  video = np.zeros((t * tp, gh * p, gw * p, c), np.float32)
  row = 0
  for ti in range(t):
    for bh in range(gh // m):
      for bw in range(gw // m):
        for mh in range(m):
          for mw in range(m):
            cube = patches[row].reshape(c, tp, p, p)
            h0, w0 = (bh * m + mh) * p, (bw * m + mw) * p
            video[ti * tp : (ti + 1) * tp, h0 : h0 + p, w0 : w0 + p] = (
              cube.transpose(1, 2, 3, 0)
            )
            row += 1
  return video


def test_video_follows_spec_rules():
  frames = _image(20 * 100, 150).reshape(20, 100, 150, 3)
  patches, grid = vp.preprocess_video(frames)
  # 20 frames -> 16 sampled; 100x150 -> factor 56: 112x168 -> below the
  # 100,352 px minimum -> factor 28 ceil: 280x392.
  assert grid == (8, 20, 28)
  idx = vp.sample_frame_indices(20)
  expected = []
  for i in idx:
    im = Image.fromarray(frames[i]).resize((168, 112), Image.BICUBIC)
    expected.append(np.asarray(im.resize((392, 280), Image.BICUBIC)))
  expected = vp.normalize(np.stack(expected))
  np.testing.assert_allclose(
    _unpatchify_reference(patches, grid), expected, atol=1e-6
  )


def test_video_pads_time_by_repeating_the_last_frame():
  frames = [Image.fromarray(_image(112, 112, seed=s)) for s in range(3)]
  patches, grid = vp.preprocess_video(frames)
  # 112x112 is below 100,352 px, so it is upscaled to 336x336.
  assert grid == (2, 24, 24)
  video = _unpatchify_reference(patches, grid)
  np.testing.assert_array_equal(video[3], video[2])
  assert not np.array_equal(video[2], video[1])


@pytest.mark.parametrize("mode", processing.MODES)
def test_chat_matches_the_tokenizer_template(tiny_tokenizer_dir, mode):
  tok = processing.load_tokenizer(tiny_tokenizer_dir)
  rendered = tok.apply_chat_template(
    processing.chat_messages("Turn it red.", mode, 4),
    tokenize=False,
    add_generation_prompt=False,
  )
  assert processing.render_prompt("Turn it red.", mode, 4) == rendered
  if mode == "reference":
    assert " Use the reference input from last frame.<|vision_start|>" in (
      rendered
    )


def _processor(tiny_tokenizer_dir, **kw):
  cfg = processing.ProcessorConfig(
    num_image_queries=5, num_video_queries=7, num_ref_queries=3, **kw
  )
  return processing.QwenProcessor(tiny_tokenizer_dir, CFG, cfg)


def test_processor_reference_mode(tiny_tokenizer_dir):
  proc = _processor(
    tiny_tokenizer_dir, max_pixels_per_frame=262144, max_object_token=6
  )
  frames = _image(5 * 60, 90).reshape(5, 60, 90, 3)
  ref = Image.fromarray(_image(200, 150, seed=3))
  ex = proc("Add a hat.", frames=frames, ref_image=ref)
  ids = ex["input_ids"]
  (ref_grid, video_grid) = ex["grid_thw"]  # images first, then videos
  assert video_grid[0] == 3 and ref_grid[0] == 1
  assert ref_grid[1] * ref_grid[2] // 4 <= 6  # capped at 28*28*6 pixels
  assert (ids == CFG.video_token_id).sum() == np.prod(video_grid) // 4
  assert (ids == CFG.image_token_id).sum() == np.prod(ref_grid) // 4
  assert (ids == CFG.query_token_id).sum() == ex["num_queries"] == 3
  start, end = ex["ref_span"]
  assert (ids[start:end] == CFG.image_token_id).all()
  assert end - start == np.prod(ref_grid) // 4
  assert ex["pixel_values"].shape == (np.prod(ex["grid_thw"], 1).sum(), 1176)
  assert ex["position_ids"].shape == (3, ids.size)
  # The last two tokens follow the placeholders (reference §2.4 readout quirk).
  assert ids[-1] != CFG.query_token_id and ids[-3] == CFG.query_token_id


def test_processor_selects_modes_and_rejects_bad_input(tiny_tokenizer_dir):
  proc = _processor(tiny_tokenizer_dir)
  one_frame = _image(60, 60)[None]
  ex = proc("Make it blue.", frames=one_frame)
  assert ex["num_queries"] == 5 and ex["grid_thw"].tolist() == [[1, 4, 4]]
  ex = proc("Make it blue.", frames=np.repeat(one_frame, 2, 0))
  assert ex["num_queries"] == 7
  with pytest.raises(ValueError, match="needs source frames"):
    proc("x", image=_image(60, 60), mode="video")
  with pytest.raises(ValueError, match="special token"):
    processing.QwenProcessor(tiny_tokenizer_dir, CFG.replace(query_token_id=4))


def test_video_min_pixels_keeps_small_videos_small():
  frames = _image(5 * 32, 32).reshape(5, 32, 32, 3)
  _, default = vp.preprocess_video(frames)
  _, small = vp.preprocess_video(frames, min_pixels=112 * 112)
  # 32x32 -> factor 56: 112x112; Qwen's 100,352 px floor then upsamples it
  # to 336x336 (24x24 patches); a 112*112 floor keeps 112x112 (8x8).
  assert default == (3, 24, 24)
  assert small == (3, 8, 8)
  assert vp.video_frame_size(32, 32, 5, min_pixels=112 * 112) == (112, 112)
