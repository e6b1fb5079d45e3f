"""Vision evaluation (test-set metrics) and prediction (top-k labels of image files).

``evaluate(checkpoint, data)``: ``data`` is the Fashion-MNIST IDX folder (its ``t10k``
files are the test set; the default is ``$LONGSTREAM_DATA/vision/fashion-mnist``) or an
ImageFolder directory (its ``test/`` or ``val/`` sub-folder when present, else the folder
itself) whose class sub-folders are classes of the checkpoint.

``predict(checkpoint, inputs)``: each input is an image file (PNG, JPEG, BMP, GIF, TIFF,
WebP, PGM/PPM) or a ``.npy`` array of pixel intensities ((h, w), (c, h, w) or (h, w, c);
floats in [0, 1], integers in [0, 255]). Images are converted and resized as described
in :mod:`.data`; the top 5 labels with probabilities are returned (and printed as a table
on stderr unless ``--quiet``).

Metric keys (stable): ``accuracy``, ``top5_accuracy``, ``macro_f1``, ``loss`` (cross-entropy
without label smoothing), ``n_test``, and ``per_class_accuracy`` / ``confusion_matrix``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from longstream.pipelines import common

from . import data as D
from .config import Config, DataConfig
from .model import from_pretrained

METRIC_KEYS = ["accuracy", "top5_accuracy", "macro_f1", "loss", "n_test"]
DEFAULT_CHECKPOINT = "vision/vim-fmnist"
TOP_K = 5
EXAMPLE_INPUTS = [str(common.DEMOS_DIR / "vision" / n) for n in ("trouser.png", "sneaker.png", "bag.png")]


@torch.no_grad()
def evaluate_split(model, split: D.Split, cfg: Config, *, device: str = "cpu", with_report: bool = True) -> dict[str, Any]:
    """Metrics of ``model`` on ``split`` (uint8 images, normalised here in batches)."""
    model.eval()
    bs = cfg.train.eval_batch_size
    logits = torch.cat([model(D.normalize(split.x[i:i + bs], cfg.data).to(device)).float().cpu()
                        for i in range(0, len(split.x), bs)])
    common.check_finite_output(logits, source=split.source, model_input=split.x.float())
    y, pred = split.y, logits.argmax(-1)
    out: dict[str, Any] = {
        "accuracy": common.accuracy(y, pred),
        "top5_accuracy": common.top_k_accuracy(y, logits, min(5, logits.shape[1])),
        "macro_f1": common.macro_f1(y, pred, labels=list(range(logits.shape[1]))),
        "loss": float(F.cross_entropy(logits, y)),
        "n_test": int(len(y)),
    }
    if with_report:
        cm = common.confusion_matrix(y, pred, n_classes=logits.shape[1])
        out["per_class_accuracy"] = {name: (row[i] / sum(row) if sum(row) else None)
                                     for i, (name, row) in enumerate(zip(cfg.data.class_names, cm))}
        out["confusion_matrix"] = cm
    return common.check_finite_result(out)


def evaluate(checkpoint: str, data: str | None = None) -> dict[str, Any]:
    """Test-set metrics of ``checkpoint`` on ``data`` (default: the Fashion-MNIST test set)."""
    model = from_pretrained(checkpoint)
    cfg: Config = model.cfg
    split = D.load_split(cfg, "test", override=data)
    return evaluate_split(model, split, cfg)


# ---------------------------------------------------------------------------- predict
def _load_array(path: Path, dc: DataConfig) -> torch.Tensor:
    """A ``.npy`` array of pixel intensities -> (c, s, s) uint8, every value checked."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise common.UserError(f"array {path}: not a readable .npy file ({e}); save it with numpy.save") from e
    if arr.dtype.kind not in "fiub" or arr.ndim not in (2, 3):
        raise common.UserError(f"array {path}: dtype {arr.dtype} shape {arr.shape}; expected a numeric (h, w), "
                               "(c, h, w) or (h, w, c) image")
    if arr.ndim == 3 and arr.shape[0] not in (1, 3, 4) and arr.shape[-1] in (1, 3, 4):
        arr = np.moveaxis(arr, -1, 0)
    if arr.ndim == 3 and arr.shape[0] not in (1, 3, 4):
        raise common.UserError(f"array {path}: shape {arr.shape} has no channel axis of 1, 3 or 4")
    if arr.shape[-1] * arr.shape[-2] > D.MAX_PIXELS:
        raise common.UserError(f"array {path}: {arr.shape[-1]}x{arr.shape[-2]} is more than the "
                               f"{D.MAX_PIXELS // 10**6} Mpx limit; downscale it first")
    x = common.to_model_dtype(arr, source=f"array {path}", locate=lambda i: f"pixel {list(i)}")
    hi = 1.0 if arr.dtype.kind == "f" else 255.0
    bad = (x < 0) | (x > hi)
    if bool(bad.any()):
        i = tuple(int(v) for v in np.argwhere(bad.numpy())[0])
        raise common.UserError(f"array {path}: pixel {list(i)} is {float(arr[i]):g}, outside [0, {hi:g}]; "
                               f"{'float' if hi == 1 else 'integer'} arrays hold intensities in [0, {hi:g}]")
    from PIL import Image

    u8 = (x * (255.0 / hi)).round().clamp(0, 255).to(torch.uint8).numpy()
    if u8.ndim == 3:
        u8 = u8[0] if u8.shape[0] == 1 else u8[:3].transpose(1, 2, 0)
    return D.image_to_tensor(Image.fromarray(u8), dc)


def load_input(spec: str, dc: DataConfig) -> torch.Tensor:
    """One predict input (image file or ``.npy``) -> (c, s, s) uint8."""
    p = Path(spec)
    if p.suffix.lower() == ".npy" and p.is_file():
        return _load_array(p, dc)
    return D.load_image(p, dc)


def predict(checkpoint: str, inputs: list[str], out: str | None = None) -> list[dict[str, Any]]:
    """Top-5 labels with probabilities for every image in ``inputs``."""
    if not inputs:
        raise common.UserError("predict needs at least one image file")
    model = from_pretrained(checkpoint)
    cfg: Config = model.cfg
    xs = torch.stack([load_input(s, cfg.data) for s in inputs])  # every input read before any work
    x = D.normalize(xs, cfg.data)
    with torch.no_grad():
        model.eval()
        logits = model(x).float()
    common.check_finite_output(logits, source=[f"image {s}" for s in inputs], model_input=x)
    probs = torch.softmax(logits, -1)
    k = min(TOP_K, probs.shape[1])
    top = probs.topk(k, -1)
    names = cfg.data.class_names
    result = [{"input": s, "top": [{"label": names[int(i)], "probability": round(float(p), 6)}
                                   for p, i in zip(top.values[r], top.indices[r])]}
              for r, s in enumerate(inputs)]
    if not common.is_quiet():
        for r in result:
            print(r["input"], file=sys.stderr)
            for t in r["top"]:
                print(f"  {t['probability']:7.2%}  {t['label']}", file=sys.stderr)
    return result


def make_extreme(spec: str, value: float, tmp_dir: Path) -> str:
    """Contract hook: ``spec`` (an image) as a ``.npy`` float array in [0, 1] whose centre pixel is ``value``."""
    dc = DataConfig()
    arr = D.load_image(spec, dc).numpy()[0].astype(np.float64) / 255.0
    arr[arr.shape[0] // 2, arr.shape[1] // 2] = value
    out = Path(tmp_dir) / (Path(spec).stem + "-extreme.npy")
    np.save(out, arr)
    return str(out)
