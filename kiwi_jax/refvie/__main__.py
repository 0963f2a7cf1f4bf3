"""`python -m kiwi_jax.refvie`: see `kiwi_jax.refvie.cli`."""

import sys

from kiwi_jax.refvie import cli

if __name__ == "__main__":
  sys.exit(cli.main())
