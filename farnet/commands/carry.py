"""``farnet carry``: ``build`` fetches a dataset, prepares it with the pipeline's own stage functions in a
temporary folder and packs it into one file (:func:`farnet.data.carry.pack_carry`); ``info`` prints a carry's
description."""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from dataclasses import replace
from pathlib import Path

from farnet.config import load_params
from farnet.data.carry import CARRY_LIMIT_BYTES, CODECS, pack_carry, read_carry_info
from farnet.data.manifest import MANIFEST_DIR, sha256_file
from farnet.core.errors import ConfigError
from farnet.models.registry import COMMON_MULTIPLE
from farnet.stages.fetch import fetch
from farnet.stages.prepare import prepare


def build_carry(out: str | Path, *, dataset: str = "isbi2015", input_hw: tuple[int, int] = (800, 640),
                params_path: str | Path = "params.yaml", codec: str = "auto", quality: int | None = None,
                max_bytes: int = CARRY_LIMIT_BYTES, progress: bool = True) -> dict:
    """Fetch ``dataset`` (from ``FARNET_DATA_MIRROR``, else its official source), prepare it at ``input_hw`` with
    the pipeline's own stage functions in a temporary folder, and pack it into ``out`` (:func:`pack_carry`).

    Raises:
        ConfigError: ``input_hw`` is not two positive multiples of the networks' coarsest stride (32), or ``dataset`` is not configured.
    """
    params = load_params(params_path)
    if dataset not in params.datasets:
        raise ConfigError(f"{params_path}: no datasets.{dataset} (have: {', '.join(sorted(params.datasets))})")
    if len(input_hw) != 2 or not all(v > 0 and v % COMMON_MULTIPLE == 0 for v in input_hw):
        raise ConfigError(f"--input-hw: {list(input_hw)} must be two positive multiples of {COMMON_MULTIPLE}")
    params = replace(params, datasets={**params.datasets,
                                       dataset: replace(params.datasets[dataset], input_hw=tuple(input_hw))})
    with tempfile.TemporaryDirectory(prefix="farnet-carry-") as tmp:
        fetch(params, dataset, Path(tmp) / "raw")
        info = prepare(params, dataset, Path(tmp) / "raw", Path(tmp) / "prepared")
        manifest = MANIFEST_DIR / f"{dataset}.sha256"
        fetched = {k: v for k, v in info["fetched"].items() if k != "sha256"}  # every file's hash: digested below
        hashes = json.loads((Path(tmp) / "raw" / dataset / "FETCHED.json").read_text()).get("sha256", {})
        source = {"fetched": fetched, "annotator": params.datasets[dataset].annotator,
                  "fetched_files_sha256": hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest(),
                  "manifest": f"farnet/data/manifests/{manifest.name}",
                  "manifest_sha256": sha256_file(manifest) if manifest.is_file() else None}
        return pack_carry(Path(tmp) / "prepared" / dataset, out, codec=codec, quality=quality, max_bytes=max_bytes,
                          source=source, progress=progress)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = sub.add_parser("build", help="fetch and prepare a dataset, and pack it into a carry file")
    build.add_argument("--out", type=Path, required=True, help="the carry file to write, e.g. data/carry/isbi.zip")
    build.add_argument("--input-hw", type=int, nargs=2, metavar=("H", "W"), default=(800, 640),
                       help="the size the images are prepared at (default 800 640, the ISBI protocol)")
    build.add_argument("--dataset", default="isbi2015", help="an entry of `datasets` in the params file")
    build.add_argument("--params", default="params.yaml", help="params file for the preparation (annotator)")
    build.add_argument("--codec", default="auto", choices=("auto", *CODECS),
                       help="auto (default): lossless PNG or WebP if it fits, else JPEG at the best quality that does")
    build.add_argument("--quality", type=int, default=None, help="JPEG quality 1..100 (auto: tried alone)")
    build.add_argument("--max-mib", type=float, default=CARRY_LIMIT_BYTES / 2**20,
                       help=f"largest carry allowed in MiB (default {CARRY_LIMIT_BYTES / 2**20:g})")
    info = sub.add_parser("info", help="print a carry's description (carry.json)")
    info.add_argument("carry", type=Path)


def run(args: argparse.Namespace) -> int:
    if args.action == "info":
        print(json.dumps(read_carry_info(args.carry), indent=2))
        return 0
    if args.quality is not None and not 1 <= args.quality <= 100:
        raise ConfigError(f"--quality: {args.quality} is not in 1..100")
    made = build_carry(args.out, dataset=args.dataset, input_hw=tuple(args.input_hw), params_path=args.params,
                       codec=args.codec, quality=args.quality, max_bytes=int(args.max_mib * 2**20))
    quality = f" q{made['quality']}" if made["quality"] is not None else ""
    print(f"wrote {args.out}: {made['bytes']} bytes ({made['bytes'] / 2**20:.2f} MiB), {made['n_images']} images at "
          f"{made['input_hw'][0]}x{made['input_hw'][1]}, {made['codec']}{quality} ({made['form']}), mean |grey "
          f"difference| {made['mean_abs_diff']:.4f}, largest {made['max_abs_diff']}")
    return 0
