"""DICOMweb / OHIF glue for the SAM-Med3D app (see docs/dicom.md).

Nothing here is imported by the app yet; docs/dicom.md lists the exact lines the app's main.py
needs. tests/e2e/app/main.py applies the same calls to the unchanged app for the OHIF test.
"""
from lib.dicom.ohif import (
    DEFAULT_OHIF_SEGMENTS,
    advertise_segments,
    install_ohif_asset_route,
    ohif_segment_names,
)

__all__ = ["DEFAULT_OHIF_SEGMENTS", "advertise_segments", "install_ohif_asset_route", "ohif_segment_names"]
