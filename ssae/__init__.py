"""ssae: localized style editing of real face images with the SemanticStyle Autoencoder (SSAE)."""
__version__ = "0.1.0"

from .config import PRESETS, ROIS, RBConfig, SAEConfig, SMPNConfig, SSAEConfig, preset  # noqa: E402,F401
