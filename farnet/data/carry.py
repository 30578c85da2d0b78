"""A carry: a prepared dataset packed into one file, to copy with the code to a machine that has no data mirror
(a GPU node or cloud box running ``farnet replicate``, or node-local disk). By default a carry is kept under
50 MiB, so that it travels as easily as the code.

The format: this module packs and reads a carry; ``farnet carry build`` (:mod:`farnet.commands.carry`) fetches
and prepares a dataset and packs it. A carry is a zip file. Its images are compressed already and are stored as they are; the rest is deflated:

- ``carry.json``: what the carry holds and how it was made (:func:`pack_carry`): its form (``lossless`` or
  ``lossy``), codec and quality, the measured mean and largest absolute grey-level difference of the decoded
  images from the prepared cache (0 for a lossless form), every codec tried with its size, the sha256 of the
  cache's images (and of the decoded ones), and the source: the fetch summary and the sha256 of the committed
  manifest the fetched files were checked against;
- ``meta.json``, ``landmarks.npy``: the prepared cache's own files (:mod:`farnet.data.cache`), unchanged: image
  ids, exact original landmarks, spacing and the per-image map back to original pixels;
- ``dataset.json``: the prepared dataset's splits and landmark names (:mod:`farnet.data.views`);
- ``images/NNNN.<ext>``: each cached image, in cache order, in the carry's codec.

:func:`load_carry` decodes a carry into the :class:`~farnet.data.cache.Cache` that :func:`load_cache` returns, and
:func:`unpack_carry` writes it back as a prepared folder (with the carry's description in ``dataset.json``, for
the provenance), so training and evaluation read it with their usual code.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError, features
from tqdm import tqdm

from farnet.data.cache import Cache, cache_from_arrays, load_cache, staged_folder
from farnet.data.views import DATASET_INFO, read_dataset_info
from farnet.core.errors import ConfigError, DataError
from farnet.core.fileio import atomic_write

__all__ = ["CODECS", "CARRY_LIMIT_BYTES", "pack_carry", "read_carry_info", "load_carry",
           "unpack_carry"]

FORMAT = "farnet-carry"
FORMAT_VERSION = 1
#: 56 MiB may travel with the code (its ~4 MiB and what the issue leaves for growth): the carry gets 50 of them
CARRY_LIMIT_BYTES = 50 * 2**20
# deviation: (lossy carries only) the cached images are re-encoded as JPEG where no lossless form fits; carry.json
# records the measured grey-level difference and the provenance lists it as a gap (provenance.replication_gaps)
#: the JPEG qualities the automatic choice tries, best first
AUTO_JPEG_QUALITIES = (95, 92, 90, 85, 80, 75)
_ZIP_ENTRY_BYTES = 128  # a stored image's local header and central directory entry: at most (names are short)
_CARRY_JSON_BYTES = 8192  # carry.json, deflated: at most (its attempts and source are a few hundred bytes each)


@dataclass(frozen=True)
class Codec:
    """How a carry stores its images: a Pillow format, lossless or not."""

    name: str  # "png", "webp" or "jpeg"
    pil_format: str
    suffix: str
    lossless: bool

    def encode(self, image: np.ndarray, quality: int | None = None) -> bytes:
        """(H, W) uint8 -> the file's bytes (``quality`` for a lossy codec, 1..100)."""
        buffer = io.BytesIO()
        options = {"PNG": {"compress_level": 9}, "WEBP": {"lossless": True, "quality": 80, "method": 4},
                   "JPEG": {"quality": quality, "optimize": True}}[self.pil_format]
        Image.fromarray(np.ascontiguousarray(image)).save(buffer, format=self.pil_format, **options)
        return buffer.getvalue()

    def available(self) -> bool:
        """Whether this Pillow can write it (WebP needs libwebp)."""
        return self.pil_format != "WEBP" or bool(features.check("webp"))


CODECS = {c.name: c for c in (Codec("png", "PNG", ".png", True), Codec("webp", "WEBP", ".webp", True),
                              Codec("jpeg", "JPEG", ".jpg", False))}


