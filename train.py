r"""Trains Kiwi-Edit (or runs the CPU demo) as a config file says.

  python train.py --config=configs/kiwi_wan22_5b.py:stage=2 \
      --workdir=gs://bucket/run [--config.model_init=...]
  python train.py --config=configs/demo.py --workdir=runs/demo \
      [--config.demo.stage_steps=[20,300,100]]

``config.task``: "kiwi" (one curriculum stage, ``kiwi_jax.tasks``),
"kiwi_demo" (the three-stage CPU demo), or "package.module:factory" for
any other task (``factory(config)`` returns a ``trainer.Task``).

``--config.a.b=VALUE`` overrides any setting, lists included; a mistyped
key or a bad value fails with one line naming the closest keys
(``kiwi_jax.train_lib.config_overrides``). The console shows notes and one
progress line per log step (a bar on a terminal); the full log, library
INFO included, goes to ``<workdir>/train.log``. Multi-host runs start
through ``runtime.initialize()`` (``jax.distributed`` when the environment
is a cluster; ``docs/multihost.md``); only process 0 writes logs.
"""

import importlib
import importlib.util
import sys

from absl import app, flags
from ml_collections import config_flags

from kiwi_jax.train_lib import config_overrides, progress, runtime

_PROG = "train.py"
_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Config file (configs/*.py[:args]); override settings "
  "with --config.KEY=VALUE.",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Where checkpoints and logs go (local or gs://)."
)
flags.mark_flags_as_required(["config", "workdir"])


def _check_task(task: str) -> None:
  """Fails with one line unless ``config.task`` names a known task."""
  if task in ("kiwi", "kiwi_demo"):
    return
  module_name, _, factory_name = str(task).partition(":")
  try:
    found = (
      bool(factory_name) and importlib.util.find_spec(module_name) is not None
    )
  except (ImportError, ValueError):
    found = False
  if not found:
    config_overrides.fail(
      _PROG,
      f"config.task={task!r}; expected 'kiwi', 'kiwi_demo' or "
      "'package.module:factory' naming an importable module.",
    )


def _task_factory(task: str):
  module_name, _, factory_name = task.partition(":")
  factory = getattr(importlib.import_module(module_name), factory_name, None)
  if factory is None:
    config_overrides.fail(
      _PROG,
      f"config.task={task!r}: module {module_name} has no {factory_name!r}.",
    )
  return factory


def main(argv):
  if len(argv) > 1:
    config_overrides.fail(
      _PROG,
      f"unexpected arguments {argv[1:]}; settings are --config.KEY=VALUE.",
    )
  config = _CONFIG.value
  task = config.get("task", "")
  _check_task(task)
  log_file = runtime.log_file_in(_WORKDIR.value)
  try:
    runtime.initialize(log_file=log_file)  # logs hosts, devices, versions
  except ValueError as e:  # e.g. JAX_PROCESS_ID=x (docs/multihost.md)
    config_overrides.fail(_PROG, f"multi-process set-up: {e}")
  progress.note(f"{runtime.describe()}; the full log is in {log_file}.")
  # Imported after initialize() (see _run); a value the run config's
  # dataclasses reject (``run_config``) is a usage mistake: one line.
  # pylint: disable-next=g-import-not-at-top
  from kiwi_jax.train_lib import run_config

  try:
    _run(task, config)
  except run_config.ConfigError as e:
    config_overrides.fail(_PROG, str(e))
  except FloatingPointError as e:  # NonFiniteLossError, NonFiniteStateError
    # Not a usage mistake: the run diverged. The message names the step and
    # the first non-finite leaf; no non-finite state was saved.
    print(f"{_PROG}: stopped: {e}", file=sys.stderr)
    sys.exit(1)


def _run(task: str, config) -> None:
  # Imported after initialize(): jax.distributed must start first.
  # pylint: disable=g-import-not-at-top
  if task == "kiwi_demo":
    from kiwi_jax.tasks import demo

    demo.run(config, _WORKDIR.value)
    return
  from kiwi_jax.train_lib import trainer

  if task == "kiwi":
    from kiwi_jax.tasks import kiwi_task

    factory = kiwi_task.KiwiTask
  else:
    factory = _task_factory(task)
  trainer.train_and_evaluate(config, _WORKDIR.value, factory(config))


if __name__ == "__main__":
  app.run(main, flags_parser=config_overrides.make_flags_parser(_PROG))
