"""Kiwi-Edit model families: mllm (Qwen2.5-VL), dit (Wan), vae (Wan)."""
