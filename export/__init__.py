"""ONNX export of the runtime graphs and TensorRT engine builds (planned; no command yet)."""
