"""Runtime set-up for entry points (``train.py``, ``eval.py``).

``initialize()`` starts the JAX distributed runtime when the process is part
of a multi-process job, then logs where it runs. It must be called before
anything touches a device. Single-process runs (a laptop, one GPU host, the
CPU demo, tests) skip ``jax.distributed.initialize``.
"""

from __future__ import annotations

import logging
import os

import jax
from jax.experimental import multihost_utils

logger = logging.getLogger("kiwi_jax")

# Environment variables that mean "this process is one of several".
_CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS",
                "MEGASCALE_COORDINATOR_ADDRESS")
_COUNT_ENV = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "JAX_NUM_PROCESSES")


def is_multiprocess_environment(env: dict[str, str] | None = None) -> bool:
  """Whether the environment describes a multi-process job."""
  env = os.environ if env is None else env
  if any(env.get(name) for name in _CLUSTER_ENV):
    return True
  if any(int(env.get(name, "1") or 1) > 1 for name in _COUNT_ENV):
    return True
  # Multi-host TPU slices list their workers.
  return "," in env.get("TPU_WORKER_HOSTNAMES", "")


def initialize(force: bool | None = None) -> None:
  """Guarded ``jax.distributed.initialize`` plus a log of the runtime.

  Args:
    force: True always initialises, False never; None (default) decides
      from the environment (:func:`is_multiprocess_environment`).
  """
  wanted = is_multiprocess_environment() if force is None else force
  already = getattr(jax.distributed, "is_initialized", lambda: False)()
  if wanted and not already:
    jax.distributed.initialize()
  log_runtime()


def log_runtime() -> None:
  import flax
  logger.info("JAX %s, Flax %s, backend %s", jax.__version__,
              flax.__version__, jax.default_backend())
  logger.info("Process %d of %d; %d local of %d devices: %s",
              jax.process_index(), jax.process_count(),
              jax.local_device_count(), jax.device_count(),
              jax.local_devices())


def sync(name: str = "kiwi_jax_sync") -> None:
  """Barrier across processes (a no-op on one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
