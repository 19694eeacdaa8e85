"""Quantizers: ONNX Runtime's quantization tools for ONNX; ai-edge-quantizer and litert-torch's
PT2E quantizer for TFLite. Each takes a target's QuantSpec and returns the recipe it applied."""
