"""The two kinds of failure `eval.py` reports, each as one line.

* `InputError`: a mistake in what the user gave (a flag value, a file
  that is missing, unreadable or malformed). `eval.py` exits with 2.
* `IncompleteResultsError`: the inputs were fine but the evaluation did
  not produce complete results (a benchmark category without a single
  scored sample). `eval.py` exits with 1 unless `--allow_partial`.
"""


class InputError(ValueError):
  """Bad user input: names the flag or file at fault and how to fix it."""


class IncompleteResultsError(RuntimeError):
  """The results miss a whole category; says how to complete or accept."""
