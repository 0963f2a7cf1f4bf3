r"""The CPU demo: a tiny Kiwi-Edit through the three stages on RefVIE-mini.

  python train.py --config=configs/demo.py --workdir=runs/demo

Generates RefVIE-mini (32x32, 5 frames, "simple" scenes: one-colour
backgrounds, objects off the borders, added objects beside a named one)
into the workdir, trains a tiny Kiwi-Edit (tiny Qwen2.5-VL with a local
tokenizer in which every instruction word is one token, tiny DiT) through
stages 1 -> 2 -> 3 (handoff through ``model_init``), edits 48 held-out
clips and prints, per edit type, the edit success rate
(``kiwi_jax.evaluators.edit_success``) and PSNR to the true target next
to the identity baseline. The latent codec is a fixed invertible pixel-unshuffle
stand-in for the Wan VAE (``KiwiEditConfig.codec = "pixel_unshuffle"``,
``kiwi_jax.models.kiwi.codec``).
``runlocal`` is the seconds-long smoke version.

Where the demo departs from the released recipe, and why (measured in
``docs/demo_results.md``):

* Stage 1 starts from a **pretrained tiny base** (``demo.base``,
  ``assets/demo_base.safetensors``), as Kiwi-Edit starts from a pretrained
  Wan and Qwen2.5-VL. The project makes it with one command,
  ``python -m kiwi_jax.tasks.demo_base``, bit for bit on one CPU
  (``demo.base_*``): the same model, trained at stage 2 on caption clips
  (a grey layout and a caption in, the coloured scene out) with the whole
  tiny Qwen text side trainable. Without it the DiT learns to copy the
  source and the conditions ignore the words.
* The DiT is wider (dim 128) than the test-sized one and trains with
  uniform flow-matching weights (``kiwi.loss_weighting``).
* Learning rates are 1e-3..2e-3 with a cosine decay per stage
  (``demo.lr_decay``), instead of 1e-5 constant: a few thousand steps, not
  tens of thousands.
* The MLLM sees the 32 x 32 clips at 112 x 112
  (``mllm_video_min_pixels``), not upsampled to Qwen's 336 x 336 floor:
  48 video tokens instead of 432, so the instruction is a real part of a
  tiny Qwen's input and a step is 3-5x faster.
* One object per scene (``demo.max_objects``).
* Edits take 10 Euler steps from the source noised at strength 0.9
  (``demo.sample_steps``, ``demo.denoising_strength``; the released demo
  edits from pure noise, strength 1).
"""

import pathlib

from configs import common
from kiwi_jax.tasks import kiwi_config

# The pretrained tiny base (``python -m kiwi_jax.tasks.demo_base``).
BASE_FILE = (
  pathlib.Path(__file__).parent.parent / "assets" / "demo_base.safetensors"
)


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, runlocal=False)
  demo = kiwi_config.DemoConfig(
    num_videos=6 if arg.runlocal else 300,
    num_images=2 if arg.runlocal else 100,
    num_heldout=6 if arg.runlocal else 48,
    height=32,
    width=32,
    num_frames=5,
    data_seed=0,
    heldout_seed=1,
    stage_steps=[2, 2, 2] if arg.runlocal else [20, 2000, 1000],
    learning_rates=[1e-3, 2e-3, 2e-3],
    lr_decay="cosine",
    decay_to=0.05,
    sample_steps=2 if arg.runlocal else 10,
    denoising_strength=1.0 if arg.runlocal else 0.9,
    scene="simple",
    max_objects=1,
    tokenizer_words=True,
    tokenizer_vocab=512,
    base="" if arg.runlocal else str(BASE_FILE),
    base_steps=6000,
    base_learning_rate=1e-3,
    base_batch_size=4,
    base_videos=600,
    base_images=200,
    base_seed=2,
  )
  config = common.base(
    task="kiwi_demo",
    total_steps=0,  # per stage: demo.stage_steps
    demo=demo,
    kiwi=common.kiwi_block(
      variant="tiny",
      family="5b",
      stage=1,
      lora_rank=4,
      sources=[],
      tokenizer_dir="",
      max_pixels=32 * 32,
      fixed_size=(32, 32),
      codec="pixel_unshuffle",
      ref_tokens=0,
      # Fixed MLLM sizes that hold every demo example (the tests' runlocal
      # data uses the bucket ladder).
      seq_len=0 if arg.runlocal else 160,
      num_patches=0 if arg.runlocal else 256,
      batch_size=4,
      loss_weighting="uniform",
      model={
        "dit": {"dim": 128, "num_heads": 4, "ffn_dim": 256},
        "mllm": {"text": {"vocab_size": 512}},
        "mllm_video_min_pixels": 112 * 112,
      },
    ),
  )
  config.log_every = 25
  config.log_first_steps = 2
  config.optimizer.learning_rate = 1e-3
  config.precision.compute_dtype = None
  config.checkpoint.keep = 1
  config.checkpoint.async_save = False
  config.tensorboard = False
  return common.lock(config)


TEST_ARGS = ("", "runlocal")
