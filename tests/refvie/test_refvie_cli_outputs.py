"""`python -m kiwi_jax.refvie` refuses, before any work, outputs that would
write over its inputs: one line on stderr, exit 2, nothing written."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROG = "python -m kiwi_jax.refvie: error: "


def run_refvie(*args):
  env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
  return subprocess.run(
    [sys.executable, "-m", "kiwi_jax.refvie", "--no_progress", *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    check=False,
  )


@pytest.fixture
def pool(tmp_path):
  base = tmp_path / "pool"
  base.mkdir()
  (base / "pairs.csv").write_text(
    "src_video,tgt_video,prompt\na.mp4,b.mp4,make it red\n"
  )
  return base


def _files(root):
  return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize(
  "case",
  ["out_is_base", "out_holds_csv", "records_dir_is_out", "records_dir_is_base"],
)
def test_output_over_an_input_is_refused(pool, tmp_path, case):
  csv_flag = f"--csv={pool / 'pairs.csv'}"
  out = tmp_path / "built"
  flags = {
    "out_is_base": [f"--out_dir={pool}/."],
    "out_holds_csv": [f"--out_dir={tmp_path}"],
    "records_dir_is_out": [f"--out_dir={out}", f"--records_dir={out}/"],
    "records_dir_is_base": [f"--out_dir={out}", f"--records_dir={pool}"],
  }[case]
  before = _files(tmp_path)
  result = run_refvie(csv_flag, f"--base_dir={pool}", *flags)
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(PROG), result.stderr
  assert "Choose an" in lines[0]
  assert _files(tmp_path) == before


def test_records_input_inside_records_dir_is_refused(tmp_path):
  shards = tmp_path / "records"
  shards.mkdir()
  (shards / "pool-00000-of-00001.array_record").write_bytes(b"")
  result = run_refvie(
    f"--records={shards}",
    f"--out_dir={tmp_path / 'o'}",
    f"--records_dir={shards}",
  )
  assert result.returncode == 2, result.stderr
  assert "--records" in result.stderr and "Choose an" in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1
  assert not (tmp_path / "o").exists()


def test_missing_csv_is_one_line(tmp_path):
  result = run_refvie(
    f"--csv={tmp_path / 'none.csv'}",
    f"--base_dir={tmp_path}",
    f"--out_dir={tmp_path / 'o'}",
  )
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip() == (
    f"{PROG}{tmp_path / 'none.csv'}: no such CSV file"
  )
  assert not (tmp_path / "o").exists()
