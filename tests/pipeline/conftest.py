"""Shared fixtures: the toy editor, a tiny Kiwi-Edit checkpoint, and short
generated clips."""

import numpy as np
import pytest
from PIL import Image

from kiwi_jax.data import refvie_mini
from kiwi_jax.pipeline import EditPipeline
from kiwi_jax.testing import kiwi as tiny_kiwi
from kiwi_jax.utils.video_files import write_mp4
from tests.pipeline import toy_editor


@pytest.fixture(scope="session")
def toy_checkpoint(tmp_path_factory, tiny_tokenizer_dir):
  """A tiny Kiwi-Edit checkpoint directory (the demo's codec), what
  ``kiwi-edit --checkpoint`` opens."""
  return tiny_kiwi.save_tiny_kiwi(
    tmp_path_factory.mktemp("tiny_kiwi") / "ckpt",
    tokenizer_dir=tiny_tokenizer_dir,
  )


@pytest.fixture(scope="session")
def toy_pipeline():
  """``EditPipeline`` over the toy editor (``toy_editor``)."""
  return EditPipeline(*toy_editor.make_toy_editor())


@pytest.fixture(scope="session")
def sample():
  """A 10-frame 72x100 clip (not 4k+1, not multiples of 32) + reference."""
  cfg = refvie_mini.MiniConfig(height=72, width=100, num_frames=9, ref_size=40)
  s = refvie_mini.make_sample(0, 5, cfg, edit_type="subject_reference")
  source = np.concatenate([s.source, s.source[-1:]])  # 10 frames
  return source, s.ref_image, s.prompt


@pytest.fixture(scope="session")
def media(tmp_path_factory, sample):
  """Paths: video.mp4 (12 fps), image.png, ref.png."""
  root = tmp_path_factory.mktemp("media")
  source, ref, _ = sample
  write_mp4(root / "video.mp4", source, fps=12)
  Image.fromarray(source[0]).save(root / "image.png")
  Image.fromarray(ref).save(root / "ref.png")
  return root
