"""``farnet export``: a trained model as an ONNX file, with its metadata, checked against ONNX Runtime.

    farnet export --model models/farnet/model.pt --out farnet.onnx [--opset 18] [--no-check]

The exported graph takes what :func:`farnet.data.imageio.read_grayscale` gives, already resized to the model's
input size: ``image``, uint8 (B, 1, H_in, W_in), B free. It normalises inside the graph (/255, grey to three
channels, ImageNet mean/std, docs/design.md §2.2) and returns ``heatmaps``, float32 (B, K, H_in, W_in): FR's full-
resolution heatmaps (:func:`farnet.models.farnet.final_heatmaps`), to be decoded by a per-landmark argmax and mapped back
to original pixels with x = (x_in + 0.5)·W/W_in − 0.5. The checkpoint's metadata (dataset, landmark names,
input size, normalisation, backbone, the full training parameters, commit, selected epoch) and this description
are stored as JSON in the ONNX model's ``metadata_props`` (key ``farnet``).

When ONNX Runtime is installed, the export is checked: its heatmaps for a random batch must match PyTorch's
within ``atol + rtol·max|heatmap|``, or the file is not written.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from farnet.core.errors import FarnetError, WriteError
from farnet.models.interface import HeatmapNetwork
from farnet.models.trained import TrainedModel, load_trained_model

__all__ = ["HeatmapNetwork", "export_onnx", "onnx_parity", "read_onnx_metadata", "add_arguments", "run",
           "METADATA_KEY"]

METADATA_KEY = "farnet"
DEFAULT_OPSET = 18
MIN_OPSET = 18  # torch.onnx's exporter (dynamo=True) writes opset 18 and later: an older one is refused
ATOL, RTOL = 1e-4, 1e-3


class ExportError(FarnetError):
    """The ONNX export failed or does not reproduce the PyTorch model."""


def export_onnx(checkpoint: str | Path, out: str | Path, *, opset: int = DEFAULT_OPSET, check: bool = True,
                seed: int = 0, overwrite: bool = False) -> dict:
    """Export ``checkpoint`` (a trained ``model.pt``) to ``out`` (ONNX), atomically.

    Args:
        opset: ONNX opset version.
        check: compare ONNX Runtime's heatmaps with PyTorch's on a random batch of two (skipped, with
            ``"parity": None`` in the result, when onnxruntime is not installed).
        seed: seed of that random batch.
        overwrite: replace an existing ``out`` that is not an export of this command (one that is is replaced).

    Returns:
        ``{"path", "parity"}``: the file written and the check's result (see :func:`onnx_parity`) or None.

    Raises:
        DataError: the checkpoint is missing or not a trained model file.
        ExportError: the export failed or ONNX Runtime's heatmaps differ from PyTorch's.
        WriteError: ``out`` could not be written; nothing is left behind.
    """
    import onnx  # noqa: F401  (without it, fail before the checkpoint is loaded)

    _check_out(Path(checkpoint), Path(out), overwrite)
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset}: the exporter writes opset {MIN_OPSET} and later, not {opset}; "
                          f"use --opset {MIN_OPSET} or more")
    trained = load_trained_model(checkpoint, device="cpu")
    out = Path(out)
    net = HeatmapNetwork(trained.model).eval()  # fp32, NCHW: what ONNX Runtime reproduces
    h, w = trained.input_hw
    example = torch.randint(0, 256, (2, 1, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    with _scratch_folder(out) as workdir:
        try:
            final = _write_model(trained, net, example, workdir, opset)
            parity = None
            if check and importlib.util.find_spec("onnxruntime") is not None:
                parity = onnx_parity(net, final, example)
                if not parity["ok"]:
                    raise ExportError(f"{trained.path}: ONNX Runtime's heatmaps differ from PyTorch's by up to "
                                      f"{parity['max_abs_diff']:.3g} (allowed {parity['tolerance']:.3g}); "
                                      f"{out} not written")
            os.replace(final, out)
        except OSError as err:
            raise WriteError(out, f"cannot write: {err}") from err
    return {"path": out, "parity": parity}


def _check_out(checkpoint: Path, out: Path, overwrite: bool) -> None:
    """ExportError when writing ``out`` would destroy something: the model being exported (always), or an existing
    file that is not an earlier export of this command (unless ``overwrite``)."""
    if out.exists() and checkpoint.exists() and out.resolve() == checkpoint.resolve():
        raise ExportError(f"--out {out}: is the model being exported; give the ONNX file another name")
    if out.is_dir():
        raise ExportError(f"--out {out}: is a folder; give the ONNX file's path")
    if out.exists() and not overwrite:
        try:
            read_onnx_metadata(out)
        except Exception:  # noqa: BLE001 - not ONNX, or ONNX without our metadata: not ours to replace
            raise ExportError(f"--out {out}: exists and is not a `farnet export` file; pass --overwrite to replace "
                              "it") from None


@contextmanager
def _scratch_folder(out: Path) -> Iterator[Path]:
    """A hidden folder beside ``out`` for the files on the way to it, removed with what is left in it."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as err:
        raise WriteError(out, f"cannot write: {err}") from err
    try:
        yield workdir
    finally:
        for leftover in workdir.glob("*"):
            leftover.unlink(missing_ok=True)
        workdir.rmdir()


