"""Converters from the released PyTorch checkpoints to kiwi_jax.

Per-model plans (``wan_dit``, ``wan_vae``, ``qwen2_5_vl``) map reference key
names onto kiwi_jax state paths; ``assign`` checks a plan and streams the
tensors into their shardings; ``kiwi/`` converts whole Kiwi-Edit
checkpoints (DiffSynth or diffusers), exports back to diffusers and
verifies against the PyTorch stack; ``cli`` is the one command line,
``python -m converters.convert`` from the repository root or
``kiwi-convert`` once installed. torch is imported only inside the
functions that read PyTorch files (the ``convert`` extra).
"""
