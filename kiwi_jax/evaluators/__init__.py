"""Benchmark evaluation: OpenVE-Bench and RefVIE-Bench.

* `benchmarks`: benchmark readers with the reference's output names.
* `runner`: runs any editor over a benchmark (resumable, sharded).
* `rubrics`, `rubric_texts`: the judge rubrics as data, reply parsers.
* `judges`, `gemini`: the judging loop, a Gemini HTTP client, a replay
  judge for offline use.
* `aggregate`: the reference's score aggregation and markdown tables.
* `protocols`, `openve_official_texts`: OpenVE-Bench's official scoring
  protocol (its prompts, reply scoring, sample-weighted aggregation) beside
  Kiwi's; docs/openve_protocols.md compares them.
* `metrics`: PSNR, SSIM and a temporal measure against ground truth.
* `edit_success`: did an output make the edit and only the edit, where the
  edited region and the target are known (RefVIE-mini); rates per type.
* `commands`: the steps behind `eval.py judge | aggregate | metrics`.
* `errors`: the one-line failures of `eval.py` (bad input: exit 2;
  incomplete results: exit 1). Outputs that resolve to inputs are refused
  by `kiwi_jax.utils.paths`, as in every command that writes.

`eval.py` at the repository root is the command line: `cli` (`main`,
also `kiwi-eval`) joins `cli_flags` (the parser and flag checks) and
`cli_subcommands` (what each subcommand does).
"""
