"""Exports: a trained model as a file another program loads (safetensors bundle, ONNX)."""
