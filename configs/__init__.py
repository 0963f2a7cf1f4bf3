"""ml_collections config files: ``--config=configs/<name>.py:<arg>``."""
