"""Single-file volumes: NIfTI through nibabel, NRRD/MHA/MHD and the rest through SimpleITK.

Slices are returned as (slices, rows, cols) in ITK's array convention (rows = j, cols = i),
ordered by ascending position along the slice axis, whatever the file's voxel order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .volume import Volume, VolumeError, VolumeSource, hu_array, quiet

NIFTI_SUFFIXES = (".nii", ".nii.gz")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".hdr", ".vtk", ".gipl", ".gipl.gz", ".nia")


def has_suffix(path: Path, suffixes: tuple[str, ...]) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in suffixes)


def _strip_suffix(path: Path, suffixes: tuple[str, ...]) -> str:
    name = path.name
    for s in suffixes:
        if name.lower().endswith(s):
            return name[: -len(s)]
    return path.stem


# --- NIfTI -------------------------------------------------------------------------------------


def _nifti_geometry(img) -> tuple[int, bool, np.ndarray, tuple[float, float, float]]:
    """The voxel axis closest to the body axis, whether to flip it, positions, spacing."""
    affine = np.asarray(img.affine, dtype=np.float64)
    shape = img.shape
    if len(shape) < 3:
        return 2, False, np.zeros(1), (float("nan"), 1.0, 1.0)
    axis = int(np.argmax(np.abs(affine[2, :3])))
    direction = affine[:3, axis]
    step = float(np.linalg.norm(direction))
    unit = direction / step if step else np.array([0.0, 0.0, 1.0])
    flip = bool(unit[2] < 0)
    k = np.arange(shape[axis], dtype=np.float64)
    positions = (affine[:3, 3] @ unit) + k * step
    if flip:
        positions = -positions[::-1]
    zooms = img.header.get_zooms()[:3]
    in_plane = [float(zooms[a]) for a in range(3) if a != axis]
    return axis, flip, positions, (step, in_plane[1], in_plane[0])


def nifti_source(path: Path, volume_id: str) -> VolumeSource:
    import nibabel as nib

    try:
        with quiet():
            img = nib.load(str(path))
    except Exception as exc:
        raise VolumeError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(img, nib.Nifti1Image):  # nib.load also returns CIFTI-2 and other non-volume images
        raise VolumeError(f"{path}: {type(img).__name__} is not a NIfTI volume")
    dtype = img.get_data_dtype()
    if dtype.kind not in "iuf":
        raise VolumeError(f"{path}: NIfTI data type {dtype} is not a grey-level volume")
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) not in (2, 3):
        raise VolumeError(f"{path}: NIfTI with shape {img.shape} is not a single 3-D volume")
    axis, _, _, spacing = _nifti_geometry(img)
    if len(shape) == 3:
        n = shape[axis]
        cols, rows = (shape[a] for a in range(3) if a != axis)
    else:
        n, (cols, rows) = 1, shape
    return VolumeSource(volume_id, "nifti", (str(path),), n_slices=int(n), rows=int(rows),
                        cols=int(cols), spacing=spacing)


def read_nifti(source: VolumeSource) -> Volume:
    import nibabel as nib

    path = source.paths[0]
    try:
        with quiet():
            img = nib.load(path)
        # The unscaled on-disk array plus the header scaling, never get_fdata's float64 copy.
        raw = _voxels(img.dataobj, path)
    except VolumeError:
        raise
    except Exception as exc:
        raise VolumeError(f"{path}: cannot read NIfTI data ({type(exc).__name__}: {exc})") from exc
    if raw.ndim == 4 and raw.shape[3] == 1:
        raw = raw[..., 0]
    if raw.ndim == 2:
        raw = raw[:, :, None]
    axis, flip, positions, spacing = _nifti_geometry(img)
    data = np.moveaxis(raw, axis, 0)  # (slices, i, j)
    data = np.swapaxes(data, 1, 2)  # (slices, j, i): ITK's row/column convention
    # NIfTI stores i fastest, so with the body axis last (the usual case) this view is C-contiguous:
    # no copy. Another body axis costs one.
    data = _own(data)
    if flip:
        _reverse_slices(data)
    slope, inter = img.dataobj.slope, img.dataobj.inter
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    n = data.shape[0]
    hu = hu_array(data, np.full(n, slope), np.full(n, inter), in_place=True)
    _check_finite(hu, path)
    return Volume(source.volume_id, hu, spacing, positions, (path,) * n, format="nifti",
                  warnings=_single_slice_warning(n, path))


def _voxels(proxy, path: str) -> np.ndarray:
    """The stored voxels of a NIfTI file, read into an array of our own that the HU are computed in.

    Not ``proxy.get_unscaled()``: its memory map adds the mapped file's pages to the copy made from
    it, and its read of a .nii.gz holds the decompressed bytes twice (gzip's ``readinto`` returns a
    copy of a ``read``): 4x and 2x the volume at the peak, where reading 1 MiB at a time takes 1x.
    """
    from nibabel.openers import ImageOpener

    dtype = np.dtype(proxy.dtype)
    buffer = np.empty(int(np.prod(proxy.shape)) * dtype.itemsize, dtype=np.uint8)
    with ImageOpener(path) as f:
        f.seek(proxy.offset)
        done = 0
        while done < buffer.size:
            n = f.readinto(memoryview(buffer[done:done + (1 << 20)]))
            if not n:
                raise VolumeError(f"{path}: NIfTI file ends after {done} of its {buffer.size} bytes of voxel data")
            done += n
    return buffer.view(dtype).reshape(proxy.shape, order=proxy.order)


def _own(data: np.ndarray) -> np.ndarray:
    """``data`` when it is a C-contiguous, writable array nothing else uses (our read), else a copy."""
    if not data.flags.c_contiguous:
        return np.ascontiguousarray(data)
    return data if data.flags.writeable else data.copy()


def _reverse_slices(data: np.ndarray) -> None:
    """``data[:] = data[::-1]`` with one slice of temporary memory instead of a volume."""
    n = data.shape[0]
    spare = np.empty_like(data[0]) if n else None
    for i in range(n // 2):
        spare[...] = data[i]
        data[i] = data[n - 1 - i]
        data[n - 1 - i] = spare


# --- SimpleITK ---------------------------------------------------------------------------------


def sitk_source(path: Path, volume_id: str) -> VolumeSource:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except Exception as exc:
        raise VolumeError(f"{path}: SimpleITK cannot read it ({_first_line(exc)})") from exc
    size = reader.GetSize()
    if reader.GetNumberOfComponents() != 1:
        raise VolumeError(f"{path}: {reader.GetNumberOfComponents()}-component image is not a CT volume")
    if len(size) not in (2, 3):
        raise VolumeError(f"{path}: {len(size)}-D image is not a single 3-D volume")
    spacing = reader.GetSpacing()
    n = size[2] if len(size) == 3 else 1
    z_spacing = float(spacing[2]) if len(size) == 3 else float("nan")
    return VolumeSource(volume_id, "sitk", (str(path),), n_slices=int(n), rows=int(size[1]),
                        cols=int(size[0]), spacing=(z_spacing, float(spacing[1]), float(spacing[0])))


def read_sitk(source: VolumeSource) -> Volume:
    import SimpleITK as sitk

    path = source.paths[0]
    try:
        image = sitk.ReadImage(path)
    except Exception as exc:
        raise VolumeError(f"{path}: SimpleITK cannot read it ({_first_line(exc)})") from exc
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(f"{path}: multi-component image is not a CT volume")
    data = _pixels(image)  # (k, j, i)
    if data.ndim == 2:
        data = data[None]
    dim = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dim, dim)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    spacing = image.GetSpacing()
    del image  # its pixels live on in ``data``
    n = data.shape[0]
    if dim == 3:
        normal = direction[:, 2]
        positions = origin @ normal + np.arange(n) * spacing[2]
        # Anatomical order: ascending along the body (superior) axis.
        if normal[2] < 0:
            _reverse_slices(data)
            positions = -positions[::-1]
        vox = (float(spacing[2]), float(spacing[1]), float(spacing[0]))
    else:
        positions = np.zeros(1)
        vox = (float("nan"), float(spacing[1]), float(spacing[0]))
    hu = hu_array(data, np.ones(n), np.zeros(n), in_place=True)
    _check_finite(hu, path)
    return Volume(source.volume_id, hu, vox, np.asarray(positions, dtype=np.float64), (path,) * n,
                  format="sitk", warnings=_single_slice_warning(n, path))


class _ImagePixels:
    """An image's pixel buffer as a writable NumPy array that keeps the image alive.

    ``GetArrayFromImage`` copies the buffer (2x the volume at the peak) and ``GetArrayViewFromImage``
    is read-only and does not keep the image alive. After its ``MakeUnique`` the buffer belongs to
    this image alone, so the array (whose base is this object, holding the image) may be written.
    """

    def __init__(self, image) -> None:
        import SimpleITK as sitk

        view = sitk.GetArrayViewFromImage(image)  # calls image.MakeUnique()
        interface = dict(view.__array_interface__)
        interface["data"] = (interface["data"][0], False)
        self.__array_interface__ = interface
        self._image = image


def _pixels(image) -> np.ndarray:
    return np.asarray(_ImagePixels(image))


def _check_finite(hu: np.ndarray, path: str) -> None:
    if np.issubdtype(hu.dtype, np.floating) and hu.size:
        step = max(1, (1 << 20) // max(1, hu[0].nbytes))  # a few slices at a time: no volume-sized mask
        bad = np.concatenate([(~np.isfinite(hu[k:k + step])).sum(axis=(1, 2)) for k in range(0, len(hu), step)])
        if bad.any():
            slices = np.flatnonzero(bad)
            raise VolumeError(
                f"{path}: {int(bad.sum())} NaN/infinite voxels in {slices.size} of "
                f"{hu.shape[0]} slices (first: slice {int(slices[0])})"
            )


def _single_slice_warning(n: int, path: str) -> list[str]:
    return [f"{path}: single-slice volume"] if n == 1 else []


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    meaningful = [line for line in text if "ERROR" in line or "Exception" in line]
    return (meaningful or text or [type(exc).__name__])[-1].strip()
