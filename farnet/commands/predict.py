"""``farnet predict``: landmarks for new images with a trained model.

    farnet predict IMAGE... --model models/farnet/model.pt [--out predictions] [--spacing-mm S]
                   [--device cpu|cuda] [--batch-size 4] [--decode argmax|subpixel] [--min-confidence 0.25]
                   [--keep-going] [--compile]

The network is rebuilt from the checkpoint's own metadata (``meta.params["model"]``, ``num_landmarks``,
``input_hw``), never from ``params.yaml``, so a model file is self-contained. Each image (BMP, PNG, JPEG, 8- or
16-bit PNG/TIFF, DICOM; see :mod:`farnet.data.imageio`) is read as 8-bit grey, resized to ``input_hw`` as in
training, and the decoded landmarks are mapped back to the ORIGINAL image's pixels with
x = (x_in + 0.5)·W/W_in − 0.5 (likewise y). For each image ``<stem>.csv``, ``<stem>.json`` and
``<stem>_overlay.png`` (landmarks numbered from 1) are written to ``--out``; the three are written to temporary
files first and renamed together, so a failure (a full disk) leaves no partial output.

Millimetres, when a spacing is known, in this order: the DICOM header (Pixel Spacing, else Imager Pixel
Spacing), ``--spacing-mm``, the model's dataset default (ISBI 2015: 0.1 mm per pixel of its 1935×2400 images;
a warning is printed for an image of another size); otherwise only pixel columns are written.

Each landmark also gets a ``confidence``: the maximum of its heatmap. The network is trained towards Gaussians of
peak 1, so a trained network peaks near 1 where it finds a landmark and near 0 where it finds nothing (a flat or
foreign image). A warning is printed, and kept in the JSON, for an image with a landmark below
``--min-confidence`` (default :data:`MIN_CONFIDENCE` = 0.25: a peak spread over twice the target's width in x and
y has a quarter of its height), and for an image whose aspect ratio differs from the model's input by more than
:data:`MAX_ASPECT_CHANGE` (it is stretched to the input size). Such images still get their files and exit
status 0: the warning says which to check.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from farnet.data.imageio import exif_orientation_note, map_points, read_image_with_spacing, resize_grayscale
from farnet.data.registry import DATASETS
from farnet.core.errors import ConfigError, DataError, FarnetError, WriteError
from farnet.core.fastpath import default_device, parse_device, resolve
from farnet.evaluation.loop import locate_batch
from farnet.models.interface import INFERENCE_PATHS, describe_inference, inference_network
from farnet.models.trained import TrainedModel, load_trained_model

__all__ = ["TrainedModel", "Prediction", "load_trained_model", "predict_images", "write_prediction",
           "add_arguments", "run", "MIN_CONFIDENCE", "MAX_ASPECT_CHANGE"]

MIN_CONFIDENCE = 0.25  # heatmap maximum below which a landmark is reported as not found (module text)
MAX_ASPECT_CHANGE = 2.0  # an image stretched by more than this factor in aspect ratio gets a warning


@dataclass(frozen=True)
class Prediction:
    """Landmarks of one image in its original pixels.

    Attributes:
        image_path: the input file.
        image: (H, W) uint8, the image as read.
        landmarks_px: (K, 2) float64 (x, y) in original pixels.
        spacing_mm: (x, y) mm per pixel, or None.
        spacing_source: where the spacing came from ("dicom header", "--spacing-mm", "model default"), or None.
        confidence: (K,) float64, each landmark's heatmap maximum (NaN where the heatmap is not finite).
        warnings: what the user should check about this image (spacing, shape, low confidence).
        inference: how it was predicted (:func:`farnet.models.interface.describe_inference`).
    """

    image_path: Path
    image: np.ndarray
    landmarks_px: np.ndarray
    spacing_mm: tuple[float, float] | None
    spacing_source: str | None
    confidence: np.ndarray
    warnings: tuple[str, ...] = ()
    inference: dict | None = None

    @property
    def landmarks_mm(self) -> np.ndarray | None:
        """(K, 2) positions in mm from the image's (0, 0) pixel centre, or None without a spacing."""
        return None if self.spacing_mm is None else self.landmarks_px * np.asarray(self.spacing_mm)


