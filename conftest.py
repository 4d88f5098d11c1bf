"""Root conftest: our own tests drive real pytest sessions through ``pytester``."""

pytest_plugins = ["pytester"]
