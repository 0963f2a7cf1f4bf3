"""Judging: retries, drops, resume, record format; the Gemini client."""

import io
import json
import os
import urllib.error

import pytest

from kiwi_jax.evaluators import benchmarks, gemini, jsonl, judges

OPENVE_CSV = """original_video,prompt,edited_type
v/a.mp4,Make it watercolor,global_style
v/b.mp4,Zoom out,camera_edit
v/c.mp4,Remove the dog,local_remove
v/d.mp4,Add a hat,local_add
"""


def reply(ic, vq, cdf):
  return (
    f"Brief reasoning: ok.\nInstruction Compliance: {ic}\n"
    f"Consistency & Detail Fidelity: {cdf}\n"
    f"Visual Quality & Stability: {vq}\n"
  )


class ScriptedJudge:
  """Replies per output name, one entry per attempt; records every call."""

  def __init__(self, script, fail_upload=(), interrupt_on=()):
    self.script = {k: list(v) for k, v in script.items()}
    self.fail_upload = set(fail_upload)
    self.interrupt_on = set(interrupt_on)
    self.uploads, self.generates = [], []

  def upload(self, paths):
    key = os.path.basename(paths[-1])
    self.uploads.append(key)
    if key in self.fail_upload:
      raise FileNotFoundError(paths[-1])
    return [key]

  def generate(self, system_instruction, media):
    key = media[0]
    self.generates.append((key, system_instruction))
    if key in self.interrupt_on:
      raise KeyboardInterrupt("simulated interruption")
    answer = self.script[key].pop(0)
    if isinstance(answer, Exception):
      raise answer
    return answer


def _openve_tasks(tmp_path):
  path = tmp_path / "bench.csv"
  path.write_text(OPENVE_CSV)
  items = benchmarks.read_openve(str(path), "root/")
  return judges.openve_tasks(items, str(tmp_path / "out"))


def test_retry_rules_match_the_reference(tmp_path):
  tasks = {t.key: t for t in _openve_tasks(tmp_path)}
  judge = ScriptedJudge(
    {
      "a_edited.mp4": [
        "no scores here",
        RuntimeError("HTTP 503"),
        reply(4, 3, 2),
        reply(1, 1, 1),
      ],
      "c_edited.mp4": ["bad"] * 3 + [reply(5, 5, 5)],
    },
    fail_upload={"d_edited.mp4"},
  )
  scores, text = judges.judge_sample(judge, tasks["a_edited.mp4"])
  assert scores == [4, 3, 2] and text == reply(4, 3, 2)
  # Three attempts at most: the fourth (valid) reply is never asked for.
  assert judges.judge_sample(judge, tasks["c_edited.mp4"]) is None
  # A failed upload drops the sample without any generate call.
  assert judges.judge_sample(judge, tasks["d_edited.mp4"]) is None
  assert judge.uploads == ["a_edited.mp4", "c_edited.mp4", "d_edited.mp4"]
  assert [k for k, _ in judge.generates] == ["a_edited.mp4"] * 3 + [
    "c_edited.mp4"
  ] * 3


def test_openve_jsonl_records_and_order(tmp_path):
  tasks = _openve_tasks(tmp_path)
  assert [t.key for t in tasks] == [
    "a_edited.mp4",
    "c_edited.mp4",
    "d_edited.mp4",
  ]
  assert tasks[0].media == (
    "root/v/a.mp4",
    str(tmp_path / "out" / "a_edited.mp4"),
  )
  assert (
    "Editing instruction is: Remove the dog." in tasks[1].system_instruction
  )
  judge = ScriptedJudge(
    {
      "a_edited.mp4": [reply(4, 3, 2)],
      "c_edited.mp4": ["x", "y", "z"],
      "d_edited.mp4": [reply(2, 5, 1)],
    }
  )
  out = str(tmp_path / "out" / "openve_m_score.jsonl")
  summary = judges.judge_benchmark(
    judge, tasks, out, workers=3, show_progress=False
  )
  assert summary.scored == 2 and summary.dropped == ["c_edited.mp4"]
  lines = [json.loads(line) for line in open(out, encoding="utf-8")]
  # The reference's record: {scores [IC, VQ, CDF], prompt, edited_type,
  # result}; the failed sample is dropped; later > first kept as written.
  assert lines == [
    {
      "scores": [4, 3, 2],
      "prompt": "Make it watercolor",
      "edited_type": "global_style",
      "result": reply(4, 3, 2),
    },
    {
      "scores": [2, 5, 1],
      "prompt": "Add a hat",
      "edited_type": "local_add",
      "result": reply(2, 5, 1),
    },
  ]
  assert list(lines[0]) == ["scores", "prompt", "edited_type", "result"]
  assert not os.path.exists(out + ".partial")
  # An existing jsonl means done, as in the reference.
  again = ScriptedJudge({})
  assert (
    judges.judge_benchmark(again, tasks, out, workers=1, show_progress=False)
    is None
  )
  assert again.uploads == []


