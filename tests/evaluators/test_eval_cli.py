"""eval.py end to end on a RefVIE-mini benchmark, and the network guard."""

import http.client
import importlib.util
import os
import socket
import urllib.error
import urllib.request

import eval_fakes
import pytest

import eval as eval_cli
from kiwi_jax.evaluators import jsonl


@pytest.fixture
def no_network(monkeypatch):
  """Records (and blocks) every attempt to open a connection."""
  attempts = []

  def blocked(name):
    def fail(*args, **kwargs):
      attempts.append(name)
      raise AssertionError(f"network call via {name}")

    return fail

  monkeypatch.setattr(socket.socket, "connect", blocked("socket.connect"))
  monkeypatch.setattr(
    socket, "create_connection", blocked("socket.create_connection")
  )
  monkeypatch.setattr(socket, "getaddrinfo", blocked("socket.getaddrinfo"))
  monkeypatch.setattr(urllib.request, "urlopen", blocked("urlopen"))
  monkeypatch.setattr(
    urllib.request.OpenerDirector, "open", blocked("OpenerDirector.open")
  )
  monkeypatch.setattr(
    http.client.HTTPConnection, "connect", blocked("HTTPConnection.connect")
  )
  return attempts


@pytest.fixture
def mini(tmp_path):
  root = tmp_path / "bench"
  yaml_path = eval_fakes.make_refvie_mini(str(root), count=4)
  return [
    "--bench",
    "refvie",
    "--dataset_file",
    yaml_path,
    "--data_root",
    str(root),
    "--no_progress",
  ]


SUBJECT = (
  "Identity Consistency & Compliance: {}\n"
  "Temporal Consistency & Texture Fidelity: {}\n"
  "Physical Integration & Tracking: {}\n"
)
BACKGROUND = (
  "Reference Fidelity & Preservation: {}\n"
  "Matting Quality & Temporal Stability: {}\n"
  "Visual Harmony & Perspective: {}\n"
)


def test_run_metrics_judge_aggregate_offline(
  tmp_path, mini, no_network, monkeypatch, capsys
):
  monkeypatch.delenv("GEMINI_API_KEY", raising=False)
  out = str(tmp_path / "out")
  run = (
    ["run"]
    + mini
    + [
      "--save_dir",
      out,
      "--editor",
      "eval_fakes:colour_shift_editor",
      "--process_count",
      "2",
    ]
  )
  assert eval_cli.main(run + ["--process_index", "1"]) == 0
  assert eval_cli.main(run + ["--process_index", "0"]) == 0
  assert "edited" in capsys.readouterr().out
  names = [
    "0_Replace it_src_0.mp4",
    "1_Replace it_src_1.mp4",
    "2_Replace it_src_2.mp4",
    "3_Replace it_src_3.mp4",
  ]
  assert all(os.path.exists(os.path.join(out, n)) for n in names)
  # A rerun edits nothing.
  assert eval_cli.main(run + ["--process_index", "0"]) == 0
  assert "0 edited, 2 already done" in capsys.readouterr().out

  # Targets are colour_shift(source): the output matches up to coding loss.
  assert eval_cli.main(["metrics"] + mini + ["--save_dir", out]) == 0
  table = capsys.readouterr().out
  assert "| subject | 2 |" in table and "| background | 2 |" in table
  clips = jsonl.read(os.path.join(out, "metrics.jsonl"))
  assert len(clips) == 4
  for clip in clips:
    assert clip["psnr"] > 30 and clip["ssim"] > 0.9
    assert clip["temporal_difference_error"] < 0.02
  assert os.path.exists(os.path.join(out, "metrics.md"))

  # Offline judging from recorded replies, no network, no key.
  replies = tmp_path / "replies.jsonl"
  jsonl.write_atomic(
    str(replies),
    [
      {"output": names[0], "result": SUBJECT.format(4, 3, 3)},
      {"output": names[1], "result": BACKGROUND.format(3, 2, 2)},
      {"output": names[2], "result": SUBJECT.format(2, 2, 1)},
      {"output": names[3], "result": "unparsable"},
    ],
  )
  assert (
    eval_cli.main(
      ["judge"]
      + mini
      + [
        "--save_dir",
        out,
        "--judge",
        "replay",
        "--replies",
        str(replies),
        "--model",
        "gemini-3-flash-preview",
      ]
    )
    == 0
  )
  scores = os.path.join(out, "refvie_gemini-3-flash-preview_score.jsonl")
  assert [r["scores"] for r in jsonl.read(scores)] == [
    [4, 3, 3],
    [3, 2, 2],
    [2, 2, 1],
  ]
  assert (
    eval_cli.main(["aggregate", "--bench", "refvie", "--scores", scores]) == 0
  )
  table = capsys.readouterr().out
  # Subject: (4+2)/2, (3+2)/2, (3+1)/2; background 3, 2, 2; the sample
  # weighted overall is 22/9, the mean of criterion means 15.5/6.
  assert (
    "| score | 3.00 | 2.50 | 2.00 | 2.50 | 3.00 | 2.00 | 2.00 | 2.33 |"
    " 2.42 | 2.44 |" in table
  )
  assert no_network == []


