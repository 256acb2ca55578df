"""ssae.kernels: fast paths of the core ops: the fused masked modulated convolution (CUDA source, its loader, the
PyTorch custom op and the TensorRT plugin; its reference is `ssae.models.injection`) and the sparse CPU re-edit
(Winograd tiles)."""
