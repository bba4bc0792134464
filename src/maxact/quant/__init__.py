"""End-to-end error of quantized formats applied by their consumers\x27 own code (compressed-tensors, llm-compressor, llama.cpp)."""
