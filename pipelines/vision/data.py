"""Vision data: Fashion-MNIST IDX files, ImageFolder directories and single image files.

- IDX (LeCun's format, gzip or raw): the magic number, the dimension count and the sizes
  are checked against the file length; a corrupt or truncated file is one ``UserError``
  naming it. Fashion-MNIST (Xiao, Rasul, Vollgraf 2017, MIT licence,
  github.com/zalandoresearch/fashion-mnist) is read from ``$LONGSTREAM_DATA/vision/fashion-mnist``.
- ImageFolder (``DIR/<class>/<image>``, optionally under ``train/`` and ``test/`` or ``val/``):
  read with torchvision's ``ImageFolder`` and resized with timm's eval transform.
- Single images (PNG, JPEG, BMP, GIF, TIFF, WebP) via PIL, see :func:`load_image`:
  colour images are converted to the model's channel count (RGB -> greyscale with the ITU-R
  601 luma weights; greyscale -> RGB by repeating), an alpha channel is composited on black,
  any size is resized to ``img_size`` (aspect ratio kept, padded to a square), and images
  above ``MAX_PIXELS`` (50 Mpx) are refused before they are decoded.

Training batches are a function of ``(seed, step)``: each epoch is a seeded permutation and
the augmentation (random crop of the zero-padded image, horizontal flip) draws from a
per-step generator, so a resumed run sees the same batches.

Axis legend: n images, b batch, c channels, h / w height / width.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from longstream.pipelines.common import UserError
from longstream.pipelines.datasets import dataset_path

from .config import Config, DataConfig

MAX_PIXELS = 50_000_000  # larger images are refused (decompression-bomb guard)
MAX_IMAGE_BYTES = 64 * 2**20
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_IDX_DTYPES = {0x08: np.uint8}  # Fashion-MNIST / MNIST use unsigned bytes only


# ---------------------------------------------------------------------------- IDX
def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (``.gz`` or raw) as a numpy array; ``UserError`` on anything malformed."""
    p = Path(path)
    try:
        raw = p.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"IDX file {p}: cannot be read or un-gzipped ({e}); "
                        "re-download it from github.com/zalandoresearch/fashion-mnist") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise UserError(f"IDX file {p}: not an IDX file (bad magic number); expected e.g. "
                        "train-images-idx3-ubyte.gz from github.com/zalandoresearch/fashion-mnist")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES or not 1 <= ndim <= 4:
        raise UserError(f"IDX file {p}: unsupported type 0x{code:02x} or {ndim} dimensions; "
                        "only unsigned-byte IDX files with 1-4 dimensions are read")
    if len(raw) < 4 + 4 * ndim:
        raise UserError(f"IDX file {p}: truncated header; re-download it")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = raw[4 + 4 * ndim:]
    if len(body) != int(np.prod(dims)):
        raise UserError(f"IDX file {p}: header says {dims} = {int(np.prod(dims))} bytes of data but the file holds "
                        f"{len(body)}; the file is truncated or corrupt, re-download it")
    return np.frombuffer(body, dtype=_IDX_DTYPES[code]).reshape(dims)


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def is_idx_dir(folder: Path) -> bool:
    return folder.is_dir() and any(_idx_file(folder, s) for pair in IDX_FILES.values() for s in pair)


def load_idx_split(folder: Path, split: str) -> tuple[Tensor, Tensor]:
    """(images (n, 1, 28, 28) uint8, labels (n,) int64) of an IDX folder's ``train`` / ``test`` split."""
    img_stem, lab_stem = IDX_FILES[split]
    fi, fl = _idx_file(folder, img_stem), _idx_file(folder, lab_stem)
    if fi is None or fl is None:
        raise UserError(f"IDX folder {folder}: missing {img_stem}.gz or {lab_stem}.gz; put the Fashion-MNIST "
                        "files there (github.com/zalandoresearch/fashion-mnist)")
    x, y = read_idx(fi), read_idx(fl)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise UserError(f"IDX folder {folder}: {fi.name} has shape {x.shape} and {fl.name} {y.shape}; expected "
                        "(n, h, w) images and (n,) labels of the same n")
    return torch.from_numpy(x.copy())[:, None], torch.from_numpy(y.astype(np.int64))


