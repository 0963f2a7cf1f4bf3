"""The CPU demo (``configs/demo.py``): RefVIE-mini, three stages, a table.

``run(config, workdir)``:

1. writes RefVIE-mini (``kiwi_jax.data.refvie_mini``) and its ArrayRecord
   shards into ``workdir/data`` and the tiny Qwen tokenizer into
   ``workdir/tokenizer`` (skipped when already there);
2. trains stage 1 (image edits), 2 (image + video) and 3 (+ reference) with
   the generic trainer, each stage in ``workdir/stage<k>`` starting from the
   previous stage's checkpoints through ``model_init`` (a restart resumes
   the stage it was in);
3. opens the stage-3 workdir as an ordinary Kiwi-Edit checkpoint
   (``EditPipeline.from_pretrained(workdir / "stage3")``, the same model
   ``kiwi-edit --checkpoint`` opens), edits held-out clips (a different
   generator seed) and prints two tables per edit type
   (``kiwi_jax.tasks.demo_eval``): the edit success rate, and PSNR to the
   true target next to the identity baseline (the unchanged source); both
   go to ``workdir/results.json`` and ``results.md``, with
   ``source | edit | target`` videos and a PNG grid in ``workdir/edits/``.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import jax
from etils import epath

from kiwi_jax.data import refvie_mini
from kiwi_jax.pipeline.edit_pipeline import EditPipeline
from kiwi_jax.tasks import curriculum as stages
from kiwi_jax.tasks import demo_eval, kiwi_task
from kiwi_jax.tasks.kiwi_config import DemoConfig
from kiwi_jax.testing import tokenizer as tiny_tokenizer
from kiwi_jax.train_lib import progress, trainer
from kiwi_jax.utils import atomic

logger = logging.getLogger("kiwi_jax")

_STAGE_NAMES = {
  1: "image edits",
  2: "image and video edits",
  3: "plus reference images",
}


def mini_config(demo: DemoConfig) -> refvie_mini.MiniConfig:
  """The RefVIE-mini clip settings of the demo's data."""
  return refvie_mini.MiniConfig(
    height=demo.height,
    width=demo.width,
    num_frames=demo.num_frames,
    scene=demo.scene,
    max_objects=demo.max_objects,
  )


def prepare_data(config: Any, workdir: epath.Path) -> tuple[dict, str]:
  """RefVIE-mini records and the tokenizer; returns (record dirs, tok dir)."""
  demo = DemoConfig.from_config(config.demo)
  mini = mini_config(demo)
  data_dir, records_dir = (
    workdir / "data" / "media",
    workdir / "data" / ("records"),
  )
  names = ("video", "ref", "image")
  if not all((records_dir / n).exists() for n in names):
    csvs = refvie_mini.write_dataset(
      data_dir,
      num_videos=demo.num_videos,
      num_images=demo.num_images,
      seed=demo.data_seed,
      cfg=mini,
    )
    refvie_mini.build_records(data_dir, records_dir, csvs, cfg=mini)
  tok_dir = workdir / "tokenizer"
  build_tokenizer(demo, tok_dir)
  return {n: records_dir / n for n in names}, str(tok_dir)


def build_tokenizer(demo: DemoConfig, tok_dir: epath.Path) -> None:
  """The demo's tiny Qwen tokenizer in ``tok_dir`` (kept when there)."""
  if not (tok_dir / "tokenizer.json").exists():
    tiny_tokenizer.build_tiny_qwen_tokenizer(
      tok_dir,
      demo.tokenizer_vocab,
      refvie_mini.instruction_vocabulary() * 8 if demo.tokenizer_words else (),
    )


def base_weights(demo: DemoConfig) -> str:
  """Stage 1's ``model_init``: the pretrained tiny base file, or "" when
  the demo starts from scratch.

  Raises:
    FileNotFoundError: ``demo.base`` names a file that is not there.
  """
  if not demo.base:
    return ""
  path = epath.Path(demo.base)
  if not path.exists():
    raise FileNotFoundError(
      f"demo.base {path} does not exist; make it with "
      "`python -m kiwi_jax.tasks.demo_base`."
    )
  return str(path)


