"""ssae.runtime: the Backend interface and registry, the backends, and the Editor (photo -> face crop -> masks ->
codes -> edit -> refine -> photo); serving (`serve/`) and latency profiling (`profiling/`) on top of them."""
from .backend import Backend, BackendError  # noqa: F401
from .editor import EditParams, EditRequest, EditResult, Editor, PreparedPhoto  # noqa: F401
from .images import ImageError, load_image  # noqa: F401