def _write_model(trained: TrainedModel, net: nn.Module, example: torch.Tensor, workdir: Path, opset: int) -> Path:
    """Export ``net`` on ``example`` into ``workdir``, add the metadata and validate it.

    Returns:
        The finished ONNX file, ``workdir/model.onnx``.

    Raises:
        ExportError: the exporter failed or the model it made is invalid.
        OSError: a file could not be written.
    """
    import onnx

    raw = workdir / "raw.onnx"
    try:
        with torch.no_grad():
            torch.onnx.export(net, (example,), raw, dynamo=True, opset_version=opset, input_names=["image"],
                              output_names=["heatmaps"], external_data=False,
                              dynamic_shapes={"image": {0: torch.export.Dim("batch", min=1)}})
    except OSError:
        raise  # a write failure: reported as WriteError by the caller
    except Exception as err:  # the exporter raises many types for unsupported graphs
        raise ExportError(f"{trained.path}: torch.onnx.export failed: {type(err).__name__}: {err}") from err
    model = onnx.load(raw)
    written = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:  # the metadata must state the file's own opset
        raise ExportError(f"{trained.path}: asked for opset {opset}, the exporter wrote {written}")
    set_metadata(model, onnx_metadata(trained, opset))
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"{trained.path}: the exported ONNX model is invalid: {err}") from err
    final = workdir / "model.onnx"
    onnx.save(model, final)
    return final


def onnx_metadata(trained: TrainedModel, opset: int) -> dict:
    """What the ONNX file carries about itself: the checkpoint's metadata plus its inputs and outputs."""
    h, w = trained.input_hw
    return {
        **trained.meta,
        "format": "farnet-onnx-1",
        "opset": opset,
        "source_checkpoint": str(trained.path),
        "input": {"name": "image", "dtype": "uint8", "shape": ["B", 1, h, w],
                  "meaning": "8-bit grey image resized (bilinear) to input_hw; normalised inside the graph"},
        "output": {"name": "heatmaps", "dtype": "float32", "shape": ["B", trained.num_landmarks, h, w],
                   "meaning": "full-resolution heatmaps; landmark k = argmax of channel k, (x, y) in input "
                              "pixels; original pixels: x = (x_in + 0.5) * W / W_in - 0.5"},
    }


def set_metadata(model, meta: dict) -> None:
    """Store ``meta`` as JSON under :data:`METADATA_KEY` in an ONNX model's ``metadata_props``."""
    for prop in list(model.metadata_props):
        if prop.key == METADATA_KEY:
            model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = json.dumps(meta, default=_json_default)


def read_onnx_metadata(path: str | Path) -> dict:
    """The metadata :func:`export_onnx` stored in an ONNX file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    raise FarnetError(f"{path}: no {METADATA_KEY!r} entry in metadata_props")


def onnx_parity(net: nn.Module, onnx_path: str | Path, image_u8: torch.Tensor, *, atol: float = ATOL,
                rtol: float = RTOL) -> dict:
    """Compare ONNX Runtime (CPU) with PyTorch on one uint8 batch (B, 1, H, W).

    Returns:
        ``{"ok", "max_abs_diff", "tolerance", "argmax_equal"}``; ok when max |diff| ≤ atol + rtol·max |heatmap|.
    """
    import onnxruntime as ort

    with torch.no_grad():
        expected = net.eval()(image_u8).float().numpy()  # (B, K, H, W)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(["heatmaps"], {"image": image_u8.numpy()})[0]
    if got.shape != expected.shape:
        return {"ok": False, "max_abs_diff": float("inf"), "tolerance": 0.0, "argmax_equal": False}
    diff = float(np.abs(got - expected).max())
    tolerance = atol + rtol * float(np.abs(expected).max())
    b, k = expected.shape[:2]
    argmax_equal = bool(np.array_equal(got.reshape(b, k, -1).argmax(-1), expected.reshape(b, k, -1).argmax(-1)))
    return {"ok": diff <= tolerance, "max_abs_diff": diff, "tolerance": tolerance, "argmax_equal": argmax_equal}


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (tuple, Path)):
        return list(value) if isinstance(value, tuple) else str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, metavar="CHECKPOINT",
                        help="trained model file (models/<run>/model.pt)")
    parser.add_argument("--out", required=True, type=Path, help="the ONNX file to write, e.g. farnet.onnx")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime parity check")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out that is not an earlier `farnet export` file")


def run(args: argparse.Namespace) -> int:
    result = export_onnx(args.model, args.out, opset=args.opset, check=not args.no_check, overwrite=args.overwrite)
    parity = result["parity"]
    if parity is None:
        note = "not checked" + ("" if args.no_check else " (onnxruntime is not installed)")
    else:
        note = f"ONNX Runtime matches PyTorch: max |diff| {parity['max_abs_diff']:.2g} <= {parity['tolerance']:.2g}"
    print(f"wrote {result['path']} ({note})")
    return 0
