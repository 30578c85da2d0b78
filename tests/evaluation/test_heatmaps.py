import math

import pytest
import torch

from farnet.evaluation.heatmaps import decode_argmax, decode_subpixel, encode_heatmaps, scale_points


def test_encode_matches_equation_1_by_hand():
    hm = encode_heatmaps(torch.tensor([[[3.0, 2.0]]]), (5, 6), sigma_px=1.5)
    assert hm.shape == (1, 1, 5, 6)
    assert hm[0, 0, 2, 3] == pytest.approx(1.0)
    # pixel (x=5, y=4): d² = 2² + 2² = 8
    assert hm[0, 0, 4, 5].item() == pytest.approx(math.exp(-8 / (2 * 1.5**2)))


def test_non_quantised_centre():
    hm = encode_heatmaps(torch.tensor([[[3.5, 2.0]]]), (5, 8), sigma_px=2.0)
    assert hm[0, 0, 2, 3] == pytest.approx(hm[0, 0, 2, 4])  # symmetric about x = 3.5
    assert hm.max() < 1.0


def test_round_trip_errors():
    torch.manual_seed(0)
    points = torch.rand(4, 19, 2) * torch.tensor([60.0, 40.0]) + 10  # away from the border
    hm = encode_heatmaps(points, (64, 80), sigma_px=3.0)
    argmax_err = (decode_argmax(hm) - points).norm(dim=-1)
    sub_err = (decode_subpixel(hm) - points).norm(dim=-1)
    assert argmax_err.max() < 0.5 * math.sqrt(2) + 1e-6
    assert (decode_argmax(hm) - points).abs().max() <= 0.5 + 1e-6  # per axis, the nearest pixel
    assert sub_err.max() < 0.1


def test_argmax_by_hand():
    hm = torch.zeros(1, 2, 4, 5)
    hm[0, 0, 3, 1] = 1.0
    hm[0, 1, 0, 4] = 2.0
    assert decode_argmax(hm).tolist() == [[[1.0, 3.0], [4.0, 0.0]]]


def test_subpixel_keeps_argmax_at_border_and_flat_maps():
    hm = torch.zeros(1, 1, 4, 4)
    hm[0, 0, 0, 0] = 1.0
    assert decode_subpixel(hm).tolist() == [[[0.0, 0.0]]]
    flat = torch.ones(1, 1, 5, 5)
    assert decode_subpixel(flat).tolist() == decode_argmax(flat).tolist()


def test_scale_points_is_pixel_centre_aligned():
    p = torch.tensor([[0.0, 0.0], [9.0, 19.0]])
    half = scale_points(p, (20, 10), (10, 5))
    assert half.tolist() == [[-0.25, -0.25], [4.25, 9.25]]
    assert torch.allclose(scale_points(half, (10, 5), (20, 10)), p)


def test_bad_sigma():
    with pytest.raises(ValueError, match="sigma_px must be > 0"):
        encode_heatmaps(torch.zeros(1, 1, 2), (4, 4), 0.0)


def test_guided_decoder_ignores_a_far_spurious_peak():
    from farnet.evaluation.heatmaps import decode_guided

    fine = encode_heatmaps(torch.tensor([[[40.0, 30.0]]]), (64, 64), sigma_px=2.0)
    fine[0, 0, 5, 60] = 2.0  # a spurious maximum far from the landmark: plain argmax takes it
    coarse = encode_heatmaps(torch.tensor([[[19.5, 14.5]]]), (32, 32), sigma_px=1.0)  # (40, 30) at half size
    assert decode_argmax(fine).tolist() == [[[60.0, 5.0]]]
    assert decode_guided(fine, coarse, radius_px=6).tolist() == [[[40.0, 30.0]]]
    near = fine.clone()
    near[0, 0, 33, 43] = 3.0  # a maximum inside the window is still taken: the window only excludes
    assert decode_guided(near, coarse, radius_px=6).tolist() == [[[43.0, 33.0]]]
