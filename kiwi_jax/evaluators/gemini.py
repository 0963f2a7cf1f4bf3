"""A Gemini API judge over plain HTTP (standard library only).

It does what the reference scorers do through the `google-genai` SDK:
upload each media file with the Files API (resumable protocol: a `start`
request, then one `upload, finalize` request with the bytes), wait while a
file is `PROCESSING`, then call `models/<model>:generateContent` with the
filled rubric as the system instruction and the files as the user content.

The API key is only ever sent in the `x-goog-api-key` request header. It is
not put in URLs, not kept in `repr`, and scrubbed from every error message
this module raises, so logs of failed calls never show it. Without a key
no client can be built (`GeminiJudge` raises before any network call).
"""

import json
import mimetypes
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
API_KEY_ENV = "GEMINI_API_KEY"  # the variable the reference scorers read
OPENVE_MODEL = "gemini-2.5-pro"  # `eval_openve_gemini.py` default
REFVIE_MODEL = "gemini-3-flash-preview"  # `eval_refvie_gemini.py` default


class GeminiError(RuntimeError):
  """A failed Gemini API call (message scrubbed of the API key)."""


class GeminiJudge:
  """`judges.Judge` backed by the Gemini REST API."""

  def __init__(
    self,
    api_key: str,
    model: str,
    *,
    base_url: str = DEFAULT_BASE_URL,
    timeout_s: float = 600.0,
    poll_interval_s: float = 2.0,
    max_processing_s: float = 1800.0,
    generation_config: dict[str, Any] | None = None,
    urlopen: Callable[..., Any] | None = None,
  ):
    """Builds a client; makes no network call.

    Args:
      api_key: the Gemini API key (required, non-empty).
      model: model id, e.g. 'gemini-2.5-pro'.
      base_url: API root (change it for a compatible proxy).
      timeout_s: per-request socket timeout.
      poll_interval_s: wait between file-state checks (the reference: 2 s).
      max_processing_s: give up on a file still PROCESSING after this long
        (the reference waits forever).
      generation_config: the request's `generationConfig` (None: the API's
        defaults, as Kiwi's scorer; the official OpenVE protocol sets the
        temperature and the output length).
      urlopen: replaces `urllib.request.urlopen` (tests).
    """
    if not api_key:
      raise ValueError(
        f"a Gemini API key is required (set {API_KEY_ENV}); "
        "no judge call was made"
      )
    self._api_key = api_key
    self.model = model
    self.base_url = base_url.rstrip("/")
    self.timeout_s = timeout_s
    self.poll_interval_s = poll_interval_s
    self.max_processing_s = max_processing_s
    self.generation_config = dict(generation_config or {})
    self._urlopen = urlopen or urllib.request.urlopen

  def __repr__(self) -> str:
    return f"GeminiJudge(model={self.model!r}, base_url={self.base_url!r})"

  def _scrub(self, text: str) -> str:
    return text.replace(self._api_key, "<API key>")

  def _request(
    self,
    url: str,
    *,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    method: str = "GET",
  ) -> tuple[dict[str, str], bytes]:
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("x-goog-api-key", self._api_key)
    for name, value in (headers or {}).items():
      request.add_header(name, value)
    try:
      with self._urlopen(request, timeout=self.timeout_s) as response:
        return dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as e:
      body = e.read()[:500].decode("utf-8", "replace")
      raise GeminiError(
        self._scrub(f"{method} {url.split('?')[0]}: HTTP {e.code}: {body}")
      ) from None
    except (urllib.error.URLError, OSError) as e:
      raise GeminiError(
        self._scrub(f"{method} {url.split('?')[0]}: {e}")
      ) from None

  def _json(self, url: str, **kwargs) -> dict[str, Any]:
    _, body = self._request(url, **kwargs)
    try:
      return json.loads(body)
    except json.JSONDecodeError:
      raise GeminiError(
        self._scrub(f"{url.split('?')[0]}: reply is not JSON: {body[:200]!r}")
      ) from None

  def _upload_one(self, path: str) -> dict[str, str]:
    with open(path, "rb") as f:
      payload = f.read()
    mime_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    headers, _ = self._request(
      f"{self.base_url}/upload/v1beta/files",
      method="POST",
      data=json.dumps(
        {"file": {"display_name": os.path.basename(path)}}
      ).encode(),
      headers={
        "X-Goog-Upload-Protocol": "resumable",
        "X-Goog-Upload-Command": "start",
        "X-Goog-Upload-Header-Content-Length": str(len(payload)),
        "X-Goog-Upload-Header-Content-Type": mime_type,
        "Content-Type": "application/json",
      },
    )
    upload_url = {k.lower(): v for k, v in headers.items()}.get(
      "x-goog-upload-url"
    )
    if not upload_url:
      raise GeminiError(f"{path}: upload start returned no upload URL")
    file_info = self._json(
      upload_url,
      method="POST",
      data=payload,
      headers={
        "X-Goog-Upload-Command": "upload, finalize",
        "X-Goog-Upload-Offset": "0",
        "Content-Length": str(len(payload)),
      },
    ).get("file", {})
    deadline = time.monotonic() + self.max_processing_s
    while file_info.get("state") == "PROCESSING":
      if time.monotonic() > deadline:
        raise GeminiError(
          f"{path}: still PROCESSING after {self.max_processing_s} s"
        )
      time.sleep(self.poll_interval_s)
      file_info = self._json(f"{self.base_url}/v1beta/{file_info['name']}")
    if file_info.get("state") == "FAILED" or "uri" not in file_info:
      raise GeminiError(f"{path}: upload failed: {file_info!r:.300}")
    return {
      "file_uri": file_info["uri"],
      "mime_type": file_info.get("mimeType", mime_type),
    }

  def upload(self, paths: Sequence[str]) -> Sequence[dict[str, str]]:
    """Uploads the files and waits until each is ACTIVE."""
    return [self._upload_one(path) for path in paths]

  def generate(
    self,
    system_instruction: str,
    media: Sequence[dict[str, str]],
    user_text: str | None = None,
  ) -> str:
    """One `generateContent` call; returns the reply's text parts joined.

    `user_text`, when given, is the user turn's first part, before the
    media.
    """
    parts = [{"text": user_text}] if user_text is not None else []
    parts += [{"file_data": dict(m)} for m in media]
    body = {
      "system_instruction": {"parts": [{"text": system_instruction}]},
      "contents": [{"role": "user", "parts": parts}],
    }
    if self.generation_config:
      body["generationConfig"] = dict(self.generation_config)
    reply = self._json(
      f"{self.base_url}/v1beta/models/{self.model}:generateContent",
      method="POST",
      data=json.dumps(body).encode(),
      headers={"Content-Type": "application/json"},
    )
    candidates = reply.get("candidates") or []
    if not candidates:
      raise GeminiError(f"no candidates in reply: {reply!r:.300}")
    parts = candidates[0].get("content", {}).get("parts", [])
    # As the SDK's `response.text`: text parts, thought parts left out.
    texts = [p["text"] for p in parts if "text" in p and not p.get("thought")]
    if not texts:
      raise GeminiError(f"reply has no text: {reply!r:.300}")
    return "".join(texts)
