"""Calibration files from a measurement's linear-input statistics, in the formats quantization stacks read."""
