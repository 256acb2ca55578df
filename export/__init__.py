"""ssae.export: ONNX export of the SSAE stages and TensorRT engine building."""
