"""ssae.runtime: backends and the Editor pipeline (image -> masks -> codes -> edit -> refine -> image)."""
from .backend import Backend, BackendError  # noqa: F401
from .editor import EditParams, EditRequest, EditResult, Editor  # noqa: F401
from .images import ImageError, load_image  # noqa: F401
