"""Which stored axis is "the slice" for the 2D model, and how a slice is shown to it.

Decision (documented in docs/medsam.md):
* slice axis = the stored axis with the largest spacing when it is more than 10 % larger than the
  other two (thick-slice acquisitions: the slices as acquired, never the stretched reformat);
  otherwise (near-isotropic) the stored axis most aligned with the patient's superior-inferior
  axis, i.e. axial slices, which is what MedSAM saw most of for CT and MR.
* in-plane, every slice is turned into the radiological display frame MedSAM's training images are
  in (DICOM/ITK array order of an LPS-aligned scan): for an axial plane rows run anterior ->
  posterior and columns patient right -> left; coronal: rows superior -> inferior, columns right
  -> left; sagittal: rows superior -> inferior, columns anterior -> posterior. So the same anatomy
  gives the same 2D image whatever the file's stored orientation (flips/permutations only; an
  oblique scan uses its closest such frame). Pixels are treated as square, as MedSAM does.

Arrays here are indexed like the stored file: vol[i, j, k] (nibabel order).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np

# LPS world unit vectors
_L, _P, _S = np.eye(3)
# slice normal's dominant world axis -> (row direction, column direction) in LPS
_DISPLAY = {2: (_P, _L), 1: (-_S, _L), 0: (-_S, _P)}


@dataclass(frozen=True)
class SliceFrame:
    """Maps the stored (i, j, k) grid to a stack of 2D display slices [s][row, col]."""

    shape: Tuple[int, int, int]  # stored (ni, nj, nk)
    slice_axis: int
    row_axis: int
    col_axis: int
    row_flip: bool
    col_flip: bool

    @property
    def num_slices(self) -> int:
        return self.shape[self.slice_axis]

    @property
    def slice_shape(self) -> Tuple[int, int]:
        """(rows, cols) of one display slice."""
        return self.shape[self.row_axis], self.shape[self.col_axis]

    def slice_of(self, vol: np.ndarray, s: int) -> np.ndarray:
        """(ni, nj, nk) array -> the display slice s, (rows, cols) (a view when possible)."""
        plane = np.take(vol, s, axis=self.slice_axis)  # remaining axes in increasing order
        rest = [a for a in range(3) if a != self.slice_axis]
        if rest.index(self.row_axis) == 1:
            plane = plane.T
        return plane[:: -1 if self.row_flip else 1, :: -1 if self.col_flip else 1]

    def put_slice(self, vol: np.ndarray, s: int, plane: np.ndarray) -> None:
        """Write a display slice (rows, cols) back into the stored-order array `vol` at slice s."""
        plane = plane[:: -1 if self.row_flip else 1, :: -1 if self.col_flip else 1]
        rest = [a for a in range(3) if a != self.slice_axis]
        if rest.index(self.row_axis) == 1:
            plane = plane.T
        index = [slice(None)] * 3
        index[self.slice_axis] = s
        vol[tuple(index)] = plane

    def _axis_range(self, axis: int, lo: int, hi: int, flip: bool) -> Tuple[int, int]:
        n = self.shape[axis]
        return (n - 1 - hi, n - 1 - lo) if flip else (lo, hi)

    def roi_to_frame(self, roi: Sequence[int]) -> Tuple[Tuple[int, int], Tuple[int, int, int, int]]:
        """Stored ROI (i0, i1, j0, j1, k0, k1), inclusive, already clamped to the volume ->
        ((s0, s1), (x0, y0, x1, y1)) with x = column and y = row of the display slices."""
        lo = [int(roi[2 * a]) for a in range(3)]
        hi = [int(roi[2 * a + 1]) for a in range(3)]
        r0, r1 = self._axis_range(self.row_axis, lo[self.row_axis], hi[self.row_axis], self.row_flip)
        c0, c1 = self._axis_range(self.col_axis, lo[self.col_axis], hi[self.col_axis], self.col_flip)
        return (lo[self.slice_axis], hi[self.slice_axis]), (c0, r0, c1, r1)

    def point_to_frame(self, p: Sequence[int]) -> Tuple[int, int, int]:
        """Stored voxel (i, j, k) -> (slice, row, col)."""
        r = self.shape[self.row_axis] - 1 - p[self.row_axis] if self.row_flip else p[self.row_axis]
        c = self.shape[self.col_axis] - 1 - p[self.col_axis] if self.col_flip else p[self.col_axis]
        return int(p[self.slice_axis]), int(r), int(c)


def choose_frame(shape: Sequence[int], spacing: Sequence[float], direction: Sequence[float],
                 slice_axis: int = None) -> SliceFrame:
    """Frame for a stored grid: `direction` is ITK's row-major 3x3 (columns = stored axes in LPS).

    slice_axis: force a stored axis (0, 1, 2) instead of the rule in the module docstring.
    """
    shape = tuple(int(n) for n in shape)
    sp = np.asarray(spacing, dtype=float)
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    if slice_axis is None:
        order = np.argsort(sp)[::-1]
        if sp[order[0]] > 1.1 * sp[order[1]]:
            slice_axis = int(order[0])
        else:
            slice_axis = int(np.argmax(np.abs(d[2, :])))
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis!r}")
    normal_world = int(np.argmax(np.abs(d[:, slice_axis])))
    row_dir, col_dir = _DISPLAY[normal_world]
    rest = [a for a in range(3) if a != slice_axis]
    align = [abs(float(d[:, a] @ row_dir)) for a in rest]
    row_axis = rest[int(np.argmax(align))] if align[0] != align[1] else rest[0]
    col_axis = rest[0] if row_axis == rest[1] else rest[1]
    return SliceFrame(
        shape=shape, slice_axis=slice_axis, row_axis=row_axis, col_axis=col_axis,
        row_flip=bool(d[:, row_axis] @ row_dir < 0), col_flip=bool(d[:, col_axis] @ col_dir < 0),
    )
