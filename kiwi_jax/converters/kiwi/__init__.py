"""Whole Kiwi-Edit checkpoints: sources, config, key names, convert,
export to diffusers, verify against the PyTorch reference."""
