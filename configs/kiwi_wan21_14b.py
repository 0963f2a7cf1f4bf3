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
The 14B DiT works on 16-pixel multiples (VAE 8 x patch 2, spec 4.5) and the
MLLM sees at most 10 frames.
"""

from configs import common

_STAGES = {1: (("image",), 1, 1_048_576, 1e-5, 1, 30_000),
           2: (("image", "video"), 49, 360_000, 1e-5, 2, 20_000)}


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, stage=1, res=600, data="data/refvie_records",
                         tokenizer="checkpoints/qwen2.5-vl-3b",
                         runlocal=False)
  if arg.stage not in _STAGES:
    raise ValueError(f"stage={arg.stage}; the 14B scripts have stages 1 "
                     "and 2.")
  names, frames, max_pixels, lr, accum, steps = _STAGES[arg.stage]
  if arg.stage == 2 and arg.res == 720:
    max_pixels, lr = 921_600, 5e-6
  sources = [{"path": f"{arg.data}/{name}", "weight": 1.0, "name": name,
              "max_frames": 1 if name == "image" else frames}
             for name in names]
  config = common.parse_arg(None)
  config.task = "kiwi"
  config.seed = 0
  config.total_steps = 10 if arg.runlocal else steps
  config.log_every = 1 if arg.runlocal else 50
  config.kiwi = common.kiwi_block(
      variant="kiwi-14b", family="14b", stage=arg.stage, lora_rank=256,
      sources=sources, tokenizer_dir=arg.tokenizer, max_pixels=max_pixels,
      model=common.real_size_model(),
      size_multiple=16, ref_tokens=384, lora_targets=common.MLLM_ALL_LORA,
      dit_lora_rank=128 if arg.stage == 2 else 0)
  config.optimizer = common.optimizer(lr, accum)
  config.precision = common.real_size_precision()
  config.checkpoint = {"every": 1000, "keep": 3, "async_save": True}
  config.mesh = common.mesh_config(fsdp=-1, data=1)
  config.sharding_rules = common.sharding_rules(fsdp_over_sequence=True)
  config.resume = ""
  config.model_init = ""
  config.sample_every = 0
  config.profile = {"start_step": -1, "num_steps": 0}
  config.tensorboard = True
  return common.lock(config)


TEST_ARGS = ("", "stage=2", "stage=2,res=720", "stage=1,runlocal")