def resolve_spacing(header_mm: tuple[float, float] | None, argument_mm: float | None, meta: dict,
                    image_wh: tuple[int, int]) -> tuple[tuple[float, float] | None, str | None, str | None]:
    """(spacing (x, y) mm, its source, a warning or None): DICOM header, else ``--spacing-mm``, else the model's
    dataset default."""
    if header_mm is not None:
        return header_mm, "dicom header", None
    if argument_mm is not None:
        return (argument_mm, argument_mm), "--spacing-mm", None
    dataset = meta.get("dataset")
    spec = DATASETS.get(dataset)
    default, original_wh = spec.spacing if spec is not None and spec.spacing else (None, None)
    if meta.get("spacing_mm"):
        default = float(meta["spacing_mm"])
        original_wh = tuple(meta["spacing_original_wh"]) if meta.get("spacing_original_wh") else original_wh
    if default is None:
        return None, None, None
    warning = None
    if original_wh is None:  # a model of an own dataset whose images differ in size, or one from before sizes
        warning = (f"assuming the {dataset} model's spacing of {default:g} mm per pixel, with no image size to "
                   "check this image against: pass --spacing-mm if its pixels differ")
    elif tuple(image_wh) != tuple(original_wh):
        warning = (f"assuming the {dataset} spacing of {default:g} mm per pixel of its {original_wh[0]}x"
                   f"{original_wh[1]} images, but this image is {image_wh[0]}x{image_wh[1]}: pass --spacing-mm")
    return (default, default), f"model default ({dataset})", warning


def shape_warning(image_wh: tuple[int, int], input_hw: tuple[int, int]) -> str | None:
    """A warning when resizing to the model's input changes the image's aspect ratio by more than
    :data:`MAX_ASPECT_CHANGE` (a 5000x1 strip, a portrait image for a landscape model), else None."""
    (w, h), (h_in, w_in) = image_wh, input_hw
    change = (w / h) / (w_in / h_in)
    if 1 / MAX_ASPECT_CHANGE <= change <= MAX_ASPECT_CHANGE:
        return None
    return (f"the image is {w}x{h} but the model's input is {w_in}x{h_in}: stretching changes its aspect ratio "
            f"{max(change, 1 / change):.3g}-fold, so the landmarks are unlikely to mean anything")


def confidence_warning(confidence: np.ndarray, names: Sequence[str], min_confidence: float) -> str | None:
    """A warning naming the landmarks whose heatmap maximum is below ``min_confidence`` (or not finite)."""
    low = [f"{name} ({value:.2g})" for name, value in zip(names, confidence) if not value >= min_confidence]
    if not low:
        return None
    shown = ", ".join(low[:5]) + (f" and {len(low) - 5} more" if len(low) > 5 else "")
    return (f"low confidence: {len(low)} of {len(names)} landmarks have a heatmap maximum below {min_confidence:g} "
            f"({shown}); the network found little it recognises in this image: check the image and the model")


