"""``kiwi-edit --plan``: the memory plan of one edit, no weights.

One plan of the tiny variant at 5 frames of 64 x 64 compiles both modes'
programs (about 40 s on 2 CPU cores, shared by the tests through a module
fixture)."""

import re

import pytest

from kiwi_jax.cli import edit, edit_plan
from kiwi_jax.pipeline import memory_plan

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
  "--low-memory",
]
GIB = float(1 << 30)


@pytest.fixture(scope="module")
def planned():
  args = edit_plan.build_parser().parse_args(ARGV)
  budget = edit_plan.check_args(args)
  lines, plans = edit_plan.run(args, budget)
  return lines, plans, budget


def _phase_rows(lines, mode):
  """The printed phase table of ``mode``: {phase: (weights, program,
  held, peak)} in GiB."""
  start = lines.index(f"== {mode} ==")
  out = {}
  for line in lines[start:]:
    parts = line.split()
    if parts and parts[0] in memory_plan.PHASES and len(parts) == 5:
      out[parts[0]] = tuple(float(x) for x in parts[1:])
    if line.startswith(f"{mode} peak:"):
      return out, float(line.split()[2])
  raise AssertionError(f"no peak line for {mode}")


def test_tables_have_every_program_row(planned):
  lines, plans, _ = planned
  text = "\n".join(lines)
  assert "target: cpu (proxy for the GPU)" in text
  for name in ("encode_conditions", "encode_video", "decode_latents"):
    assert re.search(rf"^{name}\s+\S+(\s+-?\d+\.\d+){{7}}$", text, re.M), name
  assert text.count("denoise (2 steps)") == 2  # both modes
  for kind in ("encode first chunk", "encode chunk", "decode first chunk"):
    assert f"vae {kind} (tile 4x4)" in text
  rows = plans["default"].programs + plans["low_memory"].programs
  assert len(rows) == 4 + 6
  for r in rows:
    assert r.temp > 0 and r.argument > 0 and r.output > 0
    assert r.peak == r.argument + r.output - r.alias + r.temp
    assert 0 <= r.weights <= r.argument


def test_low_memory_peak_is_max_over_phases(planned):
  lines, plans, budget = planned
  low, default = plans["low_memory"], plans["default"]
  assert low.peak <= default.peak
  # The weights: bf16 halves the float32 model; the DiT phase holds only
  # the DiT and VAE.
  assert low.weight_bytes["all"] * 2 == default.weight_bytes["all"]
  assert low.weight_bytes["kept"] < low.weight_bytes["all"]
  phases = {p.phase: p for p in low.phases}
  assert phases["denoise"].weights == low.weight_bytes["kept"]
  assert phases["mllm_encode"].weights == low.weight_bytes["all"]
  # Each phase: its resident weights + its largest program's non-weight
  # bytes (recomputed from the rows) + what the host loop holds.
  for p in low.phases:
    mine = [r for r in low.programs if r.phase == p.phase]
    nonw = max(r.inputs + r.output - r.alias + r.temp for r in mine)
    assert p.program == nonw
    assert p.peak == p.weights + nonw + p.held
  assert low.peak == max(p.peak for p in low.phases)
  # The default: all weights + the largest program's non-weight bytes.
  assert default.peak == default.weight_bytes["all"] + max(
    r.non_weight for r in default.programs
  )
  # The printed figures say the same (to the printed 3 decimals).
  printed, peak = _phase_rows(lines, "low_memory")
  assert set(printed) == set(memory_plan.PHASES)
  sums = [w + prog + held for w, prog, held, _ in printed.values()]
  assert max(sums) == pytest.approx(peak, abs=0.003)
  assert peak == pytest.approx(low.peak / GIB, abs=0.0006)
  verdict = [x for x in lines if x.startswith("low_memory (selected)")]
  assert verdict and verdict[0].endswith(
    ": FITS" if low.peak <= budget else ": DOES NOT FIT"
  )


@pytest.mark.parametrize("budget", ["24XB", "-3GB", "GB", "24 G B"])
def test_bad_budget_is_one_line_exit_2(budget, capsys):
  assert edit.main(["--plan", f"--memory_budget={budget}"]) == 2
  out, err = capsys.readouterr()
  assert out == ""
  assert err.count("\n") == 1
  assert err.startswith("kiwi-edit: error: --memory_budget")


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
