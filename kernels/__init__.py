"""ssae.kernels: the fused masked modulated convolution (reference, CUDA source, bindings) and the
counter-based noise generator shared by every backend."""
