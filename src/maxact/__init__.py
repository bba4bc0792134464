"""maxact: measure maximum activation magnitudes inside open LLM checkpoints."""

__version__ = "0.1.0"