def decode_image(data: bytes, where: str | Path, member: str) -> np.ndarray:
    """A carry member's bytes -> (H, W) uint8; DataError naming the carry and the member when unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return np.asarray(img if img.mode == "L" else img.convert("L"), dtype=np.uint8)  # WebP decodes RGB
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(where, f"member {member}: not a readable image ({exc})") from exc


# ---- packing --------------------------------------------------------------------------------------------------

def encode_all(images: np.ndarray, codec: Codec, quality: int | None, limit_bytes: int | None = None,
               progress: bool = False) -> list[bytes]:
    """The (H, W) images of ``images`` in ``codec``: all of them, or those up to the first that takes their total
    past ``limit_bytes`` (an encoding that cannot fit is given up early)."""
    encoded, total = [], 0
    label = codec.name + (f" q{quality}" if quality is not None else "")
    for image in tqdm(images, desc=f"encode {label}", unit="img", disable=not progress):
        encoded.append(codec.encode(np.asarray(image), quality))
        total += len(encoded[-1])
        if limit_bytes is not None and total > limit_bytes:
            break
    return encoded


def choose_encoding(images: np.ndarray, codec: str, quality: int | None, image_budget: int, where: str | Path,
                    progress: bool = False) -> tuple[Codec, int | None, list[bytes], list[dict]]:
    """The images in the codec asked for, or with ``codec="auto"`` in the first form that fits ``image_budget``
    bytes: PNG, then lossless WebP, then JPEG at the qualities of :data:`AUTO_JPEG_QUALITIES`, best first (an
    attempt stops as soon as it passes the budget).

    Returns:
        The codec, its quality, the encoded images and every attempt: ``codec``, ``quality``, ``fits``, ``bytes``
        and ``images_encoded`` (all, or as many as had been encoded when it was given up) and
        ``estimated_bytes`` (for all the images, extrapolated from those).

    Raises:
        DataError: naming ``where`` (the carry to write), when no codec tried fits.
        ConfigError: an unknown codec, or a lossy one without a quality.
    """
    if codec == "auto":
        tries = [(CODECS["png"], None), (CODECS["webp"], None)]
        tries += [(CODECS["jpeg"], q) for q in ((quality,) if quality is not None else AUTO_JPEG_QUALITIES)]
    else:
        if codec not in CODECS:
            raise ConfigError(f"--codec: {codec!r} is not one of auto, {', '.join(CODECS)}")
        if not CODECS[codec].lossless and quality is None:
            raise ConfigError(f"--codec {codec} is lossy: give --quality (1..100)")
        tries = [(CODECS[codec], None if CODECS[codec].lossless else quality)]
    attempts = []
    for candidate, q in tries:
        if not candidate.available():
            attempts.append({"codec": candidate.name, "quality": q, "fits": False, "note": "not supported by Pillow"})
            continue
        encoded = encode_all(images, candidate, q, image_budget, progress)
        total = sum(map(len, encoded))
        fits = len(encoded) == len(images) and total <= image_budget
        attempts.append({"codec": candidate.name, "quality": q, "fits": fits, "bytes": total,
                         "images_encoded": len(encoded), "estimated_bytes": round(total * len(images) / len(encoded))})
        if fits:
            return candidate, q, encoded, attempts
    raise DataError(where, f"the images fit in no codec tried within the limit ({image_budget} bytes for them): "
                      + "; ".join(f"{a['codec']}{'' if a['quality'] is None else ' q' + str(a['quality'])}: "
                                  f"{a.get('estimated_bytes', a.get('note'))}" for a in attempts))


def grey_difference(images: np.ndarray, encoded: Sequence[bytes], where: str | Path) -> dict:
    """How far the decoded images are from ``images``: mean and largest absolute grey-level difference, and the
    sha256 of the decoded pixels."""
    total, largest, digest = 0, 0, hashlib.sha256()
    for i, (image, data) in enumerate(zip(images, encoded)):
        decoded = decode_image(data, where, f"image {i}")
        diff = np.abs(decoded.astype(np.int16) - np.asarray(image, dtype=np.int16))
        total += int(diff.sum())
        largest = max(largest, int(diff.max()))
        digest.update(decoded.tobytes())
    return {"mean_abs_diff": total / images.size, "max_abs_diff": largest, "decoded_sha256": digest.hexdigest()}


def pack_carry(prepared_dir: str | Path, out: str | Path, *, codec: str = "auto", quality: int | None = None,
               max_bytes: int = CARRY_LIMIT_BYTES, source: dict | None = None, progress: bool = True) -> dict:
    """Pack a prepared dataset folder (cache + ``dataset.json``) into the carry file ``out``.

    Args:
        codec: "png" or "webp" (lossless), "jpeg" (lossy, needs ``quality``), or "auto": the first that fits,
            lossless first (:func:`choose_encoding`).
        max_bytes: the largest carry allowed.
        source: where the data came from, recorded in ``carry.json``.

    Returns:
        The carry's description (``carry.json``), with its size in ``bytes``.

    Raises:
        DataError: naming ``out``, when the carry would exceed ``max_bytes`` (nothing is written).
        ConfigError: an unknown codec, or a lossy one without a quality.
    """
    prepared_dir, out = Path(prepared_dir), Path(out)
    cache = load_cache(prepared_dir)
    members = {"meta.json": json.dumps(cache.meta).encode(), DATASET_INFO: (prepared_dir / DATASET_INFO).read_bytes(),
               "landmarks.npy": _npy_bytes(cache.landmarks)}
    # what is not images: those members as zipped, room for carry.json, and each image's zip records
    fixed = len(_zip_bytes(members)) + _CARRY_JSON_BYTES + _ZIP_ENTRY_BYTES * len(cache)
    chosen, chosen_quality, encoded, attempts = choose_encoding(cache.images, codec, quality, max_bytes - fixed,
                                                                out, progress)
    info = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "dataset": read_dataset_info(prepared_dir)["dataset"],
        "input_hw": list(cache.input_hw), "n_images": len(cache),
        "form": "lossless" if chosen.lossless else "lossy", "codec": chosen.name, "quality": chosen_quality,
        **grey_difference(cache.images, encoded, out), "images_sha256": _sha256_images(cache.images),
        "image_bytes": sum(map(len, encoded)), "attempts": attempts, "source": source or {},
        "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    members = {"carry.json": json.dumps(info, indent=2).encode(), **members}
    members.update({_image_member(i, chosen): data for i, data in enumerate(encoded)})
    data = _zip_bytes(members)
    if len(data) > max_bytes:
        raise DataError(out, f"the carry would be {len(data)} bytes ({len(data) / 2**20:.1f} MiB), over the limit of "
                             f"{max_bytes} bytes ({max_bytes / 2**20:.1f} MiB); use --codec auto, a lower --quality "
                             f"or a larger --max-mib")
    atomic_write(out, lambda fh: fh.write(data))
    return {**info, "bytes": len(data)}


def _image_member(index: int, codec: Codec) -> str:
    return f"images/{index:04d}{codec.suffix}"


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array))
    return buffer.getvalue()


def _sha256_images(images: np.ndarray) -> str:
    digest = hashlib.sha256()
    for image in images:
        digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    """A zip of ``members``: images stored as they are (compressed already), the rest deflated."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            compress = zipfile.ZIP_STORED if name.startswith("images/") else zipfile.ZIP_DEFLATED
            zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data, compress_type=compress)
    return buffer.getvalue()


