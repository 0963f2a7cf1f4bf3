r"""Kiwi-Edit on Wan2.1-T2V-14B + Qwen2.5-VL-3B (``run_wan2.1_t2v_14b_*``).

=====  ===============  ======  =======  ====  =====  ==================
stage  data             frames  max px   LR    accum  trains
=====  ===============  ======  =======  ====  =====  ==================
1      image            1       default  1e-5  1      image queries,
                                                      connector, MLLM
                                                      LoRA r256
2      image:video 1:1  49      360,000  1e-5  2      + video queries,
                                (res=720:                vae_condition
                                921,600,                 (+ DiT LoRA r128)
                                LR 5e-6)
=====  ===============  ======  =======  ====  =====  ==================

As in the reference, LoRA (scale 1, ``lora_b`` zero at init) sits on
Qwen's q,k,v,o,gate,up,down (r256, both stages) and, in stage 2, on the
DiT blocks' self/cross-attention q,k,v,o and FFN ``ffn.0``/``ffn.2`` (r128),
whose base weights stay frozen; the README's released models are all 5B.
The 14B DiT works on 16-pixel multiples (VAE 8 x patch 2, reference §4.5) and the
MLLM sees at most 10 frames.
"""

from configs import common

# (frames, max_pixels, learning rate, grad accum, steps); the sources are
# the stage's modes (``kiwi_jax.tasks.curriculum.STAGE_MODES``).
_STAGES = {
  1: (1, 1_048_576, 1e-5, 1, 30_000),
  2: (49, 360_000, 1e-5, 2, 20_000),
}


def get_config(arg: str | None = None):
  arg = common.parse_arg(
    arg,
    stage=1,
    res=600,
    data="data/refvie_records",
    tokenizer="checkpoints/qwen2.5-vl-3b",
    runlocal=False,
  )
  if arg.stage not in _STAGES:
    raise ValueError(f"stage={arg.stage}; the 14B scripts have stages 1 and 2.")
  frames, max_pixels, lr, accum, steps = _STAGES[arg.stage]
  if arg.stage == 2 and arg.res == 720:
    max_pixels, lr = 921_600, 5e-6
  config = common.base(
    task="kiwi",
    total_steps=10 if arg.runlocal else steps,
    kiwi=common.kiwi_block(
      variant="kiwi-14b",
      family="14b",
      stage=arg.stage,
      lora_rank=256,
      sources=common.stage_sources(arg.data, arg.stage, frames),
      tokenizer_dir=arg.tokenizer,
      max_pixels=max_pixels,
      model=common.real_size_model(),
      size_multiple=16,
      ref_tokens=384,
      lora_targets=common.MLLM_ALL_LORA,
      dit_lora_rank=128 if arg.stage == 2 else 0,
    ),
  )
  config.log_every = 1 if arg.runlocal else 50
  config.optimizer.learning_rate = lr
  config.optimizer.grad_accum_steps = accum
  config.mesh.fsdp, config.mesh.data = -1, 1
  common.set_real_size_run(config)
  return common.lock(config)


TEST_ARGS = ("", "stage=2", "stage=2,res=720", "stage=1,runlocal")
