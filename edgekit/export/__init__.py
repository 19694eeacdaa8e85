"""Exporters: PyTorch to ONNX (torch.onnx + onnxsim) and to TFLite (litert-torch)."""
