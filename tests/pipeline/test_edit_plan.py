"""``kiwi-edit --plan``: the memory plan of one edit, no weights.

One plan of the tiny variant at 5 frames of 64 x 64 compiles both modes'
programs for the host CPU (about 25 s on 2 CPU cores, shared by the tests
through a module fixture); a second run reads its rows from the cache."""

import importlib.util
import re

import numpy as np
import pytest

from kiwi_jax.cli import edit, edit_plan
from kiwi_jax.models.kiwi.config import KiwiEditConfig
from kiwi_jax.pipeline import low_memory, memory_plan

ARGV = [
  "--plan",
  "--variant",
  "tiny",
  "--frames",
  "5",
  "--height",
  "64",
  "--width",
  "64",
  "--steps",
  "2",
  "--memory_budget",
  "1GiB",
  "--plan-target",
  "cpu",
]
GIB = float(1 << 30)
_NUMBER = r"-?\d+\.\d+"


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
  cache = tmp_path_factory.mktemp("plan_cache")
  argv = ARGV + ["--cache-dir", str(cache)]
  args = edit_plan.build_parser().parse_args(argv)
  budget = edit_plan.check_args(args)
  lines, plans, fits = edit_plan.run(args, budget)
  return lines, plans, budget, fits, argv


def _section(lines, mode):
  """The printed tables of ``mode``: ([(program, phase, 7 numbers)],
  {phase: (weights, program, held, peak)}, peak), in GiB."""
  start = lines.index(f"== {mode} ==")
  programs, phases = [], {}
  for line in lines[start + 1 :]:
    parts = line.split()
    if line.startswith(f"{mode} peak:"):
      return programs, phases, float(parts[-2])
    if parts and parts[0] in memory_plan.PHASES and len(parts) == 5:
      phases[parts[0]] = tuple(float(x) for x in parts[1:])
    elif re.search(rf"(\s+{_NUMBER}){{7}}$", line):
      *name, phase, on = re.split(r"\s{2,}|\s(?=cpu|tpu)", line[:58].strip())
      numbers = [float(x) for x in line[58:].split()]
      programs.append((" ".join(name), phase, numbers, on))
  raise AssertionError(f"no peak line for {mode}")


def test_tables_have_every_program_row(planned):
  lines, plans, *_ = planned
  assert lines[1].startswith("target: host CPU backend")
  for mode in ("default", "low_memory"):
    programs, _, _ = _section(lines, mode)
    names = [p[0] for p in programs]
    assert names == [
      "encode_conditions",
      "vae encode first chunk (tile 4x4)",
      "vae encode chunk (tile 4x4)",
      "denoise (2 steps)",
      "vae decode first chunk (tile 4x4)",
      "vae decode chunk (tile 4x4)",
    ]
    assert {p[3] for p in programs} == {"cpu"}
    assert [p[1] for p in programs] == [
      "mllm_encode",
      "vae_encode",
      "vae_encode",
      "denoise",
      "vae_decode",
      "vae_decode",
    ]
  for r in plans["default"].programs + plans["low_memory"].programs:
    assert r.temp > 0 and r.argument > 0 and r.output > 0
    assert r.peak == r.argument + r.output - r.alias + r.temp
    assert 0 <= r.weights <= min(r.argument, r.group_weights)
    assert not r.out_of_memory


def test_low_memory_peak_is_max_over_phases_of_the_printed_rows(planned):
  lines, plans, budget, fits, _ = planned
  low, default = plans["low_memory"], plans["default"]
  assert low.peak <= default.peak
  # bf16 halves every float32 weight (the tiny model has no other kind).
  for group in low_memory.GROUPS:
    assert low.weight_bytes[group] * 2 == default.weight_bytes[group]
  for mode, plan in plans.items():
    programs, phases, peak = _section(lines, mode)
    assert set(phases) == set(memory_plan.PHASES)
    for phase, (weights, program, held, phase_peak) in phases.items():
      # The phase's program column: its largest program's non-weight
      # bytes, from the printed rows (last column).
      mine = [numbers[-1] for _, p, numbers, _ in programs if p == phase]
      assert program == pytest.approx(max(mine), abs=0.0011)
      assert phase_peak == pytest.approx(weights + program + held, abs=0.002)
      # Resident weights: all of them by default, the phase's group in
      # low-memory mode (low_memory.PHASE_GROUPS).
      groups = (
        low_memory.PHASE_GROUPS[phase]
        if mode == "low_memory"
        else low_memory.GROUPS
      )
      want = sum(plan.weight_bytes[g] for g in groups) / GIB
      assert weights == pytest.approx(want, abs=0.0006)
    assert peak == pytest.approx(max(p[3] for p in phases.values()), abs=1e-9)
    assert peak == pytest.approx(plan.peak / GIB, abs=0.0006)
  totals = [x for x in lines if x.startswith("peak: ")]
  assert totals == [
    f"peak: default {default.peak / GIB:.3f} GiB, low-memory "
    f"{low.peak / GIB:.3f} GiB"
  ]
  assert fits and lines[-1].startswith("budget 1.00 GiB: FITS in the default")


