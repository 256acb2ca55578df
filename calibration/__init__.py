"""ssae.calibration: FP16 precision plans and INT8 post-training quantization."""
