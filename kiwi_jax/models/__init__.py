"""Model families of kiwi_jax (DiT, VAE, MLLM)."""
