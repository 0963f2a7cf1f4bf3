"""eval.py on incomplete replies, bad files and outputs that are inputs.

The judging checks go through the real command line (`python -m eval` in
a subprocess) on a 3-item RefVIE-mini benchmark with recorded replies.
"""

import json
import os
import pathlib
import subprocess
import sys

import eval_fakes
import pytest

import eval as eval_cli

REPO = pathlib.Path(__file__).resolve().parents[2]
SUBJECT = (
  "Identity Consistency & Compliance: {}\n"
  "Temporal Consistency & Texture Fidelity: {}\n"
  "Physical Integration & Tracking: {}\n"
)
NAMES = [
  "0_Replace it_src_0.mp4",
  "1_Replace it_src_1.mp4",
  "2_Replace it_src_2.mp4",
]
MODEL = "m"


def eval_py(*args, cwd, umask=None):
  """`python -m eval ARGS`; with `umask`, the child runs under that umask."""
  env = dict(
    os.environ,
    HF_HUB_OFFLINE="1",
    PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests" / "evaluators")]),
  )
  previous = os.umask(umask) if umask is not None else None
  try:
    return subprocess.run(
      [sys.executable, "-m", "eval", *args],
      cwd=cwd,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
    )
  finally:
    if previous is not None:
      os.umask(previous)


@pytest.fixture
def bench(tmp_path):
  """Three items (subject, background, subject) and their edited videos."""
  yaml_path = eval_fakes.make_refvie_mini(str(tmp_path / "bench"), count=3)
  flags = [
    "--bench",
    "refvie",
    "--dataset_file",
    yaml_path,
    "--data_root",
    str(tmp_path / "bench"),
    "--no_progress",
  ]
  out = tmp_path / "out"
  assert (
    eval_cli.main(
      [
        "run",
        *flags,
        "--save_dir",
        str(out),
        "--editor",
        "eval_fakes:colour_shift_editor",
        "--no_side_by_side",
      ]
    )
    == 0
  )
  return flags + ["--save_dir", str(out)], out, flags


def write_replies(path, lines):
  path.write_text(
    "".join(
      line if isinstance(line, str) else json.dumps(line) + "\n"
      for line in lines
    ),
    encoding="utf-8",
  )
  return str(path)


def test_partial_replies_are_counted_named_and_refused(tmp_path, bench):
  flags, out, _ = bench
  replies = write_replies(
    tmp_path / "replies.jsonl",
    [
      {"output": NAMES[0], "result": SUBJECT.format(4, 3, 3)},
      {"output": NAMES[0], "result": SUBJECT.format(1, 1, 1)},
      {"output": "unknown.mp4", "result": SUBJECT.format(5, 5, 5)},
      {"output": NAMES[2], "result": "no scores here"},
      '{"output": "cut short\n',
    ],
  )
  judge = [
    "judge",
    *flags,
    "--judge",
    "replay",
    "--replies",
    replies,
    "--model",
    MODEL,
  ]
  done = eval_py(*judge, cwd=tmp_path)
  assert done.returncode == 1, done.stderr
  assert (
    "Scored 1 of 3 items: subject 1 of 2, background 0 of 1." in done.stdout
  )
  # The empty category has no mean, and there is no overall from one item.
  assert (
    "| score | 4.00 | 3.00 | 3.00 | 3.33 | n/a | n/a | n/a | n/a | "
    "n/a | n/a |" in done.stdout
  )
  assert "Background mean (n=0)" in done.stdout
  assert f"{NAMES[1]}: missing reply" in done.stdout
  assert "upload failed" not in done.stdout + done.stderr
  assert f"{NAMES[2]}: no valid scores in 3 attempts" in done.stdout
  assert f"replies.jsonl:2 ({NAMES[0]}): duplicate" in done.stdout
  assert "replies.jsonl:3 (unknown.mp4): no such output" in done.stdout
  assert f"replies.jsonl:4 ({NAMES[2]}): unparsable" in done.stdout
  assert "replies.jsonl:5: not valid JSON" in done.stdout
  errors = [
    line
    for line in done.stderr.splitlines()
    if not line.startswith(("INFO", "WARNING"))
  ]
  assert len(errors) == 1 and errors[0].startswith("eval.py judge: error: ")
  assert "no scored sample in background" in errors[0]
  assert "--allow_partial" in errors[0]
  # Nothing incomplete is saved as a result; the scored sample is kept.
  score = out / f"refvie_{MODEL}_score.jsonl"
  assert not score.exists() and not score.with_suffix(".md").exists()
  assert os.path.exists(str(score) + ".partial")

  accepted = eval_py(*judge, "--allow_partial", cwd=tmp_path)
  assert accepted.returncode == 0, accepted.stderr
  assert "Scored 1 of 3 items" in accepted.stdout
  assert [json.loads(line)["scores"] for line in open(score)] == [[4, 3, 3]]
  assert "Background mean (n=0) |" in score.with_suffix(".md").read_text()