def test_judging_resumes_from_partial_results(tmp_path):
  tasks = _openve_tasks(tmp_path)
  out = str(tmp_path / "out" / "openve_m_score.jsonl")
  first = ScriptedJudge(
    {"a_edited.mp4": [reply(4, 3, 2)], "c_edited.mp4": [reply(3, 3, 3)]},
    interrupt_on={"d_edited.mp4"},
  )
  with pytest.raises(KeyboardInterrupt):
    judges.judge_benchmark(first, tasks, out, workers=1, show_progress=False)
  assert not os.path.exists(out)
  assert [e["output"] for e in jsonl.read(out + ".partial")] == [
    "a_edited.mp4",
    "c_edited.mp4",
  ]
  # A line cut short by the kill is tolerated.
  with open(out + ".partial", "a", encoding="utf-8") as f:
    f.write('{"output": "d_edi')
  second = ScriptedJudge({"d_edited.mp4": [reply(5, 4, 4)]})
  summary = judges.judge_benchmark(
    second, tasks, out, workers=2, show_progress=False
  )
  assert second.uploads == ["d_edited.mp4"]
  assert (summary.scored, summary.reused) == (1, 2)
  assert [r["scores"] for r in jsonl.read(out)] == [
    [4, 3, 2],
    [3, 3, 3],
    [5, 4, 4],
  ]


def test_refvie_tasks_and_records(tmp_path):
  path = tmp_path / "bench.yaml"
  path.write_text(
    "- {src_video: v/x.mp4, instruction: Swap the cup, ref_img: r/x.png, "
    "edit_type: subject}\n"
    "- {src_video: v/y.mp4, instruction: New sky, ref_img: r/y.png, "
    "edit_type: background}\n"
  )
  items = benchmarks.read_refvie(str(path), "root/")
  save_dir = str(tmp_path / "out")
  tasks = judges.refvie_tasks(items, save_dir)
  assert tasks[0].media == (
    "root/r/x.png",
    "root/v/x.mp4",
    os.path.join(save_dir, "0_Swap the c_x.mp4"),
  )
  assert "Identity Consistency & Compliance" in tasks[0].system_instruction
  assert "Matting Quality" in tasks[1].system_instruction
  judge = judges.ReplayJudge(
    {
      "0_Swap the c_x.mp4": "Identity Consistency & Compliance: 4\n"
      "Temporal Consistency & Texture Fidelity: 3\n"
      "Physical Integration & Tracking: 3",
      "1_New sky_y.mp4": "nothing",
    },
    save_dir,
  )
  out = os.path.join(save_dir, "refvie_m_score.jsonl")
  judges.judge_benchmark(judge, tasks, out, workers=2, show_progress=False)
  (record,) = jsonl.read(out)
  assert list(record) == ["scores", "result", "meta_info", "subtask"]
  assert record["scores"] == [4, 3, 3]
  assert record["subtask"] == "subject"
  assert record["meta_info"] == {
    "data": {
      "src_video": "v/x.mp4",
      "instruction": "Swap the cup",
      "ref_img": "r/x.png",
      "edit_type": "subject",
    },
    "output": os.path.join(save_dir, "0_Swap the c_x.mp4"),
    "subtask": "subject",
  }
  prompt_only = benchmarks.read_refvie(str(path), prompt_only=True)
  with pytest.raises(ValueError, match="prompt_only=False"):
    judges.refvie_tasks(prompt_only, save_dir)


