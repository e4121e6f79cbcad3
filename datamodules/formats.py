"""Parsers for the dataset file formats: IDX, Larochelle's ``.amat``, Omniglot's ``chardata.mat``,
and a user's own ``.npz`` file or folder of images.

Every parser returns pixel values as ``float32`` arrays of shape ``[N, D]`` in [0, 1] and raises a
one-line `iwae.errors.UserError` naming the file when the file is truncated, corrupt or has the
wrong shape, so that a bad file stops the run before any training starts.
"""

from __future__ import annotations

import gzip
import zipfile
import zlib
from pathlib import Path

import numpy as np

from iwae.errors import UserError

# IDX type codes (LeCun's format description); MNIST and Fashion-MNIST use 0x08 (uint8).
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".tif", ".tiff")


def read_bytes(path: str | Path) -> bytes:
    """The file's bytes, gunzipped when the file starts with the gzip magic number."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == GZIP_MAGIC else raw
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise UserError(
            f"{path}: corrupt or truncated gzip file ({err}); delete it and download it again"
        ) from None
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzipped or not) into an array of the shape its header gives.

    torchvision's ``read_sn3_pascalvincent_tensor`` does the same but checks the header with
    ``assert`` and reads no gzip, so a truncated file gives an opaque error; this reader names
    the file and what is wrong with it.
    """
    path = Path(path)
    data = read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise UserError(
            f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'}); "
            "expected e.g. train-images-idx3-ubyte[.gz] from the MNIST distribution"
        )
    dtype, ndim = IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if ndim < 1 or len(data) < header:
        raise UserError(f"{path}: truncated IDX header; delete the file and download it again")
    shape = tuple(int(s) for s in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise UserError(
            f"{path}: IDX file {what} ({len(data)} bytes, header {list(shape)} needs "
            f"{expected}); delete it and download it again"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(shape)


def read_idx_images(path: str | Path) -> tuple[np.ndarray, tuple[int, int]]:
    """IDX images as ``([N, rows * cols] float32 in [0, 1], (rows, cols))``: intensities / 255."""
    images = read_idx(path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise UserError(
            f"{path}: expected uint8 images [N, rows, cols], got {images.dtype} "
            f"array of shape {list(images.shape)} (is this a labels file?)"
        )
    n, rows, cols = images.shape
    return images.reshape(n, rows * cols).astype(np.float32) / 255.0, (rows, cols)


def read_amat(path: str | Path, dim: int = 784) -> np.ndarray:
    """Larochelle's ``.amat``: one image a line, ``dim`` space-separated values -> ``[N, dim]``.

    The published files are all single digits with one space between them (each line exactly
    ``2 * dim`` bytes), which is read straight from the bytes; anything else (``0.0``, CRLF,
    tabs) goes through ``np.loadtxt``, which is about 20 times slower on the 78 MB train file.
    """
    path = Path(path)
    data = read_bytes(path)
    line = 2 * dim
    if data and len(data) % line == 0:
        rows = np.frombuffer(data, np.uint8).reshape(-1, line)
        if (rows[:, 1:-1:2] == ord(" ")).all() and (rows[:, -1] == ord("\n")).all():
            digits = rows[:, 0::2].astype(np.int16) - ord("0")
            if ((digits == 0) | (digits == 1)).all():
                return digits.astype(np.float32)
    return _read_amat_slow(path, data, dim)


def _read_amat_slow(path: Path, data: bytes, dim: int) -> np.ndarray:
    lines = [ln for ln in data.decode("ascii", errors="replace").splitlines() if ln.strip()]
    if not lines:
        raise UserError(f"{path}: empty .amat file; expected one image of {dim} values a line")
    for number, text in enumerate(lines, start=1):
        if len(text.split()) != dim:
            raise UserError(
                f"{path}: line {number} has {len(text.split())} values, expected {dim} "
                "(file truncated or not an .amat image file)"
            )
    try:
        return np.loadtxt(lines, dtype=np.float32, ndmin=2)
    except ValueError as err:
        raise UserError(f"{path}: non-numeric value in .amat file ({err})") from None


def column_major_to_row_major(x: np.ndarray, side: int = 28) -> np.ndarray:
    """``[N, side * side]`` images flattened column by column (MATLAB) -> flattened row by row."""
    return x.reshape(-1, side, side).transpose(0, 2, 1).reshape(-1, side * side)


def read_omniglot_mat(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Burda et al.'s ``chardata.mat`` -> ``(train [24345, 784], test [8070, 784])``, float32.

    ``data`` and ``testdata`` hold one image a column (``784 x N``), and each image is stored in
    MATLAB's column-major order: read as row-major it comes out transposed. The released IWAE
    code undoes it with ``reshape((-1, 28, 28)).reshape((-1, 784), order='F')``, as here.
    """
    from scipy.io import loadmat

    path = Path(path)
    try:
        mat = loadmat(path)
    except Exception as err:  # scipy raises ValueError, TypeError, OSError... for a bad file
        raise UserError(
            f"{path}: cannot read the MATLAB file ({type(err).__name__}: {err}); "
            "delete it and download it again"
        ) from None
    out = []
    for key in ("data", "testdata"):
        x = mat.get(key)
        if x is None:
            raise UserError(f"{path}: no variable {key!r}; expected Omniglot's chardata.mat")
        if x.ndim != 2 or x.shape[0] != 784:
            raise UserError(f"{path}: {key!r} has shape {list(x.shape)}, expected [784, N]")
        out.append(column_major_to_row_major(np.asarray(x.T, dtype=np.float32)))
    return out[0], out[1]


def to_unit_interval(x: np.ndarray, source: str) -> np.ndarray:
    """uint8 arrays -> ``/ 255``; float arrays kept as they are but checked to lie in [0, 1]."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if x.dtype == bool:
        return x.astype(np.float32)
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise UserError(f"{source}: unsupported dtype {x.dtype}; give uint8 or floats in [0, 1]")
    x = x.astype(np.float32)
    if x.size and (not np.isfinite(x).all() or x.min() < 0 or x.max() > 1):
        raise UserError(
            f"{source}: values outside [0, 1] (min {x.min():g}, max {x.max():g}); "
            "scale them to [0, 1] or store them as uint8 0..255"
        )
    return x


def flatten_images(x: np.ndarray, source: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """``[N, H, W]``, ``[N, H, W, 1]``, ``[N, 1, H, W]`` or ``[N, D]`` -> ``([N, D], shape)``."""
    if x.ndim == 4 and x.shape[1] == 1:  # channels first
        x = x[:, 0]
    elif x.ndim == 4 and x.shape[3] == 1:  # channels last
        x = x[..., 0]
    if x.ndim not in (2, 3):
        raise UserError(
            f"{source}: array of shape {list(x.shape)}; expected grey images [N, H, W] "
            "or flat rows [N, D]"
        )
    return x.reshape(len(x), int(np.prod(x.shape[1:]))), tuple(x.shape[1:])  # N may be 0


def read_npz(path: str | Path) -> tuple[dict[str, np.ndarray], tuple[int, ...]]:
    """A user's ``.npz``: arrays ``train``/``val``/``test``, or one array of all images.

    Returns ``({split or "all": [N, D] float32 in [0, 1]}, image_shape)``.
    """
    path = Path(path)
    # Checked first: numpy takes any other file for a pickle and advises loading it "unsafely".
    if path.is_file() and not zipfile.is_zipfile(path):
        raise UserError(
            f"{path}: cannot read the .npz file: it is not an .npz archive (truncated, or a "
            "text or other file); write one with numpy.savez"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except Exception as err:  # a damaged archive, or object arrays
        reason = f"{type(err).__name__}: {err}"
        if "pickle" in reason:  # numpy's own message advises loading "unsafely": never
            reason = "it holds object arrays, which are never unpickled: save numeric arrays"
        raise UserError(f"{path}: cannot read the .npz file ({reason})") from None
    named = {k: arrays[k] for k in ("train", "val", "test") if k in arrays}
    if not named:
        if len(arrays) != 1:
            raise UserError(
                f"{path}: found arrays {sorted(arrays)}; give 'train', 'val' and 'test' "
                "arrays, or a single array of all images that data.split divides"
            )
        named = {"all": next(iter(arrays.values()))}
    out, shapes = {}, set()
    for key, x in named.items():
        flat, shape = flatten_images(to_unit_interval(x, f"{path}[{key}]"), f"{path}[{key}]")
        out[key] = flat
        shapes.add(shape)
    if len(shapes) != 1:
        raise UserError(f"{path}: the arrays hold images of different shapes {sorted(shapes)}")
    return out, shapes.pop()


def read_image_folder(folder: str | Path) -> tuple[np.ndarray, tuple[int, int]]:
    """Every image file in ``folder`` (sorted by name, recursive) as grey ``[N, H * W]`` in [0, 1].

    Images are converted to 8-bit grey (PIL mode ``L``) and divided by 255; all must share one
    size, since the model's input size is fixed.
    """
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    images = []
    for file in files:
        try:
            with Image.open(file) as img:
                images.append(np.asarray(img.convert("L"), dtype=np.uint8))
        except (UnidentifiedImageError, OSError) as err:
            raise UserError(f"{file}: cannot read the image ({err})") from None
        if images[-1].shape != images[0].shape:
            raise UserError(
                f"{file}: image size {images[-1].shape[::-1]} differs from "
                f"{files[0].name}'s {images[0].shape[::-1]}; resize all images to one size"
            )
    stack = np.stack(images)
    return stack.reshape(len(stack), -1).astype(np.float32) / 255.0, stack.shape[1:]
