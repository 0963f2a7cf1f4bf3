"""``python eval.py {run,judge,aggregate,metrics}``: benchmark evaluation.

A thin entry point kept at the top of the repository; the command is
``kiwi_jax.evaluators.cli`` (also installed as ``kiwi-eval``).
"""

from kiwi_jax.evaluators.cli import load_editor, main

__all__ = ["load_editor", "main"]

if __name__ == "__main__":
  raise SystemExit(main())
