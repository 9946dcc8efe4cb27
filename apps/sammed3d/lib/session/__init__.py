"""Interactive SAM-Med3D session: the one place where geometry and stored-grid file I/O live.

Clicks given as voxel indices of the volume as stored in the file become a mask on exactly
that grid. Loading, RAS/1.5 mm preprocessing, cropping, click mapping, model calls, paste-back,
the embedding LRU cache, the volume cache both engines share (volume_cache.py), the result type both
return (result.py), multi-crop growth and per-label reset all live here.
Never imports MONAI Label (usable from notebooks, batch jobs, the trainer and the server).
"""
from .engine import CLICK_MODES, DEFAULT_CLICK_MODE, SegmentationEngine
from .errors import SessionError
from .io import StoredGrid, read_header, read_label, write_mask
from .result import SegmentationResult
from .roi import apply_roi, clamp_roi, parse_roi
from .training import TrainingCrop, extract_training_crop
from .volume import LoadedVolume, load_volume
from .volume_cache import VolumeCache

__all__ = [
    "apply_roi",
    "clamp_roi",
    "parse_roi",
    "read_header",
    "read_label",
    "CLICK_MODES",
    "DEFAULT_CLICK_MODE",
    "LoadedVolume",
    "SegmentationEngine",
    "SegmentationResult",
    "SessionError",
    "StoredGrid",
    "TrainingCrop",
    "VolumeCache",
    "extract_training_crop",
    "load_volume",
    "write_mask",
]
