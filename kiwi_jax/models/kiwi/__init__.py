"""Kiwi-Edit: the MLLM condition encoder, connectors and DiT/VAE assembly."""
