"""ssae: localized style editing of real face images with the SemanticStyle Autoencoder (SSAE)."""
__version__ = "0.1.0"

from .config import PRESETS, ROIS, RBConfig, SAEConfig, SMPNConfig, SSAEConfig, preset  # noqa: E402,F401


def load_pretrained(name_or_path=None):
    """The bundled model (None), a bundled name or a checkpoint path -> `ssae.models.SSAE` ready for inference."""
    from .pretrained import load_pretrained as _load
    return _load(name_or_path)