def test_aggregate_with_an_empty_category_needs_allow_partial(tmp_path):
  scores = tmp_path / "refvie_m_score.jsonl"
  write_replies(scores, [{"scores": [4, 3, 3], "subtask": "subject"}])
  refused = eval_py(
    "aggregate", "--bench", "refvie", "--scores", str(scores), cwd=tmp_path
  )
  assert refused.returncode == 1
  assert "Scored samples: subject 1, background 0." in refused.stdout
  assert "Background mean (n=0)" in refused.stdout
  assert "| 3.33 | n/a | n/a | n/a | n/a | n/a | n/a |" in refused.stdout
  assert not scores.with_suffix(".md").exists()
  assert refused.stderr.count("\n") == 1 and "--allow_partial" in refused.stderr
  accepted = eval_py(
    "aggregate",
    "--bench",
    "refvie",
    "--scores",
    str(scores),
    "--allow_partial",
    cwd=tmp_path,
  )
  assert accepted.returncode == 0 and scores.with_suffix(".md").exists()


def test_non_utf8_reply_file_is_one_line_naming_it(tmp_path, bench):
  flags, _, _ = bench
  replies = tmp_path / "latin1.jsonl"
  replies.write_bytes(b'{"output": "x.mp4", "result": "caf\xe9"}\n')
  done = eval_py(
    "judge",
    *flags,
    "--judge",
    "replay",
    "--replies",
    str(replies),
    cwd=tmp_path,
  )
  assert done.returncode == 2
  assert "Traceback" not in done.stderr
  (line,) = done.stderr.splitlines()
  assert line.startswith("eval.py judge: error: ")
  assert f"{replies}:1: not UTF-8" in line


