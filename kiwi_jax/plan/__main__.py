r"""``python -m kiwi_jax.plan``: compile a config's programs for a TPU slice.

  python -m kiwi_jax.plan --config=configs/kiwi_wan22_5b.py:stage=2 \
      --topology=v5p-8 [--mesh=fsdp=4,sequence=1] [--config.KEY=VALUE] \
      [--programs=all|train|edit|NAME,...] [--json=plan.json] \
      [--cache_dir=DIR|none] [--aspect=720x1280] [--noscan_corrected]

Prints one markdown table row per program (per-chip memory, fits, model
and XLA FLOPs, collectives, f32 matmuls, the step-time lower bound) and
writes the plan as JSON. Exit status: 0 when every program compiled and
fits, 1 when one does not, 2 for bad input (one line on stderr).
"""

import os
import sys

# Before jax starts a backend: the host stays CPU; libtpu quiet.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
# Compile-only devices run nothing: plans may run side by side (libtpu
# otherwise takes a lock that a second process fails on).
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import pathlib  # noqa: E402

from absl import app, flags  # noqa: E402
from absl import logging as absl_logging
from ml_collections import config_flags  # noqa: E402

from kiwi_jax.plan import topology  # noqa: E402
from kiwi_jax.train_lib import config_overrides  # noqa: E402

