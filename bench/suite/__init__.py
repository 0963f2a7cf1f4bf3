"""The sections of ``bench/gpu_suite.py`` (one module per part of the
model) and their shared helpers (``common``) and report (``report``)."""
