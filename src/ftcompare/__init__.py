"""ftcompare: measure how LoRA fine-tuning compares with full fine-tuning."""

__version__ = "0.1.0"