def stage_config(
  config: Any,
  stage: int,
  records: dict,
  tok_dir: str,
  ref_tokens: int,
  model_init: str,
):
  """The trainer config of one demo stage."""
  out = copy.deepcopy(config)
  out.unlock()
  demo = DemoConfig.from_config(config.demo)
  out.total_steps = demo.stage_steps[stage - 1]
  out.optimizer.learning_rate = demo.learning_rates[stage - 1]
  if demo.lr_decay != "none":
    out.optimizer.decay = demo.lr_decay
    out.optimizer.decay_steps = out.total_steps
    out.optimizer.decay_to = demo.decay_to
  out.model_init = model_init
  kiwi = out.kiwi
  kiwi.stage = stage
  kiwi.tokenizer_dir = tok_dir
  kiwi.ref_tokens = ref_tokens
  # At least one example per device (the batch is split over all of them).
  devices = jax.device_count()
  kiwi.data.batch_size = -(-int(kiwi.data.batch_size) // devices) * devices
  kiwi.data.sources = [
    {
      "path": str(records[name]),
      "weight": 1.0,
      "name": name,
      "max_frames": 1 if name == "image" else demo.num_frames,
    }
    for name in stages.stage_sources(stage)
  ]
  out.lock()
  return out


def heldout_samples(config: Any):
  """The held-out RefVIE-mini samples (a different generator seed)."""
  demo = DemoConfig.from_config(config.demo)
  mini = mini_config(demo)
  for index in range(demo.num_heldout):
    yield refvie_mini.make_sample(
      demo.heldout_seed, index, mini, key_prefix="h"
    )


def reference_token_count(
  config: Any, processor: kiwi_task.KiwiProcessor
) -> int:
  """The MLLM token count of the demo's reference images (all one size)."""
  for sample in heldout_samples(config):
    if sample.ref_image is not None:
      start, end = processor.example(
        sample.source, sample.prompt, sample.ref_image
      )["ref_span"]
      return int(end - start)
  raise ValueError(
    "The held-out set has no reference edit; raise "
    "demo.num_heldout to at least 6."
  )


def run(config: Any, workdir: str | epath.PathLike) -> str:
  """The whole demo; returns (and prints) the results table."""
  workdir = epath.Path(workdir)
  progress.note(f"Preparing RefVIE-mini and the tokenizer in {workdir}.")
  records, tok_dir = prepare_data(config, workdir)
  base_task = kiwi_task.KiwiTask(
    stage_config(config, 1, records, tok_dir, 0, "")
  )
  ref_tokens = reference_token_count(config, base_task.processor)
  model_init = base_weights(DemoConfig.from_config(config.demo))
  if model_init:
    progress.note(f"Stage 1 starts from the pretrained tiny base {model_init}.")
  for stage in (1, 2, 3):
    stage_cfg = stage_config(
      config, stage, records, tok_dir, ref_tokens, model_init
    )
    task = kiwi_task.KiwiTask(stage_cfg)
    stage_dir = workdir / f"stage{stage}"
    logger.info(
      "Demo stage %d trains %s", stage, stages.trainable_sets(stage)[0]
    )
    progress.note(
      f"Demo stage {stage} of 3 ({_STAGE_NAMES[stage]}): "
      f"{stage_cfg.total_steps} steps in {stage_dir}."
    )
    with progress.label(f"stage {stage}/3"):
      trainer.train_and_evaluate(stage_cfg, stage_dir, task)
    model_init = str(stage_dir / "checkpoints")
  # The trained model as any user opens it: the stage-3 workdir.
  pipe = EditPipeline.from_pretrained(str(stage_dir))
  progress.note(
    f"Editing {DemoConfig.from_config(config.demo).num_heldout} held-out clips with "
    f"EditPipeline.from_pretrained({str(stage_dir)!r})."
  )
  table = demo_eval.evaluate(
    stage_cfg, pipe, workdir, heldout_samples(stage_cfg)
  )
  atomic.write_text(workdir / "results.md", table + "\n")
  print(table, flush=True)
  return table
