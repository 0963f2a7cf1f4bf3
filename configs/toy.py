r"""Toy two-layer model trained on random regression data, sharded.

The smallest end-to-end check of the sharding core: builds the mesh from
config, creates the model straight into its shardings and trains it.

  python -m kiwi_jax.toy_train --config=configs/toy.py:mesh=fsdp --workdir=/tmp/toy
"""

from configs import common


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, mesh="data", steps=50, runlocal=False)
  config = common.parse_arg(None)
  config.seed = 0
  config.steps = 10 if arg.runlocal else arg.steps
  config.batch_size = 8
  config.learning_rate = 1e-2
  config.model = dict(dim=16, hidden=32, out=8)
  sizes = {"data": {}, "fsdp": {"data": 1, "fsdp": -1},
           "tensor": {"data": 2, "tensor": -1}}
  if arg.mesh not in sizes:
    raise ValueError(f"mesh={arg.mesh!r}; choose one of {sorted(sizes)}.")
  config.mesh = common.mesh_config(**sizes[arg.mesh])
  config.sharding_rules = common.sharding_rules()
  return common.lock(config)


# Every arg combination the configs test builds.
TEST_ARGS = ("", "mesh=fsdp", "mesh=tensor,runlocal", "steps=3")
