"""Benchmark evaluation: OpenVE-Bench and RefVIE-Bench.

* `benchmarks`: benchmark readers with the reference's output names.
* `runner`: runs any editor over a benchmark (resumable, sharded).
* `rubrics`, `rubric_texts`: the judge rubrics as data, reply parsers.
* `judges`, `gemini`: the judging loop, a Gemini HTTP client, a replay
  judge for offline use.
* `aggregate`: the reference's score aggregation and markdown tables.
* `metrics`: PSNR, SSIM and a temporal measure against ground truth.
* `commands`: the steps behind `eval.py judge | aggregate | metrics`.
* `errors`: the one-line failures of `eval.py` (bad input: exit 2;
  incomplete results: exit 1). Outputs that resolve to inputs are refused
  by `kiwi_jax.utils.paths`, as in every command that writes.

`eval.py` at the repository root is the command line.
"""
