"""Progress reports, profiler switching and the runtime guard."""

import jax
import jax.numpy as jnp
import pytest

from kiwi_jax.train_lib import profiling, progress, runtime


def test_report_progress_throughput_eta_and_mfu(monkeypatch):
  clock = iter([0.0, 0.0, 1.0, 1.5, 2.0, 2.0, 2.0])
  monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
  reporter = progress.ReportProgress(
    10, num_chips=2, flops_per_step=4e12, peak_flops_per_chip=1e13
  )
  with reporter.timed("train_step"):  # 0.0 -> 1.0
    pass
  with reporter.timed("data"):  # 1.5 -> 2.0
    pass
  reporter.step_done(1, examples=4, frames=84)
  reporter.step_done(2, examples=4, frames=84)
  out = reporter.report(2)  # window 0.0 -> 2.0, two steps
  assert out["steps_per_sec"] == pytest.approx(1.0)
  assert out["eta_seconds"] == pytest.approx(8.0)
  assert out["examples_per_sec_per_chip"] == pytest.approx(2.0)
  assert out["frames_per_sec_per_chip"] == pytest.approx(42.0)
  assert out["mfu"] == pytest.approx(4e12 / 2 / 1e13)
  assert out["time_fraction/train_step"] == pytest.approx(0.5)
  assert out["time_fraction/data"] == pytest.approx(0.25)
  assert out["examples_seen"] == 8
  assert progress.format_eta(3725.0) == "1h02m"


def test_compile_time_is_left_out_of_rates_and_eta(monkeypatch):
  clock = iter([0.0, 10.0])
  monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
  reporter = progress.ReportProgress(10, peak_flops_per_chip=None)
  # 8 of the window's 10 s go to compiling (as jax.monitoring reports it).
  monkeypatch.setattr(
    progress, "_compile_seconds", progress.compile_seconds() + 8.0
  )
  reporter.step_done(1)
  reporter.step_done(2)
  out = reporter.report(2)
  assert out["compile_seconds"] == pytest.approx(8.0)
  assert out["steps_per_sec"] == pytest.approx(1.0)  # 2 steps in 2 s
  assert out["eta_seconds"] == pytest.approx(8.0)


def test_compile_events_are_counted():
  before = progress.compile_seconds()
  progress.ReportProgress(1, peak_flops_per_chip=None)  # installs listener
  jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)(jnp.arange(7.0)).block_until_ready()
  assert progress.compile_seconds() > before


def test_profiler_traces_the_configured_steps(tmp_path):
  profiler = profiling.Profiler.from_config(
    {"start_step": 1, "num_steps": 2}, tmp_path
  )
  x = jnp.ones(3)
  for step in range(4):
    profiler.before_step(step, x)
    assert profiler.active == (step in (1, 2))
    with profiling.step_annotation(step):
      x = x + 1
    profiler.after_step(step, x)
  assert not profiler.active
  assert any((tmp_path / "profile").rglob("*.xplane.pb"))
  off = profiling.Profiler.from_config({}, tmp_path)
  off.before_step(0, x)
  assert not off.active


def test_multiprocess_detection():
  assert not runtime.is_multiprocess_environment({})
  assert not runtime.is_multiprocess_environment({"SLURM_NTASKS": "1"})
  assert runtime.is_multiprocess_environment({"SLURM_NTASKS": "4"})
  assert runtime.is_multiprocess_environment(
    {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}
  )
  assert runtime.is_multiprocess_environment({"TPU_WORKER_HOSTNAMES": "a,b"})
  runtime.initialize()  # single process here: no distributed start-up
  assert jax.process_count() == 1
  runtime.sync()


def test_distributed_args_come_from_the_environment():
  # JAX itself reads only JAX_COORDINATOR_ADDRESS (docs/multihost.md).
  assert runtime.distributed_args({}) == {}
  assert runtime.distributed_args(
    {"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
  ) == {"num_processes": 2, "process_id": 1}
  with pytest.raises(ValueError, match="JAX_PROCESS_ID='one'"):
    runtime.distributed_args({"JAX_PROCESS_ID": "one"})


class _Terminal:
  """A stream that says it is a terminal (for the progress bar)."""

  def __init__(self):
    self.text = ""

  def write(self, text):
    self.text += text

  def flush(self):
    pass

  def isatty(self):
    return True


def test_console_lines_or_a_bar_on_a_terminal(capsys):
  report = {"steps_per_sec": 2.0, "eta_seconds": 245.0}
  assert progress.format_eta(245.0) == "4m05s"
  assert progress.format_eta(7.2) == "7s"
  plain = progress.ConsoleProgress(
    10, first_step=2, stream=_Terminal(), bar=False
  )
  with progress.label("stage 2/3"):
    labelled = progress.ConsoleProgress(10, bar=False)
  plain.step_done()
  plain.log_step(3, jnp.float32(0.5), report)
  labelled.log_step(1, 0.25, {})
  assert capsys.readouterr().out.splitlines() == [
    "step 3/10 | loss 0.5 | 2 steps/s | ETA 4m05s",
    "[stage 2/3] step 1/10 | loss 0.25",
  ]
  terminal = _Terminal()
  bar = progress.ConsoleProgress(10, first_step=2, stream=terminal)
  bar.step_done()
  progress.note("Compiling.")
  bar.log_step(3, 0.5, report)
  bar.close()
  assert capsys.readouterr().out == "NOTE: Compiling.\n"  # no step lines
  assert "3/10" in terminal.text and "loss 0.5" in terminal.text
