r"""Plans for TPU slices: compile the real programs ahead of time from a
CPU host, with no weights, and report memory, FLOPs and collectives.

  pip install '.[tpu]'   # the pinned jax[tpu] (libtpu)
  python -m kiwi_jax.plan --config=configs/kiwi_wan22_5b.py:stage=2 \
      --topology=v5p-8 [--mesh=fsdp=4] [--config.KEY=VALUE] \
      [--programs=train,edit] [--json=plan.json] [--cache_dir=DIR]

Modules: ``topology`` (Cloud TPU names -> compile-only devices),
``batches`` (shape-only batches from a config, no tokenizer),
``programs`` (the train step and the editing stages), ``measure`` (one
compile and its numbers), ``hlo_stats`` (collectives, f32 matmuls, the
need stated by out-of-memory errors), ``cache`` and ``report``. See
``docs/plan.md``.
"""
