"""The CPU demo's pretrained tiny base, made by one command, bit for bit.

  python -m kiwi_jax.tasks.demo_base                # writes assets/demo_base.safetensors
  python -m kiwi_jax.tasks.demo_base --steps 3 --out /tmp/b.safetensors

Kiwi-Edit fine-tunes a pretrained Wan DiT and a pretrained Qwen2.5-VL. The
CPU demo's tiny models have no such checkpoints, so this project makes a
stand-in base for them:

1. caption clips (``data.refvie_mini_captions``: a flat grey layout and a
   caption in, the coloured scene out) and the demo's tokenizer are written
   into a work directory;
2. the demo's own ``KiwiEdit`` (``configs/demo.py``'s model) trains on them
   with the ordinary trainer at curriculum stage 2 (image and video
   modes, the DiT and both query sets), with the whole tiny Qwen language
   model trainable as well (``kiwi.train_also``): the stand-in for Qwen's
   and Wan's own pretraining, in which words have to reach the frames;
3. the final weights go to one ``.safetensors`` file
   (``train_lib.weights_file``: sorted names, no metadata), which the demo's
   stage 1 starts from (``demo.base`` -> ``model_init``).

On one CPU the run is deterministic, so on the same CPU model the command
reproduces the file byte for byte (the manifest names the model it was
recorded on). Another CPU family (AVX against
AVX2, say) compiles XLA's kernels with other vector widths and rounds
differently in the last bits, so across machines the run is checked by a
fingerprint within a tolerance instead: each weight's projection on a fixed
random probe (``fingerprint``). ``assets/demo_base.json`` records the
command, the settings, the SHA-256 of the full file and of a reduced run
(``REDUCED_STEPS``), the reduced run's fingerprint, and how far one
training step fewer moves that fingerprint (the scale the tolerance is a
small fraction of), which the tests check.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import tempfile
import zlib
from typing import Any

from etils import epath

REDUCED_STEPS = 3
# A rerun on another CPU must land within this fraction of how far one
# training step fewer moves the fingerprint. Measured: the 3-step run with
# XLA_FLAGS=--xla_cpu_max_isa=AVX against AVX2 differs in its bytes and lies
# 3.3e-7 from the record, 0.0014 of one step (2.3e-4).
REPRODUCE_FRACTION = 0.05
LANGUAGE_MODEL = r"^mllm/language_model/"


def base_stage_config(config: Any, records: dict, tok_dir: str, steps: int):
  """The trainer config of the base run (from the demo's config)."""
  # pylint: disable-next=g-import-not-at-top
  from kiwi_jax.tasks import demo
  from kiwi_jax.tasks.kiwi_config import DemoConfig

  settings = DemoConfig.from_config(config.demo)
  out = demo.stage_config(config, 2, records, tok_dir, 0, "")
  out.unlock()
  out.total_steps = steps
  out.seed = settings.base_seed
  out.optimizer.learning_rate = settings.base_learning_rate
  out.optimizer.decay_steps = steps
  out.kiwi.train_also = (LANGUAGE_MODEL,)
  out.kiwi.data.batch_size = settings.base_batch_size
  out.kiwi.data.seed = settings.base_seed
  out.log_every = max(1, min(int(out.log_every), steps))
  out.lock()
  return out


def write_data(config: Any, workdir: epath.Path) -> tuple[dict, str]:
  """Caption clips' records and the demo's tokenizer under ``workdir``."""
  # pylint: disable-next=g-import-not-at-top
  from kiwi_jax.data import refvie_mini, refvie_mini_captions
  from kiwi_jax.tasks import demo
  from kiwi_jax.tasks.kiwi_config import DemoConfig

  settings = DemoConfig.from_config(config.demo)
  mini = demo.mini_config(settings)
  media, records_dir = workdir / "data" / "media", workdir / "data" / "records"
  csvs = refvie_mini_captions.write_caption_dataset(
    media,
    num_videos=settings.base_videos,
    num_images=settings.base_images,
    seed=settings.base_seed,
    cfg=mini,
  )
  csvs = {name: csvs[name] for name in ("image", "video")}
  records = refvie_mini.build_records(media, records_dir, csvs, cfg=mini)
  tok_dir = workdir / "tokenizer"
  demo.build_tokenizer(settings, tok_dir)
  return records, str(tok_dir)


def export(stage_dir: epath.Path, out: epath.Path) -> str:
  """Writes the run's final weights to ``out``; returns their SHA-256."""
  # pylint: disable-next=g-import-not-at-top
  import jax
  import numpy as np
  from flax import nnx

  from kiwi_jax.models.kiwi import checkpoint as kiwi_checkpoint
  from kiwi_jax.train_lib import weights_file
  from kiwi_jax.train_lib.train_state import path_name

  model = kiwi_checkpoint.load(stage_dir)
  state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  flat = {
    path_name(p): np.asarray(v)
    for p, v in jax.tree_util.tree_flatten_with_path(state)[0]
  }
  weights_file.save(out, flat)
  return hashlib.sha256(out.read_bytes()).hexdigest()


def cpu_model() -> str:
  """This CPU's model name (``/proc/cpuinfo``; else the platform's)."""
  # pylint: disable-next=g-import-not-at-top
  import platform

  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def fingerprint(flat: dict) -> dict[str, float]:
  """Each weight's float64 projection on a fixed N(0, 1) probe / sqrt(size).

  The probe is seeded by the name's CRC-32, so a fingerprint is the same on
  every machine for the same weights, and a change anywhere in a tensor
  moves its entry.
  """
  # pylint: disable-next=g-import-not-at-top
  import numpy as np

  out = {}
  for name in sorted(flat):
    value = np.asarray(flat[name], np.float64).ravel()
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    probe = rng.standard_normal(value.size)
    out[name] = float(value @ probe) / math.sqrt(max(value.size, 1))
  return out


def fingerprint_file(path: epath.Path) -> dict[str, float]:
  """:func:`fingerprint` of a weights file."""
  # pylint: disable-next=g-import-not-at-top
  from kiwi_jax.train_lib import weights_file

  return fingerprint(weights_file.load(path))


def fingerprint_distance(a: dict, b: dict) -> float:
  """The L2 distance between two fingerprints over their names, relative to
  ``b``'s norm; ``inf`` when the names differ."""
  if set(a) != set(b):
    return math.inf
  diff = math.sqrt(sum((a[k] - b[k]) ** 2 for k in b))
  norm = math.sqrt(sum(b[k] ** 2 for k in b))
  return diff / max(norm, 1e-30)


def build(config: Any, out: epath.Path, steps: int, workdir: epath.Path) -> str:
  """The whole base run; returns the SHA-256 of the written file."""
  # pylint: disable-next=g-import-not-at-top
  from kiwi_jax.tasks import kiwi_task
  from kiwi_jax.train_lib import progress, trainer

  progress.note(f"Writing caption clips and the tokenizer into {workdir}.")
  records, tok_dir = write_data(config, workdir)
  stage_cfg = base_stage_config(config, records, tok_dir, steps)
  stage_dir = workdir / "base"
  progress.note(f"Training the tiny base for {steps} steps in {stage_dir}.")
  with progress.label("base"):
    trainer.train_and_evaluate(
      stage_cfg, stage_dir, kiwi_task.KiwiTask(stage_cfg)
    )
  return export(stage_dir, out)


def repo_root() -> epath.Path:
  return epath.Path(__file__).parent.parent.parent


def default_out() -> epath.Path:
  return repo_root() / "assets" / "demo_base.safetensors"


def manifest_path() -> epath.Path:
  return repo_root() / "assets" / "demo_base.json"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m kiwi_jax.tasks.demo_base",
    description=__doc__.split("\n")[0],
  )
  parser.add_argument(
    "--steps",
    type=int,
    default=None,
    help="training steps (default: the demo config's demo.base_steps)",
  )
  parser.add_argument(
    "--out",
    default=None,
    help="the .safetensors file to write (default: assets/demo_base.safetensors)",
  )
  parser.add_argument(
    "--workdir",
    default=None,
    help="where the clips and the run go (default: a temporary directory)",
  )
  parser.add_argument(
    "--overwrite",
    action="store_true",
    help="replace --out if it exists (it is never replaced otherwise)",
  )
  parser.add_argument(
    "--record",
    action="store_true",
    help="write the settings and SHA-256 into assets/demo_base.json",
  )
  args = parser.parse_args(argv)
  # pylint: disable-next=g-import-not-at-top
  from configs import demo as demo_config
  from kiwi_jax.tasks.kiwi_config import DemoConfig

  config = demo_config.get_config("")
  settings = DemoConfig.from_config(config.demo)
  steps = settings.base_steps if args.steps is None else args.steps
  if steps < 1:
    parser.error(f"--steps must be at least 1, got {steps}")
  out = epath.Path(args.out) if args.out else default_out()
  if not str(out).endswith(".safetensors"):
    parser.error(f"--out must end in .safetensors, got {out}")
  if out.exists() and not args.overwrite:
    parser.error(f"--out {out} exists; pass --overwrite to replace it")
  if args.workdir and epath.Path(args.workdir).exists():
    parser.error(f"--workdir {args.workdir} exists; give a new directory")
  import jax  # pylint: disable=g-import-not-at-top

  devices = jax.devices()
  if len(devices) != 1 or devices[0].platform != "cpu":
    parser.error(
      f"the base is made on one CPU device (bit for bit), found "
      f"{len(devices)} {devices[0].platform} device(s); run with "
      "JAX_PLATFORMS=cpu and no --xla_force_host_platform_device_count"
    )
  with tempfile.TemporaryDirectory(prefix="demo_base_") as tmp:
    workdir = epath.Path(args.workdir or tmp)
    digest = build(config, out, steps, workdir)
    print(f"wrote {out} ({out.stat().length} bytes, sha256 {digest})")
    if args.record:
      entries = {
        "sha256"
        if steps == settings.base_steps
        else f"sha256_steps_{steps}": digest
      }
      if steps == REDUCED_STEPS:
        entries.update(reduced_fingerprints(config, out, steps, tmp))
      record_entries(settings, entries)
  return 0


