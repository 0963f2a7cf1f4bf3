"""`eval.py --protocol`: files, tables and results JSON name the protocol;
replaying a run's replies reproduces it; bad flags are one-line errors."""

import json
import os
import pathlib
import shutil

import eval_fakes
import pytest

import eval as eval_cli
from kiwi_jax.evaluators import (
  benchmarks,
  commands,
  gemini,
  jsonl,
  judges,
  protocols,
  video_io,
)

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


@pytest.fixture
def bench(tmp_path):
  """The fixture CSV with tiny source videos; returns the common flags."""
  root = tmp_path / "bench"
  for i, name in enumerate("abcdef"):
    video_io.write_video(
      str(root / "v" / f"{name}.mp4"), eval_fakes.moving_clip(i, frames=2)
    )
  shutil.copy(FIXTURES / "openve_mini.csv", root / "bench.csv")
  return [
    "--bench",
    "openve",
    "--dataset_file",
    str(root / "bench.csv"),
    "--data_root",
    str(root),
    "--no_progress",
    "--save_dir",
    str(tmp_path / "out"),
  ], tmp_path / "out"


def test_both_protocols_end_to_end(bench, capsys):
  flags, out = bench
  run = [
    "run",
    *flags,
    "--editor",
    "eval_fakes:colour_shift_editor",
    "--no_side_by_side",
  ]
  assert eval_cli.main(run) == 0  # kiwi, the default: 5 rows, f skipped
  assert not (out / "f_edited.mp4").exists()
  assert eval_cli.main(run + ["--protocol", "official"]) == 0
  assert "1 edited, 5 already done" in capsys.readouterr().out

  figures = {
    "kiwi": ("openve_m_score", "| score | 2.83 | 4.00 | 1.67 |"),
    "official": (
      "openve-official_m_score",
      "| score | 3.19 | 4.04 | 1.67 | 3.00 |",
    ),
  }
  judged = {}
  for protocol, (stem, score_row) in figures.items():
    replies = str(FIXTURES / f"openve_replies_{protocol}.jsonl")
    judge = ["judge", *flags, "--model", "m", "--replies", replies]
    if protocol == "official":
      judge += ["--protocol", "official"]
    assert eval_cli.main(judge) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    records = jsonl.read(str(out / f"{stem}.jsonl"))
    assert records and all(r["protocol"] == protocol for r in records)
    table = (out / f"{stem}.md").read_text()
    assert table in printed and score_row in table
    assert f"protocol: {protocol}" in table.splitlines()[0]
    assert f"Protocol: {protocol} (" in table
    stats = judged[protocol] = json.loads(
      (out / f"{stem}_stats.json").read_text()
    )
    assert stats["protocol"] == protocol
    assert stats["scores_file"] == f"{stem}.jsonl"
    # aggregate, from the score file alone, knows its protocol (the
    # benchmark's other categories are missing from this small file).
    assert (
      eval_cli.main(
        [
          "aggregate",
          "--bench",
          "openve",
          "--scores",
          str(out / f"{stem}.jsonl"),
          "--allow_partial",
        ]
      )
      == 0
    )
    again = capsys.readouterr().out
    assert (
      f"protocol: {protocol}" in again and f"Protocol: {protocol} (" in again
    )
    assert (
      json.loads((out / f"{stem}_stats.json").read_text())["category_means"]
      == stats["category_means"]
    )
  kiwi = judged["kiwi"]
  assert kiwi["overall"] == pytest.approx(17 / 6)  # (4 + 5/3) / 2
  assert kiwi["category_means"] == pytest.approx(
    {"global_style": 4.0, "local_add": 5 / 3}
  )
  official = judged["official"]
  assert official["overall"] == 3.19  # (4.33 + 3.75 + 1.67 + 3.0) / 4
  assert official["out_of_range"] == {
    "global_style": 1,
    "local_add": 0,
    "subtitle_edit": 0,
  }

  # Aggregating a file under the other protocol is refused.
  code = eval_cli.main(
    [
      "aggregate",
      "--bench",
      "openve",
      "--protocol",
      "official",
      "--scores",
      str(out / "openve_m_score.jsonl"),
    ]
  )
  err = capsys.readouterr().err
  assert code == 2 and len(err.strip().splitlines()) == 1
  assert "scored under the kiwi protocol" in err


class LiveJudge:
  """Stands in for the Gemini judge; logs each reply it gives."""

  def __init__(self, script):
    self.script = {k: list(v) for k, v in script.items()}
    self.log, self.calls = [], []

  def upload(self, paths):
    return [os.path.basename(paths[-1])]

  def generate(self, system_instruction, media, user_text=None):
    self.calls.append((media[0], system_instruction, user_text))
    answer = self.script[media[0]].pop(0)
    if isinstance(answer, Exception):
      raise answer
    self.log.append({"output": media[0], "result": answer})
    return answer


