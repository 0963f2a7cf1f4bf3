"""Small, named helpers (files, video containers)."""