_PROG = "python -m kiwi_jax.plan"
_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Config file (configs/*.py[:args]); override settings "
  "with --config.KEY=VALUE.",
  lock_config=True,
)
_TOPOLOGY = flags.DEFINE_string(
  "topology",
  None,
  "Cloud TPU slice: v5p-8 .. v5p-256 (TensorCores), "
  "v6e-4 .. v6e-256, v5e-4 .. v5e-256 (chips), v4-8 .. v4-256.",
)
_MESH = flags.DEFINE_string(
  "mesh",
  "",
  "Mesh axes, e.g. fsdp=4,sequence=2 (axes left out are 1; "
  "one may be -1); default the config's mesh.",
)
_PROGRAMS = flags.DEFINE_string(
  "programs", "all", "Comma-separated program names, or train, edit, all."
)
_JSON = flags.DEFINE_string("json", "", "Write the plan here as JSON.")
_CACHE_DIR = flags.DEFINE_string(
  "cache_dir",
  "",
  "Compilation cache and plan rows (default "
  "~/.cache/kiwi_jax/plan; 'none' disables).",
)
_ASPECT = flags.DEFINE_string(
  "aspect",
  "720x1280",
  "HEIGHTxWIDTH aspect of clips without "
  "kiwi.data.fixed_size (scaled to data.max_pixels).",
)
_MODEL = flags.DEFINE_string(
  "model_overrides",
  "",
  "A Python dict merged into config.kiwi.model "
  "(KiwiEditConfig fields), e.g. \"{'dit': {'dtype': 'bfloat16', "
  "'remat_policy': 'full'}}\", for what-if plans.",
)
_SCAN = flags.DEFINE_bool(
  "scan_corrected",
  True,
  "Also count XLA FLOPs with scan bodies times "
  "their length (compiles each body once more).",
)
flags.mark_flags_as_required(["config", "topology"])


def _aspect(text: str) -> tuple[int, int]:
  height, sep, width = text.lower().partition("x")
  if not (sep and height.isdigit() and width.isdigit()) or not (
    int(height) and int(width)
  ):
    config_overrides.fail(
      _PROG, f"--aspect={text!r}: expected HEIGHTxWIDTH, e.g. 720x1280."
    )
  return int(height), int(width)


def _merge(base: dict, extra: dict) -> dict:
  out = dict(base)
  for key, value in extra.items():
    if isinstance(value, dict) and isinstance(out.get(key), dict):
      value = _merge(out[key], value)
    out[key] = value
  return out


def _apply_model_overrides(config, text: str) -> None:
  import ast  # pylint: disable=g-import-not-at-top

  try:
    extra = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    extra = None
  if not isinstance(extra, dict):
    config_overrides.fail(
      _PROG,
      f"--model_overrides={text!r}: expected a "
      "Python dict such as {'dit': {'dtype': "
      "'bfloat16'}}.",
    )
  current = config.kiwi.get("model", None)
  current = (
    current.to_dict() if hasattr(current, "to_dict") else dict(current or {})
  )
  with config.unlocked():
    config.kiwi.model = _merge(current, extra)
  try:
    from kiwi_jax.tasks import kiwi_task  # pylint: disable=g-import-not-at-top

    kiwi_task.kiwi_model_config(config.kiwi)
  except (ValueError, TypeError) as e:
    config_overrides.fail(_PROG, f"--model_overrides: {e}")


def _cache_dir(text: str):
  from kiwi_jax.plan import cache  # pylint: disable=g-import-not-at-top

  if text.lower() == "none":
    return None
  return pathlib.Path(text).expanduser() if text else cache.default_dir()


def main(argv):
  if len(argv) > 1:
    config_overrides.fail(_PROG, f"unexpected arguments {argv[1:]}.")
  try:
    tpu_slice = topology.parse_slice(_TOPOLOGY.value)
  except topology.UnknownSliceError as e:
    config_overrides.fail(_PROG, f"--topology: {e}.")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", tpu_slice.name)
  config = _CONFIG.value
  if config.get("kiwi", None) is None:
    config_overrides.fail(
      _PROG,
      "--config: the plan needs a config with a "
      "kiwi block (configs/kiwi_*.py or demo.py).",
    )
  if _MODEL.value:
    _apply_model_overrides(config, _MODEL.value)
  aspect = _aspect(_ASPECT.value)
  cache_dir = _cache_dir(_CACHE_DIR.value)
  # pylint: disable=g-import-not-at-top
  from kiwi_jax.plan import report, run

  try:
    mesh_override = run.parse_mesh(_MESH.value)
  except ValueError as e:
    config_overrides.fail(_PROG, str(e))
  absl_logging.set_verbosity(absl_logging.WARNING)
  config_name = next(
    (a.split("=", 1)[1] for a in sys.argv if a.startswith("--config=")),
    "config",
  )
  if _JSON.value:
    from kiwi_jax.utils import paths

    try:
      paths.refuse_inputs_as_outputs(
        [("--json", _JSON.value)], [("--config", config_name.split(":", 1)[0])]
      )
    except ValueError as e:
      config_overrides.fail(_PROG, str(e))
  if topology.libtpu_version() is None:
    config_overrides.fail(
      _PROG,
      "libtpu is not installed; install the "
      "extra: pip install '.[tpu]' (jax[tpu]).",
    )
  print(
    f"Planning {config_name} on {tpu_slice.name} "
    f"({tpu_slice.topology}); compiling, this can take minutes per "
    "program at full size.",
    file=sys.stderr,
    flush=True,
  )

  def on_row(row):
    cached = " (cached)" if row.get("cached") else ""
    print(
      f"  {row['program']}: {row['status']}{cached}, "
      f"{row.get('compile_seconds', 0):.0f} s",
      file=sys.stderr,
      flush=True,
    )

  try:
    result = run.plan(
      config,
      config_name,
      tpu_slice,
      mesh_override=mesh_override,
      wanted=_PROGRAMS.value,
      cache_dir=cache_dir,
      scan_corrected=_SCAN.value,
      aspect=aspect,
      on_row=on_row,
    )
  except ValueError as e:  # bad --mesh sizes, --programs names
    config_overrides.fail(_PROG, str(e).splitlines()[0])
  result["command_overrides"] = [
    a
    for a in sys.argv[1:]
    if a.startswith(("--config.", "--mesh", "--model_overrides"))
  ]
  print(report.markdown(result), end="")
  if _JSON.value:
    report.write_json(_JSON.value, result)
  sys.exit(0 if result["fits"] else 1)


if __name__ == "__main__":
  app.run(main, flags_parser=config_overrides.make_flags_parser(_PROG))