@pytest.mark.parametrize("protocol", protocols.NAMES)
def test_replay_reproduces_a_live_run(tmp_path, monkeypatch, protocol):
  waits = []
  monkeypatch.setattr(judges, "_sleep", waits.append)
  skipped = protocols.get(protocol).skipped_types
  items = benchmarks.read_openve(
    str(FIXTURES / "openve_mini.csv"), "r/", skipped
  )
  recorded = {}
  for entry in jsonl.read(str(FIXTURES / f"openve_replies_{protocol}.jsonl")):
    recorded.setdefault(entry["output"], []).append(entry["result"])
  # A failed call first (the official scorer repeats it after 60 s), and
  # the last reply repeated as the replay judge does.
  script = {
    k: [RuntimeError("HTTP 503"), *v, v[-1], v[-1]] for k, v in recorded.items()
  }
  live = LiveJudge(script)
  files = {}
  for name, judge in (("live", live), ("replay", None)):
    save_dir = tmp_path / name
    save_dir.mkdir()
    for item in items:
      (save_dir / item.output_name).write_bytes(b"")
    if judge is None:
      log = tmp_path / "log.jsonl"
      jsonl.write_atomic(str(log), live.log)
      judge = judges.ReplayJudge.from_jsonl(str(log), str(save_dir), protocol)
    report = commands.judge_outputs(
      "openve",
      items,
      str(save_dir),
      judge,
      "m",
      workers=1,
      show_progress=False,
      protocol=protocol,
    )
    assert report.error is None
    files[name] = {
      p.name: p.read_bytes()
      for p in save_dir.iterdir()
      if not p.name.endswith(".mp4")
    }
  assert files["live"] == files["replay"] and len(files["live"]) == 3
  if protocol == "official":
    assert waits and set(waits) == {60.0}
    key, system, user = live.calls[0]
    assert system == "You are a helpful assistant."
    item = next(i for i in items if i.output_name == key)
    assert user == protocols.official_prompt(item.edit_type, item.instruction)
  else:
    assert not waits
    assert all(user is None for _, _, user in live.calls)


def test_gemini_request_under_the_official_protocol():
  sent = []

  class Reply:
    headers = {}

    def read(self):
      return json.dumps(
        {
          "candidates": [
            {"content": {"parts": [{"text": "Style Fidelity: 4"}]}}
          ]
        }
      ).encode()

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      return False

  def server(request, timeout):
    sent.append(json.loads(request.data))
    return Reply()

  client = gemini.GeminiJudge(
    "key",
    "gemini-2.5-pro",
    urlopen=server,
    generation_config=protocols.OFFICIAL_GENERATION_CONFIG,
  )
  media = [
    {"file_uri": "u1", "mime_type": "video/mp4"},
    {"file_uri": "u2", "mime_type": "video/mp4"},
  ]
  assert client.generate("SYSTEM", media, user_text="RUBRIC") == (
    "Style Fidelity: 4"
  )
  (body,) = sent
  assert body["system_instruction"] == {"parts": [{"text": "SYSTEM"}]}
  assert body["contents"][0]["parts"] == [
    {"text": "RUBRIC"},
    {"file_data": media[0]},
    {"file_data": media[1]},
  ]
  assert body["generationConfig"] == {
    "temperature": 0.7,
    "maxOutputTokens": 8192,
  }


@pytest.mark.parametrize(
  "extra, message",
  [
    (["--protocol", "paper"], "invalid choice: 'paper'"),
    (
      ["--bench", "refvie", "--protocol", "kiwi"],
      "--protocol applies to --bench openve only",
    ),
  ],
)
def test_bad_protocol_flags_are_one_line_errors(
  tmp_path, capsys, extra, message
):
  args = [
    "judge",
    "--bench",
    "openve",
    "--save_dir",
    str(tmp_path),
    "--replies",
    "r.jsonl",
    *extra,
  ]
  with pytest.raises(SystemExit) as exit_info:
    eval_cli.main(args)
  err = capsys.readouterr().err
  assert exit_info.value.code == 2
  assert len(err.strip().splitlines()) == 1 and message in err
  assert os.listdir(tmp_path) == []


def test_replies_of_the_other_protocol_are_refused(bench, capsys):
  flags, out = bench
  assert (
    eval_cli.main(
      [
        "run",
        *flags,
        "--no_side_by_side",
        "--editor",
        "eval_fakes:colour_shift_editor",
      ]
    )
    == 0
  )
  replies = out.parent / "partial.jsonl"
  jsonl.write_atomic(
    str(replies),
    [
      {
        "output": "a_edited.mp4",
        "result": "Style Fidelity: 4",
        "record": {"scores": [4.0], "protocol": "official"},
      }
    ],
  )
  code = eval_cli.main(
    ["judge", *flags, "--model", "m", "--replies", str(replies)]
  )
  err = capsys.readouterr().err
  assert code == 2 and len(err.strip().splitlines()) == 1
  assert "recorded under the official protocol" in err
  assert not [n for n in os.listdir(out) if "score" in n]


def test_help_names_the_protocols(capsys):
  for command in ("run", "judge", "aggregate"):
    with pytest.raises(SystemExit):
      eval_cli.main([command, "-h"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--protocol {official,kiwi}" in text
    assert "default:" in text and "OpenVE paper" in text
