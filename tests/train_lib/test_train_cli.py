"""train.py's command line: its console, its log file, its config errors."""

import collections
import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

# A toy task (kiwi_jax.testing.toy_flow) as train.py's "module:factory".
TOY_TASK = textwrap.dedent("""
    from kiwi_jax.testing.toy_flow import ToyFlowTask

    def make(config):
      return ToyFlowTask(batch_size=2)
""")
TOY_CONFIG = textwrap.dedent("""
    import ml_collections

    def get_config():
      config = ml_collections.ConfigDict(dict(
          task="toy_task:make", seed=0, total_steps=4, log_every=2,
          log_first_steps=1, mesh=dict(data=1, fsdp=1, tensor=1),
          optimizer=dict(learning_rate=1e-2),
          precision=dict(compute_dtype=None), tensorboard=False,
          checkpoint=dict(every=3, keep=2, async_save=False),
          tags=["toy"]))
      config.lock()
      return config
""")


def _train(args, tmp_path, timeout=300):
  env = dict(
    os.environ,
    HF_HUB_OFFLINE="1",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path)]),
  )
  return subprocess.run(
    [sys.executable, "train.py", *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def test_console_shows_notes_once_a_line_per_log_step_and_no_library_info(
  tmp_path,
):
  (tmp_path / "toy_task.py").write_text(TOY_TASK)
  (tmp_path / "toy_config.py").write_text(TOY_CONFIG)
  workdir = tmp_path / "run"
  done = _train(
    [
      f"--config={tmp_path / 'toy_config.py'}",
      f"--workdir={workdir}",
      "--config.total_steps=6",
      "--config.tags=['a', 'b']",
    ],
    tmp_path,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  console = done.stdout + done.stderr
  # Log steps: the first (log_first_steps=1), every 2nd, and the last.
  steps = [
    int(m.group(1))
    for m in re.finditer(
      r"^step (\d+)/6 \| loss [-+.\de]+ \| [.\de+]+ steps/s \| ETA \S+$",
      done.stdout,
      re.MULTILINE,
    )
  ]
  assert steps == [1, 2, 4, 6], done.stdout
  notes = collections.Counter(
    line for line in console.splitlines() if "NOTE:" in line
  )
  assert notes and set(notes.values()) == {1}, notes
  assert any("Starting at step 0 of 6 from scratch." in n for n in notes)
  # Orbax's (and absl's, jax's) INFO goes to the log file only.
  assert "CheckpointManagerOptions" not in console
  assert not re.search(r"^I\d{4} ", done.stderr, re.MULTILINE), done.stderr
  log = (workdir / "train.log").read_text()
  assert "CheckpointManagerOptions" in log
  assert "NOTE: Starting at step 0 of 6 from scratch." in log
  # The list-valued override reached the run's config.
  assert json.loads((workdir / "config.json").read_text())["tags"] == ["a", "b"]


@pytest.mark.parametrize(
  "override, hint",
  [
    (
      "--config.optimizer.lr=1",
      "unknown config key optimizer.lr; did you mean optimizer.learning_rate?",
    ),
    (
      "--config.optimzer.lr=1",
      "unknown config key optimzer.lr; did you mean optimizer.learning_rate?",
    ),
    (
      "--config.kiwi.data.batch_sise=1",
      "unknown config key kiwi.data.batch_sise; did you mean "
      "kiwi.data.batch_size?",
    ),
    (
      "--config.demo.stage_steps=[2,x]",
      "config key demo.stage_steps expects a list",
    ),
  ],
)
def test_a_bad_override_is_one_line_before_anything_runs(
  tmp_path, override, hint
):
  workdir = tmp_path / "run"
  done = _train(
    ["--config=configs/demo.py:runlocal", f"--workdir={workdir}", override],
    tmp_path,
    timeout=120,
  )
  assert done.returncode == 2, done.stderr[-3000:]
  assert done.stderr.startswith(f"train.py: error: {hint}"), done.stderr
  assert len(done.stderr.splitlines()) == 1, done.stderr
  assert not done.stdout and not workdir.exists()


def test_a_diverging_run_stops_in_one_line_and_saves_nothing(tmp_path):
  """lr=1e39: the step-1 loss is finite, the update makes the weights NaN.
  train.py stops at step 1 naming the first non-finite leaf; no checkpoint
  is committed, so a restart cannot resume from one."""
  (tmp_path / "toy_task.py").write_text(TOY_TASK)
  (tmp_path / "toy_config.py").write_text(TOY_CONFIG)
  workdir = tmp_path / "run"
  done = _train(
    [
      f"--config={tmp_path / 'toy_config.py'}",
      f"--workdir={workdir}",
      "--config.optimizer.learning_rate=1e39",
      "--config.checkpoint.every=1",
    ],
    tmp_path,
  )
  assert done.returncode == 1, done.stderr[-3000:]
  errors = [ln for ln in done.stderr.splitlines() if "train.py: stopped:" in ln]
  assert len(errors) == 1, done.stderr[-3000:]
  assert "at step 1" in errors[0] and "first: params/" in errors[0], errors
  assert "Traceback" not in done.stderr
  ckpts = workdir / "checkpoints"
  assert not ckpts.exists() or not [
    p for p in ckpts.iterdir() if p.name.isdigit()
  ]


def test_a_bad_process_id_is_one_line(tmp_path):
  env = dict(
    os.environ,
    HF_HUB_OFFLINE="1",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=str(ROOT),
    JAX_COORDINATOR_ADDRESS="localhost:1",
    JAX_NUM_PROCESSES="2",
    JAX_PROCESS_ID="one",
  )
  done = subprocess.run(
    [
      sys.executable,
      "train.py",
      "--config=configs/demo.py:runlocal",
      f"--workdir={tmp_path / 'run'}",
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 2, done.stderr[-3000:]
  assert done.stderr == (
    "train.py: error: multi-process set-up: "
    "JAX_PROCESS_ID='one' is not an integer.\n"
  )
