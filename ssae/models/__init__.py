"""PyTorch models: the Swapping Autoencoder (export-friendly and official-direct), SMPN, RB and SSAE."""
from .refine import RefinementBlock  # noqa: F401
from .sae import StyleEdit, SwappingAutoencoder  # noqa: F401
from .smpn import SMPN  # noqa: F401
from .ssae_model import SSAE  # noqa: F401
