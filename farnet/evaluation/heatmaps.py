"""Heatmap codec: landmarks <-> Gaussian heatmaps (paper §3.2, eq. 1).

Encoding places an unnormalised Gaussian exp(-d²/2σ²) at the *non-quantised* landmark position (after DARK,
paper ref. [59]), so no rounding error enters the targets. Decoding is the per-landmark argmax (the paper), or
optionally a sub-pixel refinement (beyond the paper): one Newton step on the log-heatmap around the argmax, as
in DARK, which is exact for a Gaussian peak. Coordinates are (x, y), 0-based, pixel centres at integers.
"""

from __future__ import annotations

import torch

from farnet.core.coords import rescale_points
from farnet.core.fastpath import device_constant


def scale_points(points_xy: torch.Tensor, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> torch.Tensor:
    """Map (..., 2) pixel coordinates between resolutions: x' = (x + 0.5)·W'/W − 0.5 (pixel-centre aligned)."""
    sx = dst_hw[1] / src_hw[1]
    sy = dst_hw[0] / src_hw[0]
    return rescale_points(points_xy, device_constant((sx, sy), points_xy.device, points_xy.dtype))


def encode_heatmaps(points_xy: torch.Tensor, size_hw: tuple[int, int], sigma_px: float,
                    memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """Gaussian target heatmaps, eq. (1).

    Args:
        points_xy: (B, K, 2) landmark positions in the heatmap's own pixels.
        size_hw: (H, W) of the heatmaps.
        sigma_px: Gaussian σ in the heatmap's own pixels.
        memory_format: the layout to write them in (``torch.channels_last`` to match a channels_last
            prediction: the loss then reads both alike, with no strided pass over either).

    Returns:
        (B, K, H, W) heatmaps with values in (0, 1], 1 at a landmark lying on a pixel centre.
    """
    if sigma_px <= 0:
        raise ValueError(f"sigma_px must be > 0, got {sigma_px}")
    h, w = size_hw
    ys = torch.arange(h, dtype=points_xy.dtype, device=points_xy.device)
    xs = torch.arange(w, dtype=points_xy.dtype, device=points_xy.device)
    # separable: exp(-(dx² + dy²)/2σ²) = exp(-dx²/2σ²) · exp(-dy²/2σ²)
    gx = torch.exp(-((xs - points_xy[..., 0:1]) ** 2) / (2 * sigma_px**2))  # (B, K, W)
    gy = torch.exp(-((ys - points_xy[..., 1:2]) ** 2) / (2 * sigma_px**2))  # (B, K, H)
    if memory_format == torch.contiguous_format:
        return gy.unsqueeze(-1) * gx.unsqueeze(-2)  # broadcasting writes a contiguous result
    out = torch.empty((*points_xy.shape[:-1], h, w), dtype=gx.dtype, device=gx.device, memory_format=memory_format)
    return torch.mul(gy.unsqueeze(-1), gx.unsqueeze(-2), out=out)  # in that layout with no copy (a target: no grad)


def decode_argmax(heatmaps: torch.Tensor) -> torch.Tensor:
    """Per-landmark argmax of (B, K, H, W) heatmaps -> (B, K, 2) integer positions (x, y) as float."""
    b, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(b, k, h * w).argmax(dim=-1)
    return torch.stack([flat % w, torch.div(flat, w, rounding_mode="floor")], dim=-1).to(torch.float32)


def decode_subpixel(heatmaps: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Argmax refined by a Newton step on log(heatmap) with central differences (DARK, beyond the paper).

    For a Gaussian peak the log is quadratic and the step is exact. Where the local Hessian is not negative
    definite (a flat or noisy maximum), or the peak lies on the border, the argmax is kept; the step is
    limited to ±1 px.

    Returns:
        (B, K, 2) positions (x, y).
    """
    b, k, h, w = heatmaps.shape
    coords = decode_argmax(heatmaps)
    x = coords[..., 0].long()
    y = coords[..., 1].long()
    logh = torch.log(heatmaps.float().clamp_min(eps))
    padded = torch.nn.functional.pad(logh, (1, 1, 1, 1), mode="replicate")  # (B, K, H+2, W+2)
    flat = padded.reshape(b, k, -1)

    def at(dx: int, dy: int) -> torch.Tensor:
        return flat.gather(-1, ((y + 1 + dy) * (w + 2) + (x + 1 + dx)).unsqueeze(-1)).squeeze(-1)

    c = at(0, 0)
    dx = 0.5 * (at(1, 0) - at(-1, 0))
    dy = 0.5 * (at(0, 1) - at(0, -1))
    dxx = at(1, 0) - 2 * c + at(-1, 0)
    dyy = at(0, 1) - 2 * c + at(0, -1)
    dxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    det = dxx * dyy - dxy**2
    ok = (dxx < 0) & (det > 0) & (x > 0) & (x < w - 1) & (y > 0) & (y < h - 1)
    safe_det = torch.where(ok, det, torch.ones_like(det))
    off_x = -(dyy * dx - dxy * dy) / safe_det
    off_y = -(dxx * dy - dxy * dx) / safe_det
    offset = torch.stack([off_x, off_y], dim=-1).clamp(-1.0, 1.0)
    return coords + torch.where(ok.unsqueeze(-1), offset, torch.zeros_like(offset))


def decode_guided(fine: torch.Tensor, coarse: torch.Tensor, radius_px: int) -> torch.Tensor:
    """The fine heatmaps' argmax searched only near the coarse head's peak (beyond the paper).

    FARNet already has a coarse-to-fine structure: the MSFA head sees the whole image at half resolution, the
    FR head refines at full resolution. A far-away spurious maximum of the fine heatmap (the cause of most gross
    errors) is ignored by taking the fine argmax within ``radius_px`` input pixels (Chebyshev distance) of the
    coarse peak mapped to input pixels.

    Args:
        fine: (B, K, H, W) heatmaps at the input resolution.
        coarse: (B, K, h, w) heatmaps of the coarse head (any lower resolution).
        radius_px: half-width of the search window, input pixels.

    Returns:
        (B, K, 2) positions (x, y) in input pixels.
    """
    b, k, h, w = fine.shape
    centre = scale_points(decode_argmax(coarse), tuple(coarse.shape[-2:]), (h, w)).round()  # (B, K, 2)
    xs = torch.arange(w, device=fine.device, dtype=centre.dtype)
    ys = torch.arange(h, device=fine.device, dtype=centre.dtype)
    near_x = (xs - centre[..., 0:1]).abs() <= radius_px  # (B, K, W)
    near_y = (ys - centre[..., 1:2]).abs() <= radius_px  # (B, K, H)
    window = near_y.unsqueeze(-1) & near_x.unsqueeze(-2)  # (B, K, H, W)
    return decode_argmax(fine.float().masked_fill(~window, float("-inf")))


DECODERS = {"argmax": decode_argmax, "subpixel": decode_subpixel}  # decoders of the final heatmaps alone
