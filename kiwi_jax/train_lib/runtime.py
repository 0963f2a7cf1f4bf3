"""Runtime set-up for entry points (``train.py``, ``eval.py``).

``initialize()`` starts the JAX distributed runtime when the process is part
of a multi-process job, then logs where it runs. It must be called before
anything touches a device. Single-process runs (a laptop, one GPU host, the
CPU demo, tests) skip ``jax.distributed.initialize``.

Outside a cluster that JAX detects by itself (Cloud TPU, SLURM, Open MPI,
Kubernetes), each process names the job in its environment:
``JAX_COORDINATOR_ADDRESS=host:port`` (process 0's host), plus
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (``docs/multihost.md``).

``initialize(log_file=...)`` also routes Python logging for a command line:
INFO and above (Orbax's checkpoint chatter, absl, jax, grain, kiwi_jax's
own notes) go to ``log_file`` on process 0, and only WARNING and above
reach the console, where ``progress`` prints notes and progress lines.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time

import jax
from jax.experimental import multihost_utils

logger = logging.getLogger("kiwi_jax")

# Environment variables that mean "this process is one of several".
_CLUSTER_ENV = (
  "JAX_COORDINATOR_ADDRESS",
  "COORDINATOR_ADDRESS",
  "MEGASCALE_COORDINATOR_ADDRESS",
)
_COUNT_ENV = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "JAX_NUM_PROCESSES")


def distributed_args(env: dict[str, str] | None = None) -> dict[str, int]:
  """``num_processes``/``process_id`` for ``jax.distributed.initialize``
  from ``JAX_NUM_PROCESSES``/``JAX_PROCESS_ID`` (JAX reads only the
  coordinator's address from the environment); empty when unset."""
  env = os.environ if env is None else env
  out = {}
  for name, key in (
    ("JAX_NUM_PROCESSES", "num_processes"),
    ("JAX_PROCESS_ID", "process_id"),
  ):
    value = env.get(name, "").strip()
    if value:
      try:
        out[key] = int(value)
      except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer.") from None
  return out


def is_multiprocess_environment(env: dict[str, str] | None = None) -> bool:
  """Whether the environment describes a multi-process job."""
  env = os.environ if env is None else env
  if any(env.get(name) for name in _CLUSTER_ENV):
    return True
  if any(int(env.get(name, "1") or 1) > 1 for name in _COUNT_ENV):
    return True
  # Multi-host TPU slices list their workers.
  return "," in env.get("TPU_WORKER_HOSTNAMES", "")


LOG_FORMAT = (
  "%(asctime)s %(levelname).1s %(name)s %(filename)s:%(lineno)d] %(message)s"
)


def log_file_in(workdir: str | os.PathLike, name: str = "train.log") -> str:
  """``<workdir>/<name>``, or a local temporary file for remote workdirs
  (``gs://``: object stores cannot append)."""
  workdir = os.fspath(workdir)
  if "://" in workdir:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join(
      tempfile.gettempdir(), f"kiwi_jax-{stamp}-{os.getpid()}-{name}"
    )
  os.makedirs(workdir, exist_ok=True)
  return os.path.join(workdir, name)


def route_logs(log_file: str | None) -> None:
  """INFO and above to ``log_file`` (None: nowhere), WARNING+ to the console.

  The console handlers already installed (absl's, under ``app.run``) are
  raised to WARNING; without any, one on stderr is added.
  """
  root = logging.getLogger()
  root.setLevel(logging.INFO)
  logging.getLogger("absl").setLevel(logging.INFO)
  logging.getLogger("kiwi_jax").setLevel(logging.INFO)
  consoles = [
    h for h in root.handlers if not isinstance(h, logging.FileHandler)
  ]
  if not consoles:
    consoles = [logging.StreamHandler()]
    consoles[0].setFormatter(
      logging.Formatter("%(levelname)s %(name)s: %(message)s")
    )
    root.addHandler(consoles[0])
  for handler in consoles:
    handler.setLevel(max(handler.level, logging.WARNING))
  if log_file:
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)


def initialize(
  force: bool | None = None, *, log_file: str | None = None
) -> None:
  """Guarded ``jax.distributed.initialize`` plus a log of the runtime.

  Args:
    force: True always initialises, False never; None (default) decides
      from the environment (:func:`is_multiprocess_environment`).
    log_file: when given, logs are routed (:func:`route_logs`): INFO to this
      file on process 0, only WARNING and above to the console.
  """
  wanted = is_multiprocess_environment() if force is None else force
  already = getattr(jax.distributed, "is_initialized", lambda: False)()
  if wanted and not already:
    jax.distributed.initialize(**distributed_args())
  if log_file:
    # On one process, route before anything starts a backend: its INFO
    # lines ("Unable to initialize backend 'tpu'") would reach the console.
    single = not (wanted or already)
    route_logs(log_file if single or jax.process_index() == 0 else None)
  log_runtime()


def log_runtime() -> None:
  import flax

  logger.info(
    "JAX %s, Flax %s, backend %s",
    jax.__version__,
    flax.__version__,
    jax.default_backend(),
  )
  logger.info(
    "Process %d of %d; %d local of %d devices: %s",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    jax.local_devices(),
  )


def describe() -> str:
  """``"JAX 0.10.2 on cpu: process 0 of 1, 1 of 1 devices"``."""
  return (
    f"JAX {jax.__version__} on {jax.default_backend()}: process "
    f"{jax.process_index()} of {jax.process_count()}, "
    f"{jax.local_device_count()} of {jax.device_count()} devices"
  )


def sync(name: str = "kiwi_jax_sync") -> None:
  """Barrier across processes (a no-op on one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
