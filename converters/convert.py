"""``python -m converters.convert``: the converter command line.

A thin entry point kept at the top of the repository; the code is
``kiwi_jax.converters.cli`` (also installed as ``kiwi-convert``).
"""

from kiwi_jax.converters.cli import main

if __name__ == "__main__":
  raise SystemExit(main())
