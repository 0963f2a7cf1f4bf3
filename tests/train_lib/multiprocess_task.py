"""The toy run of ``test_multiprocess.py``: a train.py config and a task.

``python train.py --config=tests/train_lib/multiprocess_task.py`` trains
:class:`ToyFlowTask` (global batch 8 on a data=2, fsdp=2, tensor=2 mesh)
for 4 steps, checkpointing every 2 and writing a sample video every 2.
Besides training, the task records what the test checks:

* every host batch's example indices, one JSON line per step, in
  ``multiprocess.log_dir/keys-p<process>.jsonl``;
* every file this process opens for writing, renames, removes or creates
  under ``multiprocess.watch_dir`` (checkpoints aside), in
  ``writes-p<process>.jsonl`` (a Python audit hook);
* ``multiprocess.kill_at_batch=N`` SIGKILLs the process right after it
  fetched (and logged) the host batch of its N-th step (0: never).
"""

from __future__ import annotations

import json
import os
import signal
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from kiwi_jax import sharding
from kiwi_jax.testing.toy_flow import ToyFlowTask, toy_examples

TOTAL_STEPS = 4
GLOBAL_BATCH = 8


def get_config():
  config = ml_collections.ConfigDict(
    dict(
      task="tests.train_lib.multiprocess_task:make",
      seed=0,
      total_steps=TOTAL_STEPS,
      log_every=1,
      log_first_steps=0,
      mesh=dict(data=2, fsdp=2, tensor=2),
      optimizer=dict(learning_rate=1e-2),
      precision=dict(compute_dtype=None),
      tensorboard=False,
      checkpoint=dict(every=2, keep=2, async_save=False),
      sample_every=2,
      multiprocess=dict(log_dir="", watch_dir="", kill_at_batch=0),
    )
  )
  config.lock()
  return config


def _append_line(fd: int, record: dict) -> None:
  os.write(fd, (json.dumps(record) + "\n").encode())


def _watch_writes(watch_dir: str, fd: int) -> None:
  """Logs this process's Python-level writes under ``watch_dir``."""
  watch_dir = os.path.abspath(watch_dir)
  checkpoints = os.path.join(watch_dir, "checkpoints")
  busy = []

  def watched(path) -> bool:
    if not isinstance(path, (str, bytes, os.PathLike)):
      return False  # a file descriptor
    path = os.path.abspath(os.fsdecode(path))  # under, not the dir itself
    return (
      path.startswith(watch_dir + os.sep)
      and path != checkpoints
      and not path.startswith(checkpoints + os.sep)
    )

  def hook(event, args):
    if busy:
      return
    if event == "open":
      path, mode, flags = args
      writing = (
        any(c in mode for c in "wax+")
        if isinstance(mode, str)
        else bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
      )
      paths = [path] if writing else []
    elif event == "os.rename":
      paths = list(args[:2])
    elif event in ("os.remove", "os.mkdir", "os.rmdir"):
      paths = [args[0]]
    else:
      return
    hits = [os.fsdecode(p) for p in paths if watched(p)]
    if hits:
      busy.append(1)
      try:
        _append_line(fd, {"event": event, "paths": hits})
      finally:
        busy.pop()

  sys.addaudithook(hook)


class MultiprocessToyTask(ToyFlowTask):
  """:class:`ToyFlowTask` that logs its batches (and may kill itself), with
  a ``sample`` hook that writes a video of the model's prediction."""

  def __init__(self, config):
    super().__init__(batch_size=GLOBAL_BATCH)
    self.config = config
    options = config.multiprocess
    self.kill_at = int(options.kill_at_batch)
    self.batches = 0
    self.keys_fd = None
    if options.log_dir:
      process = jax.process_index()
      flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
      self.keys_fd = os.open(
        os.path.join(options.log_dir, f"keys-p{process}.jsonl"), flags
      )
      if options.watch_dir:
        _watch_writes(
          options.watch_dir,
          os.open(
            os.path.join(options.log_dir, f"writes-p{process}.jsonl"), flags
          ),
        )

  def global_batch(self, host_batch, mesh):
    self.batches += 1
    if self.keys_fd is not None:
      _append_line(
        self.keys_fd, {"keys": np.asarray(host_batch["index"]).tolist()}
      )
    if self.batches == self.kill_at:
      os.kill(os.getpid(), signal.SIGKILL)
    return sharding.host_to_global(host_batch, mesh)

  def sample(self, model, step, writer):
    """The prediction for example 0 as a [3, 32, 40, 3] uint8 video."""
    mesh = sharding.mesh_from_config(self.config)
    example = toy_examples(self.num_examples)[0]
    source = jax.device_put(
      example["source"][None],
      jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
    )
    graphdef, state = nnx.split(model)

    @jax.jit
    def predict(state, source):
      size = source.shape[0]
      return nnx.merge(graphdef, state)(
        source,
        jnp.full((size,), 500.0, jnp.bfloat16),
        jnp.full((size,), 0.5),
        source,
      )

    frames = sharding.global_to_host(predict(state, source))[0, ..., :3]
    video = np.clip(np.round((np.tanh(frames) + 1.0) * 127.5), 0, 255)
    video = np.repeat(np.repeat(video.astype(np.uint8), 8, 1), 8, 2)
    writer.write_videos(step, {"sample/toy": video})


def make(config):
  return MultiprocessToyTask(config)