# ---- reading --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Opened:
    """A carry's members, read and checked."""

    info: dict
    meta: dict
    dataset_info: dict
    landmarks: np.ndarray
    images: np.ndarray  # (N, H, W) uint8, decoded


def read_carry_info(path: str | Path) -> dict:
    """A carry's ``carry.json`` (what it is, its form and source), without decoding its images.

    Raises:
        DataError: naming the file, when it is missing, not a zip, lacks a member or is not a carry.
    """
    with _open_zip(Path(path)) as zf:
        return _read_info(zf, Path(path))


def load_carry(path: str | Path, progress: bool = False) -> Cache:
    """Decode a carry into the :class:`~farnet.data.cache.Cache` that ``load_cache`` gives for its prepared
    folder (images in memory instead of memory-mapped).

    Raises:
        DataError: naming the carry (and member), when it is incomplete, unreadable or inconsistent, or a
            lossless carry does not decode to the images it was made from.
    """
    opened = _read(Path(path), progress)
    return cache_from_arrays(opened.meta, opened.images, opened.landmarks, path)


def unpack_carry(path: str | Path, prepared_dir: str | Path, progress: bool = False) -> dict:
    """Write a carry back as a prepared dataset folder (cache files and ``dataset.json``, whose ``carry`` entry
    describes the carry for the provenance); the folder is replaced whole, never left half-written.

    Returns:
        That ``carry`` entry: the carry's description and ``decoded_identical``, whether the images decoded here
        are bit for bit those decoded where it was built (a lossy codec's decoder may differ in the last bits).
    """
    path, prepared_dir = Path(path), Path(prepared_dir)
    opened = _read(path, progress)
    cache_from_arrays(opened.meta, opened.images, opened.landmarks, path)  # members agree before anything is written
    carry = {**{k: v for k, v in opened.info.items() if k != "attempts"}, "file": path.name,
             "decoded_identical": _sha256_images(opened.images) == opened.info["decoded_sha256"]}
    with staged_folder(prepared_dir) as tmp:
        np.save(tmp / "images.npy", opened.images)
        np.save(tmp / "landmarks.npy", opened.landmarks)
        (tmp / "meta.json").write_text(json.dumps(opened.meta) + "\n")
        (tmp / DATASET_INFO).write_text(json.dumps({**opened.dataset_info, "carry": carry}, indent=2) + "\n")
    return carry


