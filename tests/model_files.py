"""Model files and images the tests of `farnet predict`, `export` and the robustness tests share: small
stand-in networks written as trained-model files, and DICOM images made in memory."""

import io

import numpy as np
import torch
from torch import nn

from farnet.config import Params, effective_dict
from farnet.core.checkpoint import save_atomic
from farnet.models.interface import Heatmaps

INPUT_HW = (64, 96)  # (H_in, W_in): multiples of 32, as the metadata's DenseNet-121 needs


class TinyNet(nn.Module):
    """A two-head landmark network small enough for tests (random weights)."""

    def __init__(self, k: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.fine = nn.Conv2d(4, k, 1)
        self.coarse = nn.Conv2d(4, k, 1)

    def forward(self, x):
        f = self.body(x)
        return Heatmaps(fine=self.fine(f), coarse=self.coarse(nn.functional.avg_pool2d(f, 2)))


def write_model(path, k=3, input_hw=INPUT_HW, dataset="custom", net=None, names=None, **meta_extra):
    net = net if net is not None else TinyNet(k)
    meta = {"dataset": dataset, "num_landmarks": k, "landmark_names": names or [f"p{i}" for i in range(k)],
            "input_hw": list(input_hw), "normalization": {}, "backbone": "densenet121",
            "params": effective_dict(Params()), "git_commit": "test", "selected_epoch": 1, **meta_extra}
    save_atomic({"model": net.state_dict(), "meta": meta}, path)
    return path


def dicom_bytes(image_u8, *, monochrome1=False, spacing=(0.15, 0.15), imager_spacing=None):
    """A DICOM file (pydicom) whose 8-bit rendering by our reader is exactly ``image_u8``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = image_u8.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    if monochrome1:
        # stored s = 8·(255 − v) + 50; modality = 2·s − 100 = 16·(255 − v);
        # window 2040.5/4081 -> 255 − v; MONOCHROME1 inverted -> v
        ds.PhotometricInterpretation = "MONOCHROME1"
        stored = 8 * (255 - image_u8.astype(np.uint16)) + 50
        ds.RescaleSlope, ds.RescaleIntercept = 2, -100
        ds.WindowCenter, ds.WindowWidth = 2040.5, 4081
    else:  # no window: min..max (0..4080) stretched to 0..255 -> v
        ds.PhotometricInterpretation = "MONOCHROME2"
        stored = 16 * image_u8.astype(np.uint16)
    if spacing is not None:
        ds.PixelSpacing = list(spacing)
    if imager_spacing is not None:
        ds.ImagerPixelSpacing = list(imager_spacing)
    ds.PixelData = stored.astype("<u2").tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class StructureNet(nn.Module):
    """A stand-in for a trained network with a trained network's two answers: in each of K vertical strips of the
    image, landmark k's heatmap peaks near 1 at the strongest edge (bone against soft tissue), and stays 0 where
    no edge is strong enough (a flat image, or one that reaches the network with a sixteenth of its contrast)."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k
        self.threshold = nn.Parameter(torch.tensor(0.5))  # in ImageNet-normalised units; something to save

    def forward(self, x):
        grey = x[:, :1]  # (B, 1, H, W)
        edges = (grey - nn.functional.avg_pool2d(grey, 5, stride=1, padding=2, count_include_pad=False)).abs()
        response = torch.tanh(3 * nn.functional.relu(edges - self.threshold))  # (B, 1, H, W) in [0, 1)
        strip = torch.arange(x.shape[-1], device=x.device) * self.k // x.shape[-1]  # (W,) strip of each column
        mask = strip == torch.arange(self.k, device=x.device)[:, None]  # (K, W)
        return Heatmaps(fine=response * mask[:, None, :], coarse=None)  # (B, K, H, W)