def test_no_network_call_without_api_key(
  tmp_path, mini, no_network, monkeypatch, capsys
):
  monkeypatch.delenv("GEMINI_API_KEY", raising=False)
  out = str(tmp_path / "out")
  assert (
    eval_cli.main(
      ["run"]
      + mini
      + ["--save_dir", out, "--editor", "eval_fakes:colour_shift_editor"]
    )
    == 0
  )
  code = eval_cli.main(["judge"] + mini + ["--save_dir", out])
  assert code == 1
  assert "needs an API key in $GEMINI_API_KEY" in capsys.readouterr().err
  assert no_network == []
  assert not [n for n in os.listdir(out) if "score" in n]
  # The guard itself works: a real attempt would have been caught.
  with pytest.raises(AssertionError):
    urllib.request.urlopen("https://generativelanguage.googleapis.com")
  assert no_network == ["urlopen"]


def test_api_key_is_never_written_or_logged(
  tmp_path, mini, monkeypatch, capsys, caplog
):
  key = "AIza-secret-key-for-test"
  monkeypatch.setenv("GEMINI_API_KEY", key)
  out = str(tmp_path / "out")
  assert (
    eval_cli.main(
      ["run"]
      + mini
      + [
        "--save_dir",
        out,
        "--editor",
        "eval_fakes:colour_shift_editor",
        "--no_side_by_side",
      ]
    )
    == 0
  )
  requests = []

  def server(request, timeout):
    requests.append(request)
    raise urllib.error.URLError(f"unreachable (key={key})")

  monkeypatch.setattr(urllib.request, "urlopen", server)
  # Every upload fails, so every sample is dropped and nothing aggregates.
  assert eval_cli.main(["judge"] + mini + ["--save_dir", out]) == 1
  assert requests and all(
    r.get_header("X-goog-api-key") == key for r in requests
  )
  captured = capsys.readouterr()
  logged = captured.out + captured.err + caplog.text
  assert "upload failed" in logged and "<API key>" in logged
  assert key not in logged
  for name in os.listdir(out):
    path = os.path.join(out, name)
    if os.path.isfile(path) and not name.endswith(".mp4"):
      assert key not in open(path, encoding="utf-8").read()


def test_run_without_pipeline_is_a_clear_error(
  tmp_path, mini, monkeypatch, capsys
):
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(
    importlib.util,
    "find_spec",
    lambda name, *a: (
      None if name == "kiwi_jax.pipeline" else real_find_spec(name, *a)
    ),
  )
  code = eval_cli.main(
    ["run"]
    + mini
    + ["--save_dir", str(tmp_path / "o"), "--checkpoint_dir", str(tmp_path)]
  )
  assert code == 1
  err = capsys.readouterr().err
  assert "needs the edit pipeline (kiwi_jax.pipeline)" in err
  assert "--editor module:factory" in err