def predict_images(trained: TrainedModel, paths: Sequence[str | Path], *, batch_size: int = 4,
                   device: str | torch.device = "cpu", spacing_mm: float | None = None, decode: str = "argmax",
                   progress: bool = True, errors: list | None = None,
                   min_confidence: float = MIN_CONFIDENCE, path: str = "eager") -> Iterator[Prediction]:
    """Predict the landmarks of each image file, in order, ``batch_size`` images per forward pass.

    Args:
        errors: when given, a file that cannot be read is appended to it as ``(path, DataError)`` and skipped;
            otherwise its DataError is raised.
        min_confidence: a landmark whose heatmap maximum is below this gets the image a warning.
        path: "eager" or "compile" (:func:`farnet.models.interface.inference_network`).

    Yields:
        One :class:`Prediction` per readable image.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    h_in, w_in = trained.input_hw
    if path not in INFERENCE_PATHS:
        raise ConfigError(f"inference path {path!r} is not one of {', '.join(INFERENCE_PATHS)}")
    # the fast path this device runs natively (bf16 autocast + channels_last where it has native bf16, as the
    # evaluation measured the model; fp32 elsewhere)
    network = inference_network(trained.model, device, resolve("auto", "auto", device), path)
    bar = tqdm(total=len(paths), unit="image", desc="predict", disable=not progress, dynamic_ncols=True)
    try:
        for start in range(0, len(paths), batch_size):
            batch = []
            for path in map(Path, paths[start:start + batch_size]):
                try:
                    image, header_mm = read_image_with_spacing(path)
                except DataError as err:
                    if errors is None:
                        raise
                    errors.append((path, err))
                    bar.update(1)
                    continue
                batch.append((path, image, header_mm))
            if not batch:
                continue
            inputs = np.stack([resize_grayscale(image, (h_in, w_in)) for _, image, _ in batch])  # (B, H_in, W_in)
            pred_in, peaks = locate_batch(network, inputs, device, (decode,), peaks=True,
                                          pad_to=batch_size)  # (B, K, 2), (B, K)
            for (path, image, header_mm), points, confidence in zip(batch, pred_in[decode], peaks):
                wh = (image.shape[1], image.shape[0])
                points_px = map_points(points, (w_in, h_in), wh)  # x = (x_in + 0.5)·W/W_in − 0.5
                spacing, source, warning = resolve_spacing(header_mm, spacing_mm, trained.meta, wh)
                warnings = tuple(w for w in (warning, exif_orientation_note(path), shape_warning(wh, (h_in, w_in)),
                                             confidence_warning(confidence, trained.landmark_names, min_confidence))
                                 if w)
                for text in warnings:
                    tqdm.write(f"{path}: warning: {text}", file=sys.stderr)
                bar.update(1)
                yield Prediction(path, image, points_px, spacing, source, confidence, warnings,
                                 describe_inference(network))
    finally:
        bar.close()


# ---- output files --------------------------------------------------------------------------------------------

def output_paths(image_path: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """The files written for one image: ``csv``, ``json`` and ``overlay``."""
    stem, out_dir = Path(image_path).stem, Path(out_dir)
    return {"csv": out_dir / f"{stem}.csv", "json": out_dir / f"{stem}.json",
            "overlay": out_dir / f"{stem}_overlay.png"}


def write_prediction(pred: Prediction, trained: TrainedModel, out_dir: str | Path, decode: str = "argmax",
                     min_confidence: float = MIN_CONFIDENCE) -> list[Path]:
    """Write ``<stem>.csv``, ``<stem>.json`` and ``<stem>_overlay.png`` for one prediction, all or none.

    Each landmark row ends with its ``confidence`` (heatmap maximum; empty in the CSV, null in the JSON, where
    it is not finite); the JSON also lists the image's warnings and the threshold they used.

    Raises:
        WriteError: a file could not be written; none of the three is left half-written, no temporary remains.
    """
    paths = output_paths(pred.image_path, out_dir)
    names = trained.landmark_names
    mm = pred.landmarks_mm
    rows = []
    for i, (name, (x, y)) in enumerate(zip(names, pred.landmarks_px)):
        row = {"number": i + 1, "name": name, "x_px": round(float(x), 4), "y_px": round(float(y), 4)}
        if mm is not None:
            row.update(x_mm=round(float(mm[i, 0]), 5), y_mm=round(float(mm[i, 1]), 5))
        confidence = float(pred.confidence[i])
        row["confidence"] = round(confidence, 4) if np.isfinite(confidence) else None
        rows.append(row)
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    meta = trained.meta
    document = {
        "image": str(pred.image_path),
        "width": int(pred.image.shape[1]), "height": int(pred.image.shape[0]),
        "coordinates": "original image pixels (x, y), 0-based, pixel centres at integers; mm = px * spacing",
        "spacing_mm": list(pred.spacing_mm) if pred.spacing_mm is not None else None,
        "spacing_source": pred.spacing_source,
        "decode": decode,
        "inference": pred.inference,
        "model": {"file": str(trained.path), "dataset": meta.get("dataset"), "backbone": meta.get("backbone"),
                  "input_hw": list(trained.input_hw), "selected_epoch": meta.get("selected_epoch"),
                  "git_commit": meta.get("git_commit")},
        "confidence": f"heatmap maximum per landmark (trained towards 1); warned below {min_confidence:g}",
        "warnings": list(pred.warnings),
        "landmarks": rows,
    }
    files = {paths["csv"]: table.getvalue().encode(),
             paths["json"]: (json.dumps(document, indent=2) + "\n").encode(),
             paths["overlay"]: overlay_png(pred.image, pred.landmarks_px)}
    return _write_all(files)


def overlay_png(image: np.ndarray, points_xy: np.ndarray) -> bytes:
    """PNG bytes of the image (original size) with each landmark marked and numbered from 1."""
    height, width = image.shape
    canvas = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    radius = max(2, round(max(width, height) / 300))
    try:
        font = ImageFont.load_default(size=max(10, round(max(width, height) / 70)))
    except TypeError:  # Pillow without FreeType: fixed-size bitmap font
        font = ImageFont.load_default()
    for number, (x, y) in enumerate(points_xy, start=1):
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=(255, 0, 0), outline=(255, 255, 255))
        left, top, right, bottom = draw.textbbox((0, 0), str(number), font=font, stroke_width=1)
        tx = x + radius + 1 if x + radius + 1 + right <= width else x - radius - 1 - right  # keep it inside
        ty = min(max(y - radius - 1, -top), height - bottom)
        draw.text((tx, ty), str(number), fill=(255, 255, 0), font=font, stroke_width=1, stroke_fill=(0, 0, 0))
    buffer = io.BytesIO()
    canvas.save(buffer, "PNG")
    return buffer.getvalue()


def _write_bytes(fh, data: bytes) -> None:
    fh.write(data)


def _write_all(files: dict[Path, bytes]) -> list[Path]:
    """Write every file to a temporary file beside it, then rename them all; on any failure remove the temps."""
    temps: dict[Path, str] = {}
    current = next(iter(files))
    try:
        for path, data in files.items():
            current = path
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temps[path] = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as fh:
                _write_bytes(fh, data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(temps[path], 0o644)
        for path, tmp in temps.items():
            current = path
            os.replace(tmp, path)
    except BaseException as exc:
        for tmp in temps.values():
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise WriteError(current, f"cannot write: {exc}") from exc
        raise
    return list(files)


# ---- command line --------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                        help="image files: BMP, PNG, JPEG, 8/16-bit PNG or TIFF, DICOM")
    parser.add_argument("--model", required=True, type=Path, metavar="CHECKPOINT",
                        help="trained model file (models/<run>/model.pt)")
    parser.add_argument("--out", type=Path, default=Path("predictions"),
                        help="output folder for <stem>.csv, <stem>.json, <stem>_overlay.png (default: predictions)")
    parser.add_argument("--spacing-mm", type=float, default=None, metavar="S",
                        help="mm per pixel for images whose header gives none (DICOM headers take precedence)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: $FARNET_DEVICE, else "
                                                       "cuda when available, else cpu)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default: 4)")
    parser.add_argument("--decode", choices=("argmax", "subpixel"), default="argmax",
                        help="heatmap decoding: argmax (the paper) or subpixel (default: argmax)")
    parser.add_argument("--min-confidence", type=float, default=MIN_CONFIDENCE, metavar="C",
                        help="warn about an image with a landmark whose heatmap maximum is below C (trained "
                             f"towards 1; default: {MIN_CONFIDENCE:g})")
    parser.add_argument("--keep-going", action="store_true",
                        help="skip unreadable images (listed at the end, exit status 1) instead of stopping")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing output files that an earlier `farnet predict` did not write")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--compile", action="store_true",
                        help="compile the network for inference (torch.compile with freezing): faster per image, "
                             "but compiling takes a minute or more, so it pays off over many images (docs/speed.md)")


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.spacing_mm is not None and not (np.isfinite(args.spacing_mm) and args.spacing_mm > 0):
        raise ConfigError(f"--spacing-mm must be a positive number, got {args.spacing_mm}")
    if not (np.isfinite(args.min_confidence) and 0 <= args.min_confidence <= 1):
        raise ConfigError(f"--min-confidence must be in [0, 1], got {args.min_confidence}")
    images = list(args.images)
    _check_outputs(images, args.out, overwrite=args.overwrite)
    device = parse_device(args.device, "--device") if args.device else default_device()
    trained = load_trained_model(args.model, device=device)
    errors: list | None = [] if args.keep_going else None
    written = 0
    for pred in predict_images(trained, images, batch_size=args.batch_size, device=device,
                               spacing_mm=args.spacing_mm, decode=args.decode, progress=not args.no_progress,
                               errors=errors, min_confidence=args.min_confidence,
                               path="compile" if args.compile else "eager"):
        write_prediction(pred, trained, args.out, decode=args.decode, min_confidence=args.min_confidence)
        written += 1
    print(f"wrote landmarks of {written} image(s) to {args.out}")
    for path, err in errors or []:
        print(f"farnet predict: skipped {err}", file=sys.stderr)
    return 1 if errors else 0


def _check_outputs(images: list[Path], out_dir: Path, overwrite: bool = False) -> None:
    """Refuse inputs whose outputs would overwrite each other, an input, or (without ``overwrite``) a file an
    earlier ``farnet predict`` did not write, e.g. an annotation ``151.json`` beside the images."""
    seen: dict[str, Path] = {}
    inputs = {p.resolve() for p in images}
    for image in images:
        if image.stem in seen and seen[image.stem].resolve() != image.resolve():
            raise FarnetError(f"{image} and {seen[image.stem]} would write the same {image.stem}.csv: "
                              "predict them into different --out folders")
        seen[image.stem] = image
        clash = [p for p in output_paths(image, out_dir).values() if p.resolve() in inputs]
        if clash:
            raise FarnetError(f"{image}: its output {clash[0]} would overwrite an input image; choose another --out")
        foreign = [p for p in output_paths(image, out_dir).values() if p.exists()]
        if foreign and not overwrite and not _written_by_predict(output_paths(image, out_dir)["json"]):
            raise FarnetError(f"{image}: its output {foreign[0]} exists and was not written by `farnet predict`; "
                              "choose another --out, or pass --overwrite to replace it")


def _written_by_predict(json_path: Path) -> bool:
    """Whether ``json_path`` is the JSON an earlier ``farnet predict`` wrote (then its CSV and overlay are too)."""
    try:
        document = json.loads(json_path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(document, dict) and str(document.get("coordinates", "")).startswith("original image pixels") \
        and isinstance(document.get("model"), dict) and isinstance(document.get("landmarks"), list)
