"""Tiny Kiwi-Edit training fixtures: the demo config and RefVIE-mini
batches of each mode, built in memory (no record files)."""

import dataclasses

import numpy as np
import pytest

from configs import demo as demo_config
from kiwi_jax.data import refvie_mini, transforms

MINI = refvie_mini.MiniConfig(height=32, width=32, num_frames=5)


def kiwi_config(stage, tokenizer_dir, ref_tokens, **optimizer):
  from kiwi_jax.tasks import demo  # pylint: disable=g-import-not-at-top

  records = {name: "unused" for name in ("image", "video", "ref")}
  config = demo.stage_config(
    demo_config.get_config("runlocal"),
    stage,
    records,
    str(tokenizer_dir),
    ref_tokens,
    "",
  )
  config.unlock()
  config.kiwi.data.sources = []
  # The demo decays the LR over each (2-step, runlocal) stage; these tests
  # run their own step counts at the constant reference schedule.
  config.optimizer.decay = "none"
  for key, value in optimizer.items():
    config.optimizer[key] = value
  config.lock()
  return config


def host_batch(hook, edit_type, indices, frames=5):
  """A one-mode host batch of RefVIE-mini samples."""
  cfg = dataclasses.replace(MINI, num_frames=frames)
  samples = [refvie_mini.make_sample(3, i, cfg, edit_type) for i in indices]
  batch = {
    "source_video": np.stack([s.source for s in samples]),
    "target_video": np.stack([s.target for s in samples]),
  }
  if samples[0].ref_image is not None:
    batch["ref_image"] = np.stack(
      [
        transforms.shrink_and_pad_centered(s.ref_image, 32, 32, 0.85)
        for s in samples
      ]
    )
  mllms = [hook(s.source, s.prompt, s.ref_image) for s in samples]
  batch["mllm"] = {k: np.stack([m[k] for m in mllms]) for k in mllms[0]}
  return batch


@pytest.fixture(scope="session")
def kiwi_batches(tiny_tokenizer_dir):
  """{mode: host batch of 2} and the reference token count."""
  from kiwi_jax.tasks import kiwi_task  # pylint: disable=g-import-not-at-top

  task = kiwi_task.KiwiTask(kiwi_config(1, tiny_tokenizer_dir, 0))
  batches = {
    "image": host_batch(task.hook, "local_recolor", [0, 1], frames=1),
    "video": host_batch(task.hook, "local_remove", [0, 1]),
    "reference": host_batch(task.hook, "subject_reference", [0, 1]),
  }
  span = batches["reference"]["mllm"]["ref_span"][0]
  return batches, int(span[1] - span[0])
