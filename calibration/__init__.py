"""ssae.calibration: calibration sets of real faces, FP16/bf16 precision plans (which nodes stay fp32), INT8
post-training quantization (QDQ) with an exclusion search, and the accuracy/speed report against fp32."""
