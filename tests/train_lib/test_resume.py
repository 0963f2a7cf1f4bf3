"""SIGKILL at a random step, restart: the same losses and data order."""

import json
import os
import pathlib
import random
import subprocess
import sys
import textwrap

import pytest

from kiwi_jax.testing.toy_flow import ToyFlowTask
from kiwi_jax.train_lib import trainer

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOTAL_STEPS = 8
CONFIG = dict(
  seed=0,
  total_steps=TOTAL_STEPS,
  log_every=1,
  log_first_steps=0,
  mesh=dict(data=2, fsdp=2, tensor=2),
  optimizer=dict(learning_rate=1e-2),
  precision=dict(compute_dtype=None),
  checkpoint=dict(every=2, keep=2, async_save=True),
  tensorboard=False,
)

# The run as a separate process; KillingTask SIGKILLs itself right after
# fetching the batch of step `kill_at` (an asynchronous checkpoint of the
# previous step may still be in flight).
SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    import jax
    jax.config.update("jax_num_cpu_devices", 8)
    import ml_collections
    from kiwi_jax.testing.toy_flow import ToyFlowTask
    from kiwi_jax.train_lib import trainer

    class KillingTask(ToyFlowTask):
      def __init__(self, kill_at, **kwargs):
        super().__init__(**kwargs)
        self.kill_at, self.batches = kill_at, 0

      def batch_counts(self, batch):
        self.batches += 1
        if self.batches == self.kill_at:
          os.kill(os.getpid(), signal.SIGKILL)
        return super().batch_counts(batch)

    config = ml_collections.ConfigDict(json.loads(sys.argv[2]))
    trainer.train_and_evaluate(config, sys.argv[1],
                               KillingTask(int(sys.argv[3]), batch_size=4))
""")


def _run(workdir, kill_at):
  env = dict(
    os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1"
  )
  return subprocess.run(
    [
      sys.executable,
      "-c",
      SCRIPT,
      str(workdir),
      json.dumps(CONFIG),
      str(kill_at),
    ],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


def _losses_by_step(workdir):
  """Last record per step (a restart rewrites the steps after its
  checkpoint)."""
  out = {}
  for line in (
    (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  ):
    record = json.loads(line)
    if "training_loss" in record:
      out[record["step"]] = (record["training_loss"], record["data_code"])
  return out


@pytest.mark.slow
def test_sigkill_and_restart_reproduce_the_uninterrupted_run(tmp_path):
  import ml_collections

  kill_at = random.randint(3, TOTAL_STEPS)
  trainer.train_and_evaluate(
    ml_collections.ConfigDict(CONFIG),
    tmp_path / "reference",
    ToyFlowTask(batch_size=4),
  )
  expected = _losses_by_step(tmp_path / "reference")
  assert sorted(expected) == list(range(1, TOTAL_STEPS + 1))

  workdir = tmp_path / "killed"
  killed = _run(workdir, kill_at)
  assert killed.returncode == -9, (kill_at, killed.stderr[-2000:])
  # The asynchronous save of the last checkpoint may not have committed
  # before the kill: resume must use exactly the committed ones.
  ckpt_dir = workdir / "checkpoints"
  committed = ckpt_dir.exists() and any(
    p.name.isdigit() for p in ckpt_dir.iterdir()
  )
  restarted = _run(workdir, 0)
  assert restarted.returncode == 0, restarted.stderr[-3000:]
  resumed_from = [
    line for line in restarted.stdout.splitlines() if "Starting at step" in line
  ]
  if committed:
    assert "this workdir's checkpoint" in resumed_from[0], resumed_from
  else:
    assert "from scratch" in resumed_from[0], resumed_from
  got = _losses_by_step(workdir)
  # Bit-identical on CPU: JSON keeps every digit of the float32 loss, and
  # data_code encodes which examples formed each batch.
  assert got == expected, f"killed before step {kill_at}: {resumed_from}"
  steps = sorted(
    int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()
  )
  assert steps == [TOTAL_STEPS - 2, TOTAL_STEPS]
  leftovers = [
    p.name for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name
  ]
  assert not leftovers
