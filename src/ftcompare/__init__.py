"""ftcompare: measure how LoRA fine-tuning compares with full fine-tuning."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ftcompare")  # the installed distribution's, so it follows pyproject.toml
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
