"""After a restart, metrics hold one value per step (issue 15, item 4)."""

import json
import shutil
import struct

import ml_collections
import pytest

from kiwi_jax.testing.toy_flow import ToyFlowTask
from kiwi_jax.train_lib import trainer


def _config(total_steps):
  return ml_collections.ConfigDict(
    dict(
      seed=0,
      total_steps=total_steps,
      log_every=1,
      log_first_steps=0,
      mesh=dict(data=2, fsdp=2, tensor=2),
      optimizer=dict(learning_rate=1e-2),
      precision=dict(compute_dtype=None),
      tensorboard=True,
      checkpoint=dict(every=2, keep=5, async_save=False),
    )
  )


def _events(path):
  """The ``Event`` protos of one TensorBoard event file (TFRecords)."""
  from tensorboardX.proto import event_pb2

  data, events, offset = path.read_bytes(), [], 0
  while offset < len(data):
    (length,) = struct.unpack_from("<Q", data, offset)
    offset += 12  # length, its CRC
    events.append(event_pb2.Event.FromString(data[offset : offset + length]))
    offset += length + 4  # data, its CRC
  return events


def test_a_restart_supersedes_the_steps_after_its_checkpoint(tmp_path):
  pytest.importorskip("tensorboardX")
  trainer.train_and_evaluate(_config(3), tmp_path, ToyFlowTask(batch_size=4))
  # As if killed after logging step 3, before its checkpoint committed.
  shutil.rmtree(tmp_path / "checkpoints" / "3")
  first_files = set((tmp_path / "tensorboard").iterdir())
  trainer.train_and_evaluate(_config(4), tmp_path, ToyFlowTask(batch_size=4))
  rows = [
    json.loads(line)
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
  ]
  assert [r["step"] for r in rows if "step" in r] == [1, 2, 3, 4]
  # TensorBoard: before its scalars, the restart writes a purge marker at
  # step 3, which hides the first run's events from step 3 on.
  new_files = sorted(set((tmp_path / "tensorboard").iterdir()) - first_files)
  events = [e for path in new_files for e in _events(path)]
  marks = [i for i, e in enumerate(events) if e.HasField("session_log")]
  assert [(events[i].step, events[i].session_log.status) for i in marks] == [
    (3, 1)
  ]  # SessionLog.START
  scalars = [
    i
    for i, e in enumerate(events)
    if e.summary.value and e.summary.value[0].HasField("simple_value")
  ]
  assert scalars and marks[0] < scalars[0]
