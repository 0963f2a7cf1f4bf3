r"""Trains Kiwi-Edit (or runs the CPU demo) as a config file says.

  python train.py --config=configs/kiwi_wan22_5b.py:stage=2 \
      --workdir=gs://bucket/run [--config.model_init=...]
  python train.py --config=configs/demo.py --workdir=runs/demo

``config.task``: "kiwi" (one curriculum stage, ``kiwi_jax.training``) or
"kiwi_demo" (the three-stage CPU demo). Multi-host runs start through
``runtime.initialize()`` (``jax.distributed`` when the environment is a
cluster); only process 0 writes logs.
"""

import logging

from absl import app, flags
from ml_collections import config_flags

from kiwi_jax.train_lib import runtime

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py[:args]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Where checkpoints and logs go (local or "
                               "gs://).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}.")
  logging.getLogger("kiwi_jax").setLevel(logging.INFO)
  runtime.initialize()  # logs hosts, devices and versions
  config = _CONFIG.value
  # Imported after initialize(): jax.distributed must start first.
  # pylint: disable=g-import-not-at-top
  if config.task == "kiwi_demo":
    from kiwi_jax.training import demo
    demo.run(config, _WORKDIR.value)
  elif config.task == "kiwi":
    from kiwi_jax.train_lib import trainer
    from kiwi_jax.training import kiwi_task
    trainer.train_and_evaluate(config, _WORKDIR.value,
                               kiwi_task.KiwiTask(config))
  else:
    raise app.UsageError(f"config.task={config.task!r}; expected 'kiwi' or "
                         "'kiwi_demo'.")


if __name__ == "__main__":
  app.run(main)