def test_a_second_plan_reads_the_cache_and_exits_by_verdict(planned, capsys):
  lines, *_, argv = planned
  assert edit.main(argv) == 0
  out, err = capsys.readouterr()
  assert out.splitlines() == lines
  assert err.count(": cached") == 12 and "compiled in" not in err
  # A budget below the low-memory peak: nothing fits, exit status 1.
  assert edit.main(argv + ["--memory_budget", "1KB", "--low-memory"]) == 1
  out, _ = capsys.readouterr()
  assert out.splitlines()[-1] == (
    "budget 0.00 GiB: DOES NOT FIT in low-memory mode"
  )


def test_held_buffers_at_704x1280x81():
  """What the host loop keeps on the device, from the shapes: latents
  21 x 44 x 80 x 48, the runner's largest tile 30 x 52, 6 tiles."""
  cfg = KiwiEditConfig.from_variant("kiwi-5b")
  held = memory_plan.held_buffers(cfg, 81, 704, 1280, low_memory=False)
  video = 81 * 704 * 1280 * 3 * 4
  assert held["vae_encode"]["source clip"] == video
  assert held["vae_encode"]["tile slice"] == 81 * 480 * 832 * 3 * 4
  assert held["vae_encode"]["latent canvas"] == 21 * 44 * 80 * 48 * 4
  assert held["vae_decode"]["decoded frames x2"] == 2 * video
  assert held["vae_decode"]["frame canvas"] == 4 * 704 * 1280 * 3 * 4
  assert held["vae_decode"]["latents (final, source)"] == (
    2 * 21 * 44 * 80 * 48 * 4
  )
  assert held["denoise"] == {} and held["mllm_encode"] == {}
  low = memory_plan.held_buffers(
    low_memory.low_memory_config(cfg), 81, 704, 1280, low_memory=True
  )
  assert "source clip" not in low["vae_encode"]
  assert "decoded frames x2" not in low["vae_decode"]
  assert low["vae_decode"]["latents (final, source)"] == (
    2 * 21 * 44 * 80 * 48 * 2
  )
  assert memory_plan.largest_tile(44, 80) == (30, 52)
  assert sorted(memory_plan.tiles(44, 80)) == sorted(
    [(30, 52), (30, 52), (30, 28), (29, 52), (29, 52), (29, 28)]
  )
  assert np.prod(memory_plan.largest_tile(4, 4)) == 16


@pytest.mark.skipif(
  importlib.util.find_spec("libtpu") is None, reason="needs libtpu"
)
def test_hybrid_target_is_a_tpu_chip_and_the_host_cpu():
  main, vae, label = memory_plan.plan_targets("hybrid")
  assert (main.tag, vae.tag) == ("tpu", "cpu")
  assert main.mesh.devices.size == vae.mesh.devices.size == 1
  assert main.mesh.devices.flat[0].device_kind.startswith("TPU v5")
  assert label.startswith("hybrid") and "v5p-8" in label
  assert memory_plan.resolve_target("auto") == "hybrid"  # CPU host, libtpu


@pytest.mark.parametrize(
  "flags,needle",
  [
    (["--memory_budget=24XB"], "--memory_budget"),
    (["--memory_budget=-3GB"], "--memory_budget"),
    (["--memory_budget=GB"], "--memory_budget"),
    (["--memory_budget=24 G B"], "--memory_budget"),
    (["--frames", "80"], "--frames 80"),
    (["--height", "700"], "--height 700"),
    (["--variant", "kiwi-7b"], "--variant"),
    (["--steps", "0"], "--steps"),
    (["--plan-target", "gpu"], "--plan-target"),
    (["--checkpoint", "/nonexistent/kiwi"], "--checkpoint"),
  ],
)
def test_bad_flags_are_one_line_exit_2(flags, needle, capsys):
  assert edit.main(["--plan", *flags]) == 2
  out, err = capsys.readouterr()
  assert out == ""
  assert err.count("\n") == 1
  assert err.startswith("kiwi-edit: error:") and needle in err


@pytest.mark.parametrize(
  "text,expected",
  [
    ("24GB", 24 * 10**9),
    ("24GiB", 24 << 30),
    ("24000MB", 24 * 10**9),
    ("1.5gib", 3 << 29),
    ("512MiB", 512 << 20),
  ],
)
def test_parse_budget(text, expected):
  assert memory_plan.parse_budget(text) == expected
