"""DICOMweb / OHIF glue for the SAM-Med3D app (see docs/dicom.md).

Used by apps/sammed3d/main.py: segment names in /info for OHIF, and the /ohif/ asset route.
"""
from lib.dicom.ohif import (
    DEFAULT_OHIF_SEGMENTS,
    advertise_segments,
    install_ohif_asset_route,
    ohif_segment_names,
)

__all__ = ["DEFAULT_OHIF_SEGMENTS", "advertise_segments", "install_ohif_asset_route", "ohif_segment_names"]
