"""Tests of dicomnode.segmentation.volume: header geometry (NM RECON TOMO, CT series) and the SPECT ↔ CT round trip."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from dicomnode.segmentation.volume import (
    GeometryError, VolumeGeometry, ct_volume, nm_volume, resample, resample_labels, resample_mask, scaled,
)

FOR = generate_uid()


def _rotation(z_deg: float, x_deg: float) -> np.ndarray:
    a, b = np.radians(z_deg), np.radians(x_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def oblique_ct() -> VolumeGeometry:
    """Rotated 12° about z and 7° about x, odd pixel spacings and a tilted slice step."""
    rot = _rotation(12, 7)
    r, c = rot[:, 0], rot[:, 1]
    step = np.cross(r, c) * 2.7 + c * 0.4  # gantry tilt: not perpendicular to the slices
    return VolumeGeometry((36, 72, 80), (-40.0, -35.0, -50.0), tuple(r), tuple(c), (0.93, 1.07), tuple(step), FOR)


def spect_grid() -> VolumeGeometry:
    return VolumeGeometry((30, 32, 32), (-80.0, -80.0, -70.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (4.795, 4.795),
                          (0.0, 0.0, 4.795), FOR)


def _dsc(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_index_to_patient_and_back_is_exact_across_grids():
    ct, spect = oblique_ct(), spect_grid()
    idx = np.random.default_rng(0).uniform(0, 30, (200, 3))
    there = spect.to_index(ct.to_patient(idx))
    np.testing.assert_allclose(ct.to_index(spect.to_patient(there)), idx, atol=1e-9)


def test_a_mask_drawn_on_ct_voxels_lands_on_the_same_voxels_after_spect_and_back():
    ct, spect = oblique_ct(), spect_grid()
    centre = ct.to_patient(np.array([18, 36, 40]))
    points = ct.to_patient(np.stack(np.indices(ct.shape), axis=-1))
    sphere = np.linalg.norm(points - centre, axis=-1) <= 18.0
    on_spect = resample_mask(sphere, ct, spect)
    back = resample_mask(on_spect, spect, ct)
    assert _dsc(sphere, back) > 0.9
    shift = ct.to_patient(np.argwhere(back).mean(0)) - ct.to_patient(np.argwhere(sphere).mean(0))
    assert np.linalg.norm(shift) < 1.0  # mm: the lesion stays on its bone
    # a mask of whole SPECT voxels: SPECT → CT (nearest) → SPECT gives exactly the same voxels
    block = np.zeros(spect.shape, bool)
    block[12:16, 14:18, 15:19] = True
    on_ct = resample(block.astype(np.float32), spect, ct, order=0) > 0.5
    assert np.array_equal(resample_mask(on_ct, ct, spect)[10:18, 12:20, 13:21], block[10:18, 12:20, 13:21])


def test_resample_moves_a_point_source_to_its_patient_position():
    ct, spect = oblique_ct(), spect_grid()
    counts = np.zeros(spect.shape, np.float32)
    counts[14, 15, 16] = 1000.0
    on_ct = resample(counts, spect, ct)
    peak = ct.to_patient(np.array(np.unravel_index(on_ct.argmax(), ct.shape)))
    assert np.linalg.norm(peak - spect.to_patient(np.array([14, 15, 16]))) < 2.0  # within ~ one CT voxel


def test_labels_and_scaled_grid_keep_the_field_of_view():
    spect = spect_grid()
    coarse = scaled(spect, 2.0)
    assert coarse.shape == (30, 16, 16) and coarse.pixel_spacing == (9.59, 9.59)
    # outer edge of voxel 0 unchanged
    edge = spect.to_patient(np.array([0, -0.5, -0.5]))
    np.testing.assert_allclose(coarse.to_patient(np.array([0, -0.5, -0.5])), edge)
    labels = np.zeros(spect.shape, np.uint8)
    labels[10:14, 8:16, 8:16] = 2
    assert set(np.unique(resample_labels(labels, spect, coarse, 3))) == {0, 2}


def test_different_frames_of_reference_are_refused():
    other = VolumeGeometry(**{**spect_grid().__dict__, "frame_of_reference": generate_uid()})
    with pytest.raises(GeometryError, match="Frames of Reference"):
        resample(np.zeros(other.shape, np.float32), other, oblique_ct())


def _nm_dataset(geometry: VolumeGeometry, volume: np.ndarray, order: np.ndarray) -> Dataset:
    ds = Dataset()
    ds.Rows, ds.Columns = geometry.shape[1:]
    ds.NumberOfFrames = geometry.shape[0]
    ds.FrameIncrementPointer = 0x00540080
    ds.SliceVector = [int(k) + 1 for k in order]  # frame f holds slice order[f]
    ds.PixelSpacing = list(geometry.pixel_spacing)
    ds.SpacingBetweenSlices = geometry.slice_spacing
    ds.SliceThickness = geometry.slice_spacing
    ds.FrameOfReferenceUID = FOR
    item = Dataset()
    item.ImageOrientationPatient = geometry.orientation
    item.ImagePositionPatient = list(geometry.origin)
    ds.DetectorInformationSequence = Sequence([item])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = volume[order].astype(np.uint16).tobytes()
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    return ds


def test_nm_recon_tomo_geometry_from_the_detector_item_and_slice_vector():
    spect = spect_grid()
    volume = np.arange(np.prod(spect.shape), dtype=np.uint16).reshape(spect.shape) % 1000
    order = np.random.default_rng(1).permutation(spect.shape[0])
    ds = _nm_dataset(spect, volume, order)
    counts, geometry = nm_volume(ds)
    np.testing.assert_array_equal(counts, volume)
    np.testing.assert_allclose(geometry.affine, spect.affine, atol=1e-9)
    del ds.FrameIncrementPointer
    with pytest.raises(GeometryError, match="Slice Vector"):
        nm_volume(ds)


def test_ct_series_geometry_from_shuffled_slices():
    ct = oblique_ct()
    slices = []
    for k in range(ct.shape[0]):
        ds = Dataset()
        ds.Rows, ds.Columns = ct.shape[1:]
        ds.PixelSpacing = list(ct.pixel_spacing)
        ds.ImageOrientationPatient = ct.orientation
        ds.ImagePositionPatient = list(ct.slice_position(k))
        ds.FrameOfReferenceUID = FOR
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = np.full(ct.shape[1:], 1024 + k, np.uint16).tobytes()
        ds.file_meta = Dataset()
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
        slices.append(ds)
    shuffled = [slices[i] for i in np.random.default_rng(2).permutation(len(slices))]
    hu, geometry, order = ct_volume(shuffled)
    np.testing.assert_array_equal(hu[:, 0, 0], np.arange(ct.shape[0]))
    np.testing.assert_allclose(geometry.affine, ct.affine, atol=1e-6)
    shuffled[0].ImagePositionPatient = list(np.asarray(shuffled[0].ImagePositionPatient) + 1.3)
    with pytest.raises(GeometryError, match="evenly"):
        ct_volume(shuffled)
