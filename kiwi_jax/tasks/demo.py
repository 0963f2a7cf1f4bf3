"""The CPU demo (``configs/demo.py``): RefVIE-mini, three stages, a table.

``run(config, workdir)``:

1. writes RefVIE-mini (``kiwi_jax.data.refvie_mini``) and its ArrayRecord
   shards into ``workdir/data`` and the tiny Qwen tokenizer into
   ``workdir/tokenizer`` (skipped when already there);
2. trains stage 1 (image edits), 2 (image + video) and 3 (+ reference) with
   the generic trainer, each stage in ``workdir/stage<k>`` starting from the
   previous stage's checkpoints through ``model_init`` (a restart resumes
   the stage it was in);
3. edits held-out clips (a different generator seed) and prints the PSNR to
   the true target per edit type, for the model and for the identity
   baseline (the unchanged source), writes ``workdir/results.md`` and
   ``source | edit | target`` videos to ``workdir/edits/``.
"""

from __future__ import annotations

import collections
import copy
import logging
from typing import Any

import jax
import numpy as np
from etils import epath
from flax import nnx

from kiwi_jax import sharding
from kiwi_jax.data import refvie_mini, transforms, video_io
from kiwi_jax.tasks import curriculum as stages
from kiwi_jax.tasks import kiwi_task
from kiwi_jax.testing import tokenizer as tiny_tokenizer
from kiwi_jax.train_lib import progress, trainer
from kiwi_jax.train_lib.train_state import ModelSplit, Precision

logger = logging.getLogger("kiwi_jax")

_SOURCES = {1: ("image",), 2: ("image", "video"), 3: ("image", "video",
                                                      "ref")}
_STAGE_NAMES = {1: "image edits", 2: "image and video edits",
                3: "plus reference images"}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
  """PSNR in dB between uint8 arrays (inf when equal)."""
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
  return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def prepare_data(config: Any, workdir: epath.Path) -> tuple[dict, str]:
  """RefVIE-mini records and the tokenizer; returns (record dirs, tok dir)."""
  demo = config.demo
  mini = refvie_mini.MiniConfig(height=demo.height, width=demo.width,
                                num_frames=demo.num_frames)
  data_dir, records_dir = workdir / "data" / "media", workdir / "data" / (
      "records")
  names = ("video", "ref", "image")
  if not all((records_dir / n).exists() for n in names):
    csvs = refvie_mini.write_dataset(
        data_dir, num_videos=demo.num_videos, num_images=demo.num_images,
        seed=demo.data_seed, cfg=mini)
    refvie_mini.build_records(data_dir, records_dir, csvs, cfg=mini)
  tok_dir = workdir / "tokenizer"
  if not (tok_dir / "tokenizer.json").exists():
    tiny_tokenizer.build_tiny_qwen_tokenizer(tok_dir)
  return {n: records_dir / n for n in names}, str(tok_dir)