# ---------------------------------------------------------------------------- single images
def open_image(path: str | Path):
    """A PIL image, fully decoded; ``UserError`` for a missing, corrupt, unsupported or huge file."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise UserError(f"image {p}: no such file; pass a PNG / JPEG / BMP / GIF / TIFF / WebP image")
    if p.stat().st_size > MAX_IMAGE_BYTES:
        raise UserError(f"image {p}: {p.stat().st_size / 2**20:.0f} MiB is larger than the "
                        f"{MAX_IMAGE_BYTES // 2**20} MiB limit; shrink it first")
    try:
        with Image.open(p) as im:
            if im.width * im.height > MAX_PIXELS:
                raise UserError(f"image {p}: {im.width}x{im.height} pixels is more than the {MAX_PIXELS // 10**6} Mpx "
                                "limit; downscale it first")
            im.load()
            return im.copy()
    except UserError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"image {p}: not a readable image ({type(e).__name__}: {e}); pass a PNG / JPEG / BMP / "
                        "GIF / TIFF / WebP file") from e


def image_to_tensor(im, dc: DataConfig) -> Tensor:
    """A PIL image -> (c, img_size, img_size) uint8: channels converted, resized keeping the
    aspect ratio onto a black square, optionally inverted (see ``DataConfig.invert``)."""
    from PIL import Image

    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        im = Image.alpha_composite(bg, rgba)
    im = im.convert("L" if dc.in_chans == 1 else "RGB")  # I;16, CMYK, P, 1 ... all land here
    s = dc.img_size
    scale = s / max(im.width, im.height)
    w, h = max(1, round(im.width * scale)), max(1, round(im.height * scale))
    arr0 = np.asarray(im)
    if dc.invert == "always" or (dc.invert == "auto" and _light_background(arr0)):
        im = Image.fromarray(255 - arr0)
    im = im.resize((w, h), Image.Resampling.BILINEAR if scale < 1 else Image.Resampling.BICUBIC)
    canvas = Image.new(im.mode, (s, s), 0)
    canvas.paste(im, ((s - w) // 2, (s - h) // 2))
    arr = np.asarray(canvas, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr.copy())


def _light_background(arr: np.ndarray) -> bool:
    """True when the image border is mostly light (a photo on white): Fashion-MNIST is light on black."""
    g = arr if arr.ndim == 2 else arr.mean(-1)
    border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
    return float(border.mean()) > 127.5


def load_image(path: str | Path, dc: DataConfig) -> Tensor:
    """One image file -> (c, img_size, img_size) uint8, ready for :func:`normalize`."""
    return image_to_tensor(open_image(path), dc)


# ---------------------------------------------------------------------------- ImageFolder
def load_image_folder(folder: Path, dc: DataConfig, class_names: list[str] | None = None) -> tuple[Tensor, Tensor, list[str]]:
    """Every image of ``folder/<class>/*`` as uint8 (n, c, s, s) + labels + the folder's class names.

    With ``class_names`` (a checkpoint's), the folder's classes must be among them and labels
    follow that order."""
    from torchvision.datasets.folder import find_classes

    try:
        classes, _ = find_classes(str(folder))
    except (FileNotFoundError, OSError) as e:
        raise UserError(f"image folder {folder}: {e}; expected one sub-folder of images per class") from e
    names = class_names or classes
    unknown = [c for c in classes if c not in names]
    if unknown:
        raise UserError(f"image folder {folder}: classes {unknown[:5]} are not classes of this model "
                        f"({', '.join(names)}); rename the sub-folders or train a model on this folder")
    xs, ys = [], []
    for c in classes:
        files = sorted(f for f in (folder / c).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        for f in files:
            xs.append(load_image(f, DataConfig(**{**dc.__dict__, "invert": "never"})))
            ys.append(names.index(c))
    if not xs:
        raise UserError(f"image folder {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) under its class sub-folders")
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64), list(names)


# ---------------------------------------------------------------------------- splits
@dataclass
class Split:
    x: Tensor  # (n, c, s, s) uint8
    y: Tensor  # (n,) int64
    source: str

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.x.numpy().tobytes())
        h.update(self.y.numpy().tobytes())
        return h.hexdigest()


def data_root(dc: DataConfig, override: str | None = None) -> Path:
    if override or dc.root:
        p = Path(override or dc.root).expanduser()
        if not p.exists():
            raise UserError(f"--data {p}: no such file or directory; pass the Fashion-MNIST IDX folder or an "
                            "ImageFolder directory (one sub-folder per class)")
        return p
    return dataset_path("fashion-mnist")


def _check_shape(x: Tensor, dc: DataConfig) -> Tensor:
    """IDX images (n, 1, h, w) uint8 -> the model's channels and size."""
    if x.shape[1] != dc.in_chans:  # IDX is greyscale: repeated for an RGB model
        x = x.expand(-1, dc.in_chans, -1, -1).contiguous()
    if x.shape[-2:] != (dc.img_size, dc.img_size):
        x = torch.nn.functional.interpolate(x.float(), size=(dc.img_size, dc.img_size), mode="bilinear",
                                            antialias=True, align_corners=False)
        x = x.round().clamp(0, 255).to(torch.uint8)
    return x


def load_split(cfg: Config, split: str, override: str | None = None) -> Split:
    """``train`` (minus the last ``val_size``), ``val`` (those) or ``test`` images of the configured data."""
    dc = cfg.data
    root = data_root(dc, override)
    if is_idx_dir(root):
        x, y = load_idx_split(root, "test" if split == "test" else "train")
        x = _check_shape(x, dc)
        if int(y.max()) >= len(dc.class_names) or int(y.min()) < 0:
            raise UserError(f"IDX folder {root}: labels up to {int(y.max())} but the model has "
                            f"{len(dc.class_names)} classes")
    elif root.is_dir():
        sub = {"train": ["train"], "val": ["train"], "test": ["test", "val"]}[split]
        folder = next((root / s for s in sub if (root / s).is_dir()), root)
        x, y, _ = load_image_folder(folder, dc, dc.class_names)
    else:
        raise UserError(f"--data {root}: not a folder; pass the Fashion-MNIST IDX folder or an ImageFolder directory")
    if split in ("train", "val") and len(x) > dc.val_size:
        n_tr = len(x) - dc.val_size
        x, y = (x[:n_tr], y[:n_tr]) if split == "train" else (x[n_tr:], y[n_tr:])
        if split == "train" and dc.n_train > 0:
            x, y = x[: dc.n_train], y[: dc.n_train]
    if split == "test" and dc.n_test > 0:
        x, y = x[: dc.n_test], y[: dc.n_test]
    return Split(x, y, str(root))


# ---------------------------------------------------------------------------- batches
def normalize(x: Tensor, dc: DataConfig) -> Tensor:
    """uint8 (b, c, h, w) -> float32 normalised."""
    return (x.float() / 255.0 - dc.mean) / dc.std


def epoch_order(n: int, epoch: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> Tensor:
    """The global batch of ``step``: epochs are seeded permutations (the last partial batch dropped)."""
    per_epoch = max(1, n // batch_size)
    epoch, k = divmod(step, per_epoch)
    return epoch_order(n, epoch, seed)[k * batch_size:(k + 1) * batch_size]


def augment(x: Tensor, dc: DataConfig, step: int, seed: int) -> Tensor:
    """Random crop of the zero-padded image and horizontal flip, drawn from the step's generator."""
    g = torch.Generator().manual_seed(seed * 7_919 + step * 104_729 + 1)
    b, _, h, w = x.shape
    p = dc.crop_pad
    if p > 0:
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        oy = torch.randint(0, 2 * p + 1, (b,), generator=g)
        ox = torch.randint(0, 2 * p + 1, (b,), generator=g)
        x = torch.stack([padded[i, :, oy[i]:oy[i] + h, ox[i]:ox[i] + w] for i in range(b)])
    if dc.hflip:
        flip = torch.rand(b, generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x
