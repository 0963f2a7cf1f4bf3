"""RefVIE-mini's "simple" scenes (the CPU demo's): one-colour backgrounds,
objects off the borders, an added object on the named side of its anchor."""

import re

import numpy as np
import pytest

from kiwi_jax.data import mini_scene, refvie_mini

SIMPLE = refvie_mini.MiniConfig(
  height=32, width=32, num_frames=5, scene="simple"
)


@pytest.mark.parametrize("edit_type", refvie_mini.EDIT_TYPES)
@pytest.mark.parametrize("index", range(4))
def test_simple_mask_is_exact_and_backgrounds_are_one_colour(edit_type, index):
  s = refvie_mini.make_sample(3, index, SIMPLE, edit_type)
  np.testing.assert_array_equal((s.source != s.target).any(-1), s.mask)
  assert s.mask.any()
  texture_colours = {tuple(c) for c in mini_scene.TEXTURE_COLORS.values()}
  for clip in (s.source, s.target):
    colours = {tuple(c) for c in clip.reshape(-1, 3)} & texture_colours
    assert len(colours) == 1, "one background colour per clip"


def test_simple_objects_never_touch_a_border():
  for index in range(30):
    s = refvie_mini.make_sample(0, index, SIMPLE, "local_recolor")
    background = s.source[0, 0, 0]
    # Only background colour on the outermost ring of every frame.
    ring = np.concatenate(
      [s.source[:, 0], s.source[:, -1], s.source[:, :, 0], s.source[:, :, -1]],
      axis=1,
    )
    assert (ring == background).all()


@pytest.mark.parametrize("index", range(12))
def test_simple_add_is_on_the_named_side_of_its_anchor(index):
  s = refvie_mini.make_sample(5, index, SIMPLE, "local_add")
  match = re.fullmatch(
    r"Add a (\w+) (\w+) (to the left of|to the right of|above|below) "
    r"the (\w+) (\w+)\.",
    s.prompt,
  )
  assert match, s.prompt
  new_colour, anchor_colour = match.group(1), match.group(4)

  def centroid(colour):
    ys, xs = np.nonzero(
      (s.target[0] == mini_scene.OBJECT_COLORS[colour]).all(-1)
    )
    return ys.mean(), xs.mean()

  (ny, nx), (ay, ax) = centroid(new_colour), centroid(anchor_colour)
  side = match.group(3)
  assert {
    "to the left of": nx < ax,
    "to the right of": nx > ax,
    "above": ny < ay,
    "below": ny > ay,
  }[side]
  # The new object moves with its anchor: the same displacement.
  first, last = s.target[0], s.target[-1]

  def shift(colour):
    c = mini_scene.OBJECT_COLORS[colour]
    y0, x0 = np.argwhere((first == c).all(-1)).mean(0)
    y1, x1 = np.argwhere((last == c).all(-1)).mean(0)
    return y1 - y0, x1 - x0

  np.testing.assert_allclose(shift(new_colour), shift(anchor_colour), atol=1.5)


def test_simple_background_prompts_name_the_colour():
  s = refvie_mini.make_sample(0, 0, SIMPLE, "background_change")
  colour = re.fullmatch(r"Make the background (\w+)\.", s.prompt).group(1)
  assert (s.target[~s.mask] != 0).any()
  np.testing.assert_array_equal(
    np.unique(s.target[s.mask], axis=0),
    [mini_scene.TEXTURE_COLORS[colour]],
  )


def test_textured_default_is_unchanged_by_the_scene_option():
  default = refvie_mini.make_sample(0, 2, refvie_mini.MiniConfig())
  named = refvie_mini.make_sample(
    0, 2, refvie_mini.MiniConfig(scene="textured")
  )
  np.testing.assert_array_equal(default.source, named.source)
  assert (
    "moving across the scene"
    in refvie_mini.make_sample(
      0, 0, refvie_mini.MiniConfig(), "local_add"
    ).prompt
  )


def test_unknown_scene_is_refused():
  with pytest.raises(ValueError, match="scene must be one of"):
    refvie_mini.MiniConfig(scene="fancy")


def test_instruction_vocabulary_makes_each_word_one_token(tmp_path):
  from transformers import AutoTokenizer

  from kiwi_jax.testing import tokenizer as tiny_tokenizer

  tiny_tokenizer.build_tiny_qwen_tokenizer(
    tmp_path, 512, refvie_mini.instruction_vocabulary() * 8
  )
  tok = AutoTokenizer.from_pretrained(str(tmp_path))
  for word in list(mini_scene.OBJECT_COLORS) + list(mini_scene.SHAPES):
    assert len(tok(f" {word}")["input_ids"]) == 1, word