def stage_config(config: Any, stage: int, records: dict, tok_dir: str,
                 ref_tokens: int, model_init: str):
  """The trainer config of one demo stage."""
  out = copy.deepcopy(config)
  out.unlock()
  demo = config.demo
  out.total_steps = int(demo.stage_steps[stage - 1])
  out.optimizer.learning_rate = float(demo.learning_rates[stage - 1])
  if demo.get("lr_decay", "none") != "none":
    out.optimizer.decay = str(demo.lr_decay)
    out.optimizer.decay_steps = out.total_steps
    out.optimizer.decay_to = float(demo.get("decay_to", 0.0))
  out.model_init = model_init
  kiwi = out.kiwi
  kiwi.stage = stage
  kiwi.tokenizer_dir = tok_dir
  kiwi.ref_tokens = ref_tokens
  # At least one example per device (the batch is split over all of them).
  devices = jax.device_count()
  kiwi.data.batch_size = -(-int(kiwi.data.batch_size) // devices) * devices
  kiwi.data.sources = [
      {"path": str(records[name]), "weight": 1.0, "name": name,
       "max_frames": 1 if name == "image" else int(demo.num_frames)}
      for name in _SOURCES[stage]]
  out.lock()
  return out


def heldout_examples(config: Any, hook: kiwi_task.KiwiMllmHook):
  """(edit type, key, host batch of one) for the held-out clips."""
  demo = config.demo
  mini = refvie_mini.MiniConfig(height=demo.height, width=demo.width,
                                num_frames=demo.num_frames)
  for index in range(int(demo.num_heldout)):
    sample = refvie_mini.make_sample(int(demo.heldout_seed), index, mini,
                                     key_prefix="h")
    batch = {"source_video": sample.source[None],
             "target_video": sample.target[None]}
    if sample.ref_image is not None:
      # Evaluation pads the reference without the training shrink (5.1).
      batch["ref_image"] = transforms.pad_to_canvas(
          sample.ref_image, demo.height, demo.width)[None]
    mllm = hook(sample.source, sample.prompt, sample.ref_image)
    batch["mllm"] = {k: np.asarray(v)[None] for k, v in mllm.items()}
    yield sample.edit_type, sample.key, batch


def reference_token_count(config: Any, hook: kiwi_task.KiwiMllmHook) -> int:
  """The MLLM token count of the demo's reference images (all one size)."""
  for _, _, batch in heldout_examples(config, hook):
    if "ref_image" in batch:
      start, end = batch["mllm"]["ref_span"][0]
      return int(end - start)
  raise ValueError("The held-out set has no reference edit; raise "
                   "demo.num_heldout to at least 6.")


def evaluate(config: Any, task: kiwi_task.KiwiTask, model: Any,
             workdir: epath.Path) -> str:
  """Edits the held-out clips; returns the markdown table."""
  mesh = sharding.mesh_from_config(config)
  scores = collections.defaultdict(lambda: ([], []))
  edits_dir = workdir / "edits"
  edits_dir.mkdir(parents=True, exist_ok=True)
  for edit_type, key, host in heldout_examples(config, task.hook):
    # One clip at a time, replicated (the mesh may have more devices).
    batch = jax.device_put(host, jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec()))
    edited = kiwi_task.unit_to_uint8(task.edit(
        model, batch, num_steps=int(config.demo.sample_steps),
        denoising_strength=float(config.demo.get("denoising_strength",
                                                 1.0)))[0])
    source, target = host["source_video"][0], host["target_video"][0]
    scores[edit_type][0].append(psnr(edited, target))
    scores[edit_type][1].append(psnr(source, target))
    (edits_dir / f"{key}_{edit_type}.mp4").write_bytes(
        video_io.encode_video(kiwi_task.side_by_side(source, edited, target),
                              fps=4, lossless=True))
  lines = ["| edit type | clips | model PSNR (dB) | identity PSNR (dB) |",
           "| --- | --- | --- | --- |"]
  all_model, all_identity = [], []
  for edit_type in refvie_mini.EDIT_TYPES:
    if edit_type not in scores:
      continue
    model_psnr, identity_psnr = scores[edit_type]
    all_model += model_psnr
    all_identity += identity_psnr
    lines.append(f"| {edit_type} | {len(model_psnr)} | "
                 f"{np.mean(model_psnr):.2f} | {np.mean(identity_psnr):.2f} |")
  lines.append(f"| **mean** | {len(all_model)} | **{np.mean(all_model):.2f}**"
               f" | **{np.mean(all_identity):.2f}** |")
  return "\n".join(lines)


def run(config: Any, workdir: str | epath.PathLike) -> str:
  """The whole demo; returns (and prints) the results table."""
  workdir = epath.Path(workdir)
  progress.note("Preparing RefVIE-mini and the tokenizer in "
                f"{workdir}.")
  records, tok_dir = prepare_data(config, workdir)
  base_task = kiwi_task.KiwiTask(stage_config(config, 1, records, tok_dir, 0,
                                              ""))
  ref_tokens = reference_token_count(config, base_task.hook)
  model_init = ""
  for stage in (1, 2, 3):
    stage_cfg = stage_config(config, stage, records, tok_dir, ref_tokens,
                             model_init)
    task = kiwi_task.KiwiTask(stage_cfg)
    stage_dir = workdir / f"stage{stage}"
    logger.info("Demo stage %d trains %s", stage,
                stages.trainable_sets(stage)[0])
    progress.note(f"Demo stage {stage} of 3 ({_STAGE_NAMES[stage]}): "
                  f"{stage_cfg.total_steps} steps in {stage_dir}.")
    with progress.label(f"stage {stage}/3"):
      state = trainer.train_and_evaluate(stage_cfg, stage_dir, task)
    model_init = str(stage_dir / "checkpoints")
  mesh = sharding.mesh_from_config(stage_cfg)
  split = ModelSplit.build(lambda: task.build_model(nnx.Rngs(0)),
                           task.trainable, task.frozen, mesh=mesh,
                           precision=Precision.from_mapping(
                               stage_cfg.precision))
  model = split.merge(state.params, state.frozen)
  progress.note(f"Editing {config.demo.num_heldout} held-out clips.")
  table = evaluate(stage_cfg, task, model, workdir)
  (workdir / "results.md").write_text(table + "\n")
  print(table, flush=True)
  return table
