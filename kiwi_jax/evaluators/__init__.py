"""Benchmark evaluation: OpenVE-Bench and RefVIE-Bench.

* `benchmarks`: benchmark readers with the reference's output names.
* `runner`: runs any editor over a benchmark (resumable, sharded).
* `rubrics`, `rubric_texts`: the judge rubrics as data, reply parsers.
* `judges`, `gemini`: the judging loop, a Gemini HTTP client, a replay
  judge for offline use.
* `aggregate`: the reference's score aggregation and markdown tables.
* `metrics`: PSNR, SSIM and a temporal measure against ground truth.

`eval.py` at the repository root is the command line.
"""