def reduced_fingerprints(config: Any, out: epath.Path, steps: int, tmp: str):
  """The reduced run's fingerprint, and how far one step fewer moves it."""
  first = fingerprint_file(out)
  fewer = epath.Path(tmp) / "fewer"
  fewer_out = fewer / "base.safetensors"
  fewer.mkdir()
  build(config, fewer_out, steps - 1, fewer / "work")
  step = fingerprint_distance(fingerprint_file(fewer_out), first)
  print(f"one step fewer moves the fingerprint by {step:.3e}")
  return {
    f"fingerprint_steps_{steps}": first,
    f"step_distance_steps_{steps}": step,
    "recorded_on_cpu": cpu_model(),
  }


def record_entries(settings: Any, entries: dict) -> None:
  """Adds ``entries`` (and the command and settings) to the manifest."""
  # pylint: disable-next=g-import-not-at-top
  from kiwi_jax.utils import atomic

  path = manifest_path()
  record = json.loads(path.read_text()) if path.exists() else {}
  record.update(
    {
      "command": "python -m kiwi_jax.tasks.demo_base",
      "steps": settings.base_steps,
      "reduced_steps": REDUCED_STEPS,
      **entries,
    }
  )
  atomic.write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
  print(f"recorded {', '.join(sorted(entries))} in {path}")


if __name__ == "__main__":
  sys.exit(main())
