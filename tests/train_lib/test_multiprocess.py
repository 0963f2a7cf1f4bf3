"""Two processes on localhost train like one: losses, data order, writers.

Each process runs ``train.py`` as docs/multihost.md says (4 fake CPU
devices, gloo collectives, ``JAX_COORDINATOR_ADDRESS`` /
``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``) on the toy config of
``multiprocess_task.py``. Both SIGKILL themselves after fetching the batch
of step 4 (the checkpoint of step 2 is committed), then both resume. The
result must equal one process with 8 devices running the same 4 steps.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.train_lib import multiprocess_task

ROOT = pathlib.Path(__file__).resolve().parents[2]
TIMEOUT_S = 420  # per launch; a hang fails instead of blocking CI
CONFIG = "tests/train_lib/multiprocess_task.py"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(num_processes, workdir, log_dir, *overrides):
  """Runs train.py in ``num_processes`` processes of 8 // n devices each;
  returns ``[(returncode, console)]`` in process order."""
  log_dir.mkdir(parents=True)
  env = {
    k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))
  }
  env.update(
    HF_HUB_OFFLINE="1",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=str(ROOT),
    XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // num_processes}",
  )
  if num_processes > 1:
    env.update(
      JAX_COORDINATOR_ADDRESS=f"localhost:{_free_port()}",
      JAX_NUM_PROCESSES=str(num_processes),
    )
  args = [
    sys.executable,
    "train.py",
    f"--config={CONFIG}",
    f"--workdir={workdir}",
    f"--config.multiprocess.log_dir={log_dir}",
    f"--config.multiprocess.watch_dir={workdir}",
    *overrides,
  ]
  procs = []
  try:
    for index in range(num_processes):
      console = open(log_dir / f"console-p{index}.txt", "w")
      procs.append(
        subprocess.Popen(
          args,
          cwd=ROOT,
          stdout=console,
          stderr=subprocess.STDOUT,
          env={**env, "JAX_PROCESS_ID": str(index)},
          start_new_session=True,
        )
      )  # its own process group, killed below
      console.close()
    for proc in procs:
      proc.wait(timeout=TIMEOUT_S)
  finally:
    for proc in procs:
      if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
  return [
    (proc.returncode, (log_dir / f"console-p{i}.txt").read_text())
    for i, proc in enumerate(procs)
  ]


def _lines(path):
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines()]


def _steps(workdir):
  """{step: (loss, data_code)}; one row per step (a restart rewrites the
  steps after its checkpoint)."""
  rows = [r for r in _lines(workdir / "metrics.jsonl") if "training_loss" in r]
  assert len(rows) == len({r["step"] for r in rows}), rows
  return {r["step"]: (r["training_loss"], r["data_code"]) for r in rows}


def _global_keys(log_dir, num_processes):
  """The examples of each fetched global batch: process 0's rows first."""
  per_process = [
    [r["keys"] for r in _lines(log_dir / f"keys-p{p}.jsonl")]
    for p in range(num_processes)
  ]
  assert len({len(k) for k in per_process}) == 1, per_process
  return [sum(rows, []) for rows in zip(*per_process)]


def _written(log_dir, process):
  """What ``process`` created, renamed or removed, relative to tmp_path.

  The compile-cache folder itself is left out: every process points JAX at
  the shared cache and JAX's cache object makes the folder, but JAX writes
  entries from process 0 only, and an entry file would still show here.
  """
  paths = {
    os.path.relpath(path, log_dir.parent)
    for r in _lines(log_dir / f"writes-p{process}.jsonl")
    for path in r["paths"]
  }
  return sorted(p for p in paths if not p.endswith(os.sep + "jax_cache"))


@pytest.mark.slow
def test_two_processes_train_kill_and_resume_like_one(tmp_path):
  steps = multiprocess_task.TOTAL_STEPS
  reference = _launch(1, tmp_path / "ref", tmp_path / "ref_logs")
  assert reference[0][0] == 0, reference[0][1][-3000:]
  want = _steps(tmp_path / "ref")
  assert sorted(want) == list(range(1, steps + 1))
  want_keys = _global_keys(tmp_path / "ref_logs", 1)
  assert len(want_keys) == steps
  assert all(len(k) == multiprocess_task.GLOBAL_BATCH for k in want_keys)

  workdir = tmp_path / "run"
  killed = _launch(
    2, workdir, tmp_path / "logs1", "--config.multiprocess.kill_at_batch=4"
  )
  assert [code for code, _ in killed] == [-signal.SIGKILL] * 2, [
    console[-3000:] for _, console in killed
  ]
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2"]
  # Batches 1-4 were fetched (4 not trained): the reference's, row by row.
  assert _global_keys(tmp_path / "logs1", 2) == want_keys

  resumed = _launch(2, workdir, tmp_path / "logs2")
  for code, console in resumed:
    assert code == 0, console[-3000:]
  assert (
    "Starting at step 2 of 4 from this workdir's checkpoint at step 2"
    in resumed[0][1]
  )
  assert _global_keys(tmp_path / "logs2", 2) == want_keys[2:]

  got = _steps(workdir)
  assert sorted(got) == sorted(want)
  # data_code encodes the examples of each step's global batch (exact).
  assert [got[s][1] for s in sorted(got)] == [want[s][1] for s in sorted(want)]
  # fp32: gloo's cross-process reductions may order sums differently.
  np.testing.assert_allclose(
    [got[s][0] for s in sorted(got)],
    [want[s][0] for s in sorted(want)],
    rtol=1e-5,
  )

  checkpoints = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  assert checkpoints == ["2", "4"]
  videos = sorted(p.name for p in (workdir / "videos").iterdir())
  assert videos == ["sample_toy_2.mp4", "sample_toy_4.mp4"]
  # Only process 0 writes metrics, videos, the config and the log; process
  # 1 writes nothing outside checkpoints/ (its data iterator state).
  for logs in ("logs1", "logs2"):
    assert _written(tmp_path / logs, 1) == [], logs
    written = _written(tmp_path / logs, 0)
    assert "run/metrics.jsonl" in written, written
    assert any(p.startswith("run/videos/sample_toy_") for p in written)
  assert "NOTE: Starting" not in resumed[1][1]  # the console is process 0's
