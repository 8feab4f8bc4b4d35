"""mgsd: visual spatial planning for vision-language models by modality-gap-aware self-distillation."""

__version__ = "0.1.0"
