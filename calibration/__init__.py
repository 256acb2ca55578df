"""ssae.calibration: INT8 post-training quantization (QDQ) of ONNX exports, calibrated on real faces, with an
accuracy/speed report against fp32. (FP16/bf16 precision plans: not built yet.)"""
