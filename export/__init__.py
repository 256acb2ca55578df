"""ssae.export: the pipeline stages as modules with named I/O, their ONNX export (one shared weights file per
folder, the manifest), FP16 graphs and TensorRT engine building."""