def _open_zip(path: Path) -> zipfile.ZipFile:
    if not path.is_file():
        raise DataError(path, "carry not found (make one with `farnet carry build --out PATH`)")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(path, f"not a carry: not a readable zip file ({exc})") from exc


def _member(zf: zipfile.ZipFile, name: str, path: Path) -> bytes:
    try:
        return zf.read(name)
    except KeyError:
        raise DataError(path, f"not a complete carry: missing member {name}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:  # a truncated file or a bad CRC
        raise DataError(path, f"member {name} is unreadable: {exc}") from exc


def _json_member(zf: zipfile.ZipFile, name: str, path: Path) -> dict:
    try:
        value = json.loads(_member(zf, name, path))
    except json.JSONDecodeError as exc:
        raise DataError(path, f"member {name}: not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise DataError(path, f"member {name}: expected a JSON object")
    return value


def _read_info(zf: zipfile.ZipFile, path: Path) -> dict:
    info = _json_member(zf, "carry.json", path)
    if info.get("format") != FORMAT or info.get("format_version") != FORMAT_VERSION:
        raise DataError(path, f"member carry.json: not a {FORMAT} version {FORMAT_VERSION} "
                              f"(format {info.get('format')!r}, version {info.get('format_version')!r})")
    missing = [k for k in ("codec", "form", "n_images", "input_hw", "images_sha256", "decoded_sha256") if k not in info]
    if missing or info["codec"] not in CODECS:
        raise DataError(path, f"member carry.json: missing {missing} or unknown codec {info.get('codec')!r}")
    return info


def _read(path: Path, progress: bool) -> _Opened:
    with _open_zip(path) as zf:
        info = _read_info(zf, path)
        meta = _json_member(zf, "meta.json", path)
        dataset_info = _json_member(zf, DATASET_INFO, path)
        try:
            landmarks = np.load(io.BytesIO(_member(zf, "landmarks.npy", path)), allow_pickle=False)
        except ValueError as exc:
            raise DataError(path, f"member landmarks.npy: not a numpy array ({exc})") from exc
        codec = CODECS[info["codec"]]
        images = np.empty((int(info["n_images"]), *info["input_hw"]), dtype=np.uint8)  # (N, H, W)
        for i in tqdm(range(len(images)), desc="unpack", unit="img", disable=not progress):
            images[i] = _decoded(zf, _image_member(i, codec), path, info["input_hw"])
    if info["form"] == "lossless" and _sha256_images(images) != info["images_sha256"]:
        raise DataError(path, "a lossless carry decoded to other images than it was made from (sha256 differs)")
    return _Opened(info, meta, dataset_info, landmarks, images)


def _decoded(zf: zipfile.ZipFile, name: str, path: Path, input_hw: Sequence[int]) -> np.ndarray:
    image = decode_image(_member(zf, name, path), path, name)
    if image.shape != tuple(input_hw):
        raise DataError(path, f"member {name} decodes to {image.shape[0]}x{image.shape[1]}, not the carry's "
                              f"{input_hw[0]}x{input_hw[1]} (H x W)")
    return image
