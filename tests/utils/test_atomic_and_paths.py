"""The shared output mechanisms: umask modes and the input-as-output guard."""

import os
import stat

import pytest

from kiwi_jax.utils import atomic, paths


@pytest.fixture
def umask_022():
  old = os.umask(0o022)
  yield
  os.umask(old)


def _mode(p):
  return stat.S_IMODE(os.stat(p).st_mode)


def test_atomic_file_gets_the_umask_mode(tmp_path, umask_022):
  out = atomic.write_text(tmp_path / "a.txt", "x")
  plain = tmp_path / "plain.txt"
  plain.write_text("x")
  assert _mode(out) == _mode(plain) == 0o644


def test_atomic_directory_gets_the_umask_modes(tmp_path, umask_022):
  with atomic.atomic_directory(tmp_path / "out") as tmp:
    (tmp / "sub").mkdir()
    atomic.write_text(tmp / "sub" / "f.json", "{}")
  assert _mode(tmp_path / "out") == 0o755
  assert _mode(tmp_path / "out" / "sub") == 0o755
  assert _mode(tmp_path / "out" / "sub" / "f.json") == 0o644


def test_atomic_directory_replaces_whole_or_refuses(tmp_path):
  with atomic.atomic_directory(tmp_path / "out") as tmp:
    (tmp / "old").write_text("1")
  with pytest.raises(FileExistsError):
    with atomic.atomic_directory(tmp_path / "out") as tmp:
      pass
  with atomic.atomic_directory(tmp_path / "out", overwrite=True) as tmp:
    (tmp / "new").write_text("2")
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["new"]
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_failed_atomic_write_leaves_nothing(tmp_path):
  with pytest.raises(RuntimeError):
    with atomic.atomic_path(tmp_path / "a.bin") as tmp:
      tmp.write_bytes(b"half")
      raise RuntimeError("boom")
  assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("how", ["same", "dot", "symlink", "hardlink"])
def test_output_that_is_an_input_is_refused(tmp_path, how, monkeypatch):
  src = tmp_path / "v.mp4"
  src.write_bytes(b"video")
  monkeypatch.chdir(tmp_path)
  out = {"same": src, "dot": "./v.mp4"}.get(how)
  if how == "symlink":
    out = tmp_path / "link.mp4"
    out.symlink_to(src)
  if how == "hardlink":
    out = tmp_path / "hard.mp4"
    os.link(src, out)
  with pytest.raises(paths.OutputIsInputError, match="--out .* --video"):
    paths.refuse_inputs_as_outputs([("--out", out)], [("--video", src)])


def test_output_folder_holding_an_input_is_refused(tmp_path):
  csv = tmp_path / "records" / "rows.csv"
  csv.parent.mkdir()
  csv.write_text("a\n")
  with pytest.raises(paths.OutputIsInputError, match="inside the output"):
    paths.refuse_inputs_as_outputs(
      [("--out_dir", tmp_path / "records")],
      [("--csv", csv)],
      folders=["--out_dir"],
    )
  # A distinct new path passes.
  paths.refuse_inputs_as_outputs(
    [("--out", tmp_path / "new.mp4")], [("--video", csv), ("--ref", None)]
  )
