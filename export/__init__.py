"""ONNX export of the real-time step graphs (`reverie export`); TensorRT engine builds are planned."""
