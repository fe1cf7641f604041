"""Stage 8: a self-contained inference package (TorchScript, optional ONNX, config, model copy)."""
