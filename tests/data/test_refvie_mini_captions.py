"""Caption clips of the demo's pretrained tiny base."""

import csv

import numpy as np
import pytest

from kiwi_jax.data import mini_scene as ms
from kiwi_jax.data import refvie_mini
from kiwi_jax.data import refvie_mini_captions as captions

CFG = refvie_mini.MiniConfig(height=32, width=32, num_frames=5, scene="simple")


def _obj(color, shape):
  return ms.SceneObject(shape, color, 5.0, (16.0, 16.0), (0.0, 0.0))


def test_caption_text_written_out():
  bg = ms.Texture(kind=ms.SOLID, colors=("teal", "teal"), period=1, scroll=0)
  assert (
    captions.caption(bg, [_obj("red", "circle")], {})
    == "A red circle on a teal background."
  )
  objects = [_obj("red", "circle"), _obj("black", "square")]
  assert (
    captions.caption(bg, objects, {1: ("below", 0)})
    == "A red circle and a black square below the red circle on a teal "
    "background."
  )


def test_layout_is_two_greys_and_hides_what_it_is_told():
  labels = np.zeros((1, 4, 4), np.int32)
  labels[0, 0, 0], labels[0, 3, 3] = 1, 2
  frames = captions.layout(labels, np.array([0]))
  assert tuple(frames[0, 0, 0]) == captions.LAYOUT_OBJECT
  assert tuple(frames[0, 3, 3]) == captions.LAYOUT_BACKGROUND
  assert tuple(frames[0, 1, 1]) == captions.LAYOUT_BACKGROUND


def test_samples_are_deterministic_and_consistent():
  hidden_seen = beside_seen = 0
  for index in range(40):
    a = captions.make_caption_sample(2, index, CFG)
    b = captions.make_caption_sample(2, index, CFG)
    np.testing.assert_array_equal(a.source, b.source)
    np.testing.assert_array_equal(a.target, b.target)
    assert a.prompt == b.prompt and a.edit_type == captions.CAPTION
    assert a.source.shape == a.target.shape == (5, 32, 32, 3)
    greys = {tuple(p) for p in a.source.reshape(-1, 3)}
    assert greys <= {captions.LAYOUT_OBJECT, captions.LAYOUT_BACKGROUND}
    # Every object the caption names is drawn in its colour.
    colors = {tuple(p) for p in a.target.reshape(-1, 3)}
    for name, rgb in ms.OBJECT_COLORS.items():
      if f" {name} " in f" {a.prompt} ".replace("the ", ""):
        assert rgb in colors, (a.prompt, name)
    layout_pixels = np.all(a.source == captions.LAYOUT_OBJECT, -1).sum()
    bg = np.all(a.target == a.target[0, 0, 0], -1)
    object_pixels = (~bg).sum()
    beside_seen += any(s in a.prompt for s in refvie_mini.BESIDE)
    hidden_seen += layout_pixels < object_pixels
  assert beside_seen >= 8 and hidden_seen >= 3


def test_caption_words_are_in_the_tokenizer_corpus():
  words = set(
    " ".join(refvie_mini.instruction_vocabulary()).replace(".", " ").split()
  )
  for index in range(30):
    prompt = captions.make_caption_sample(2, index, CFG).prompt
    assert set(prompt.replace(".", " ").split()) <= words, prompt


def test_write_caption_dataset(tmp_path):
  csvs = captions.write_caption_dataset(
    tmp_path, num_videos=3, num_images=2, seed=2, cfg=CFG
  )
  with open(csvs["video"]) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 3
  assert rows[0]["prompt"] == captions.make_caption_sample(2, 0, CFG).prompt
  with open(csvs["image"]) as f:
    assert len(list(csv.DictReader(f))) == 2


def test_rejects_other_edit_types_and_scenes():
  with pytest.raises(ValueError, match="edit type"):
    captions.make_caption_sample(2, 0, CFG, edit_type="local_add")
  with pytest.raises(ValueError, match="simple"):
    captions.make_caption_sample(2, 0, refvie_mini.MiniConfig())
