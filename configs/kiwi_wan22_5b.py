r"""Kiwi-Edit on Wan2.2-TI2V-5B + Qwen2.5-VL-3B: the released curriculum.

Mirrors ``scripts/run_wan2.2_ti2v_5b_*`` (reference §4.2):

=====  ===============  ==========  =========  ====  =====  =====  ======
stage  data (mix)       frames      max px     LR    accum  steps  DiT
=====  ===============  ==========  =========  ====  =====  =====  ======
1      image            1           1,048,576  1e-5  1      30K    frozen
2      image:video 1:1  81          921,600    1e-5  2      20K    full
                                    (res=600:
                                    360,000)
3      img:vid:ref      81          921,600    5e-6  3      15K    full
       1:1:1
3      ref only         81          921,600    5e-6  1      30K    full
       (refonly)
=====  ===============  ==========  =========  ====  =====  =====  ======

  python train.py --config=configs/kiwi_wan22_5b.py:stage=2 \
      --workdir=gs://bucket/kiwi5b_s2 \
      --config.model_init=gs://bucket/kiwi5b_s1/checkpoints

``data`` is a directory with ``image/``, ``video/`` and ``ref/`` ArrayRecord
shards (``kiwi_jax.data.build_records``); ``tokenizer`` the Qwen2.5-VL
tokenizer directory. Stage handoff: ``--config.model_init`` (the previous
stage's checkpoints, or a converted release). ``runlocal`` shrinks steps
and logging for a quick look, not the model.
"""

from configs import common

# (frames, max_pixels, learning rate, grad accum, steps); the sources are
# the stage's modes (``kiwi_jax.tasks.curriculum.STAGE_MODES``).
_STAGES = {
  1: (1, 1_048_576, 1e-5, 1, 30_000),
  2: (81, 921_600, 1e-5, 2, 20_000),
  3: (81, 921_600, 5e-6, 3, 15_000),
}


def get_config(arg: str | None = None):
  arg = common.parse_arg(
    arg,
    stage=1,
    res=720,
    refonly=False,
    data="data/refvie_records",
    tokenizer="checkpoints/qwen2.5-vl-3b",
    runlocal=False,
  )
  if arg.stage not in _STAGES:
    raise ValueError(f"stage={arg.stage}; choose 1, 2 or 3.")
  frames, max_pixels, lr, accum, steps = _STAGES[arg.stage]
  names = None
  if arg.stage == 2 and arg.res == 600:
    max_pixels = 360_000  # the 600x600 stage-2 script
  if arg.refonly:
    if arg.stage != 3:
      raise ValueError("refonly is a stage-3 option.")
    names, accum, steps = ("ref",), 1, 30_000
  config = common.base(
    task="kiwi",
    total_steps=10 if arg.runlocal else steps,
    kiwi=common.kiwi_block(
      variant="kiwi-5b",
      family="5b",
      stage=arg.stage,
      lora_rank=64,
      sources=common.stage_sources(arg.data, arg.stage, frames, names),
      tokenizer_dir=arg.tokenizer,
      max_pixels=max_pixels,
      model=common.real_size_model(),
    ),
  )
  config.log_every = 1 if arg.runlocal else 50
  config.optimizer.learning_rate = lr
  config.optimizer.grad_accum_steps = accum
  config.mesh.fsdp, config.mesh.data = -1, 1
  common.set_real_size_run(config)
  return common.lock(config)


TEST_ARGS = (
  "",
  "stage=2",
  "stage=2,res=600",
  "stage=3",
  "stage=3,refonly",
  "stage=1,runlocal",
)