def test_outputs_that_are_inputs_are_refused(tmp_path, bench):
  flags, out, _ = bench
  partial = out / f"refvie_{MODEL}_score.jsonl.partial"
  replies = [{"output": n, "result": SUBJECT.format(3, 3, 3)} for n in NAMES]
  write_replies(partial, replies)
  before = partial.read_bytes()
  # The run's own partial file, through ./ and through a hard link.
  os.link(partial, tmp_path / "linked.jsonl")
  for given in (f"./out/../out/{partial.name}", "linked.jsonl"):
    done = eval_py(
      "judge",
      *flags,
      "--judge",
      "replay",
      "--replies",
      given,
      "--model",
      MODEL,
      cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert "is the same file as --replies" in line
  assert partial.read_bytes() == before
  assert not (out / f"refvie_{MODEL}_score.jsonl").exists()
  # aggregate writes <stem>.md: an .md score file would be overwritten.
  table = tmp_path / "scores.md"
  table.write_text('{"scores": [4, 3, 3], "subtask": "subject"}\n')
  done = eval_py(
    "aggregate",
    "--bench",
    "refvie",
    "--scores",
    str(table),
    "--allow_partial",
    cwd=tmp_path,
  )
  assert done.returncode == 2 and "same file as --scores" in done.stderr
  assert table.read_text().startswith('{"scores"')


def test_outputs_get_the_umask_modes(tmp_path, bench):
  _, _, flags = bench
  replies = write_replies(
    tmp_path / "replies.jsonl",
    [{"output": n, "result": SUBJECT.format(3, 2, 2)} for n in NAMES],
  )
  fresh = ["--save_dir", str(tmp_path / "fresh")]
  steps = [
    ["run", *flags, *fresh, "--editor", "eval_fakes:colour_shift_editor"],
    ["metrics", *flags, *fresh],
    [
      "judge",
      *flags,
      *fresh,
      "--judge",
      "replay",
      "--replies",
      replies,
      "--model",
      MODEL,
    ],
    [
      "aggregate",
      "--bench",
      "refvie",
      "--scores",
      str(tmp_path / "fresh" / f"refvie_{MODEL}_score.jsonl"),
    ],
  ]
  for step in steps:
    done = eval_py(*step, cwd=tmp_path, umask=0o022)
    assert done.returncode == 0, done.stderr
  written = sorted(os.listdir(tmp_path / "fresh"))
  assert f"refvie_{MODEL}_score.md" in written and "metrics.md" in written
  assert "concat_" + NAMES[0] in written
  assert oct(os.stat(tmp_path / "fresh").st_mode & 0o777) == "0o755"
  modes = {
    name: oct(os.stat(tmp_path / "fresh" / name).st_mode & 0o777)
    for name in written
  }
  assert modes == dict.fromkeys(written, "0o644")


@pytest.mark.parametrize(
  "extra, message",
  [
    (["judge", "--workers", "0"], "argument --workers: 0 is below 1"),
    (["judge", "--judge", "replay"], "--judge replay needs --replies"),
    (["judge", "--model", "a/b"], "argument --model"),
    (["run", "--max_frames", "ten"], "'ten' is not an integer"),
    (["run", "--editor", "eval_fakes"], "expected module:factory"),
    (
      ["run", "--editor", "no_such_module_x:f"],
      "cannot import no_such_module_x",
    ),
    (
      [
        "run",
        "--editor",
        "eval_fakes:x",
        "--process_index",
        "2",
        "--process_count",
        "2",
      ],
      "must be below --process_count 2",
    ),
    (
      ["run", "--editor", "eval_fakes:x", "--data_root", "/nonexistent"],
      "6 source videos or reference images missing",
    ),
  ],
)
def test_bad_option_values_are_one_line_exit_2(bench, extra, message, capsys):
  flags, _, _ = bench
  command, *rest = extra
  try:
    code = eval_cli.main([command, *flags, *rest])
  except SystemExit as e:
    code = e.code
  assert code == 2
  err = capsys.readouterr().err
  lines = [line for line in err.splitlines() if not line.startswith("INFO")]
  assert len(lines) == 1 and message in lines[0], err
  assert lines[0].startswith(f"eval.py {command}: error: ")


def test_bad_benchmark_files_are_one_line_exit_2(tmp_path, capsys):
  broken = tmp_path / "broken.yaml"
  broken.write_text("- {src_video: a.mp4, instruction: [unclosed\n")
  csv_file = tmp_path / "bench.csv"
  csv_file.write_bytes(
    b"original_video,prompt,edited_type\nv.mp4,caf\xe9,local_add\n"
  )
  for bench, path, message in (
    ("refvie", broken, "cannot parse the refvie benchmark file"),
    ("openve", csv_file, "not UTF-8"),
    ("refvie", tmp_path / "missing.yaml", "no such file"),
  ):
    code = eval_cli.main(
      [
        "metrics",
        "--bench",
        bench,
        "--dataset_file",
        str(path),
        "--save_dir",
        str(tmp_path / "o"),
      ]
    )
    assert code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert str(path) in line and message in line, line
