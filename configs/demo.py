r"""The CPU demo: a tiny Kiwi-Edit through the three stages on RefVIE-mini.

  python train.py --config=configs/demo.py --workdir=runs/demo

Generates RefVIE-mini (32x32, 5 frames) into the workdir, trains a tiny
Kiwi-Edit (tiny Qwen2.5-VL with a local tokenizer, tiny DiT) through stages
1 -> 2 -> 3 (handoff through ``model_init``), edits held-out clips and
prints PSNR to the true target per edit type, for the model and for the
identity baseline. The latent codec is a fixed invertible pixel-unshuffle
stand-in for the Wan VAE (``kiwi_jax.training.latent_codec``).
``runlocal`` is the seconds-long smoke version.
"""

from configs import common


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, runlocal=False)
  config = common.parse_arg(None)
  config.task = "kiwi_demo"
  config.seed = 0
  config.total_steps = 0  # per stage: demo.stage_steps
  config.log_every = 25
  config.log_first_steps = 2
  config.demo = {
      "num_videos": 6 if arg.runlocal else 60,
      "num_images": 2 if arg.runlocal else 20,
      "num_heldout": 6 if arg.runlocal else 24,
      "height": 32, "width": 32, "num_frames": 5,
      "data_seed": 0, "heldout_seed": 1,
      "stage_steps": [2, 2, 2] if arg.runlocal else [60, 300, 240],
      "learning_rates": [1e-3, 1e-3, 1e-3],
      "sample_steps": 2 if arg.runlocal else 10,
  }
  config.kiwi = common.kiwi_block(
      variant="tiny", family="5b", stage=1, lora_rank=4, sources=[],
      tokenizer_dir="", max_pixels=32 * 32, fixed_size=(32, 32),
      codec="pixel_unshuffle", ref_tokens=0, seq_len=0, num_patches=0,
      batch_size=2)
  config.optimizer = common.optimizer(1e-3, 1)
  config.precision = {"master_dtype": "float32", "compute_dtype": None,
                      "frozen_dtype": None}
  config.checkpoint = {"every": 1000, "keep": 1, "async_save": False}
  config.mesh = common.mesh_config()
  config.sharding_rules = common.sharding_rules()
  config.resume = ""
  config.model_init = ""
  config.sample_every = 0
  config.profile = {"start_step": -1, "num_steps": 0}
  config.tensorboard = False
  return common.lock(config)


TEST_ARGS = ("", "runlocal")