KEY = "AIzaSy-test-key-0123456789"


class FakeResponse:
  def __init__(self, body=b"{}", headers=None):
    self._body = body
    self.headers = headers or {}

  def read(self):
    return self._body

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


class FakeGeminiServer:
  """Answers the Files API and generateContent like the real service."""

  def __init__(self, generate_parts):
    self.requests = []
    self.generate_parts = generate_parts
    self.polls = 0

  def __call__(self, request, timeout):
    self.requests.append(request)
    url = request.full_url
    if url.endswith("/upload/v1beta/files"):
      return FakeResponse(
        headers={"X-Goog-Upload-URL": "https://upload.test/session/1"}
      )
    if url.startswith("https://upload.test/"):
      name = f"files/f{len(self.requests)}"
      return FakeResponse(
        json.dumps(
          {
            "file": {
              "name": name,
              "uri": f"https://files.test/{name}",
              "mimeType": "video/mp4",
              "state": "PROCESSING",
            }
          }
        ).encode()
      )
    if "/v1beta/files/" in url:
      self.polls += 1
      name = url.split("/v1beta/")[1]
      return FakeResponse(
        json.dumps(
          {
            "name": name,
            "uri": f"https://files.test/{name}",
            "mimeType": "video/mp4",
            "state": "ACTIVE",
          }
        ).encode()
      )
    if url.endswith(":generateContent"):
      return FakeResponse(
        json.dumps(
          {"candidates": [{"content": {"parts": self.generate_parts}}]}
        ).encode()
      )
    raise AssertionError(f"unexpected URL {url}")


def test_gemini_client_requests(tmp_path):
  videos = []
  for name in ("src.mp4", "out.mp4"):
    path = tmp_path / name
    path.write_bytes(b"\x00video-bytes-" + name.encode())
    videos.append(str(path))
  server = FakeGeminiServer(
    [
      {"text": "thinking...", "thought": True},
      {"text": "Instruction Compliance: 4\n"},
      {"text": "Visual Quality & Stability: 3"},
    ]
  )
  client = gemini.GeminiJudge(
    KEY, "gemini-2.5-pro", urlopen=server, poll_interval_s=0
  )
  assert KEY not in repr(client)
  handles = client.upload(videos)
  assert server.polls == 2
  text = client.generate("RUBRIC TEXT", handles)
  assert text == "Instruction Compliance: 4\nVisual Quality & Stability: 3"
  start, upload = server.requests[0], server.requests[1]
  assert start.get_header("X-goog-upload-protocol") == "resumable"
  assert start.get_header("X-goog-upload-header-content-length") == str(
    os.path.getsize(videos[0])
  )
  assert upload.get_header("X-goog-upload-command") == "upload, finalize"
  assert upload.data == open(videos[0], "rb").read()
  call = server.requests[-1]
  assert call.full_url == (
    "https://generativelanguage.googleapis.com/"
    "v1beta/models/gemini-2.5-pro:generateContent"
  )
  body = json.loads(call.data)
  assert body["system_instruction"] == {"parts": [{"text": "RUBRIC TEXT"}]}
  assert body["contents"] == [
    {"role": "user", "parts": [{"file_data": h} for h in handles]}
  ]
  assert [
    p["file_data"]["mime_type"] for p in body["contents"][0]["parts"]
  ] == ["video/mp4", "video/mp4"]
  # The key travels in the header only.
  for request in server.requests:
    assert request.get_header("X-goog-api-key") == KEY
    assert KEY not in request.full_url
    assert KEY.encode() not in (request.data or b"")


def test_gemini_errors_never_show_the_key():
  def failing(request, timeout):
    raise urllib.error.HTTPError(
      request.full_url,
      400,
      "Bad Request",
      {},
      io.BytesIO(f"API key {KEY} not valid".encode()),
    )

  client = gemini.GeminiJudge(KEY, "m", urlopen=failing)
  with pytest.raises(gemini.GeminiError) as error:
    client.generate("x", [])
  assert KEY not in str(error.value) and "HTTP 400" in str(error.value)
  with pytest.raises(ValueError, match="API key is required"):
    gemini.GeminiJudge("", "m")
