"""Face data: dataset layouts, the shared resize policy, in-memory batching and landmark-derived masks."""
from .layouts import CelebAMaskHQ, FaceDataset, FaceSample, FolderDataset, ImageFolder, LFWParts  # noqa: F401
from .transforms import SquareFit, from_model_tensor, to_model_tensor  # noqa: F401
