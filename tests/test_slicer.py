"""The SEGs in 3D Slicer's own segmentation code (issue "Results a physician can open").

3D Slicer opens a DICOM SEG in two steps: its DICOM SEG plugin (QuantitativeReporting) runs dcmqi's
``segimage2itkimage``, then imports each label map into a segmentation node with Slicer's
Segmentations logic. The Slicer application is not installable here (no package in Debian, PyPI or
npm); its libraries without Qt are (PyPI ``slicer-core``: MRML, the volume storage and the
Segmentations module logic). These tests run both steps with the real code: dcmqi on the SEG, then
``vtkMRMLVolumeArchetypeStorageNode`` reading the NRRD into a label map node and
``vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode`` making the segment, and check
that the segment's voxels in Slicer's RAS world are where the SEG says its lesion pixels are (its
Plane Position / Orientation and Pixel Spacing, LPS → RAS), for a planar SEG of each source layout and
for the SEGs on a CT series and on an NM volume."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import slicer  # PyPI slicer-core, a test dependency (pyproject.toml)
import vtk
from scipy.spatial import cKDTree
from vtk.util.numpy_support import vtk_to_numpy

from dicomnode.pipeline.results import ResultKind, ResultOptions, build_results
from dicomnode.pipeline.results.common import VIEW_ABBREVIATIONS
from dicomnode.pipeline.results.volume.build import build_volume_results
from dicomnode.synth.spectct import write_exams
from dicomnode.segmentation.result import Algorithm
from dicomnode.segmentation.volume import ct_geometry, nm_volume, resample_labels
from tests.test_results_inputs import make_study

pytestmark = pytest.mark.slow
LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


def slicer_segments(seg_path: Path, workdir: Path) -> dict[int, np.ndarray]:
    """Segment number → RAS positions (mm) of the segment's voxels, as Slicer imports the SEG."""
    workdir.mkdir()
    run = subprocess.run(["segimage2itkimage", "--inputDICOM", str(seg_path), "--outputDirectory", str(workdir),
                          "-t", "nrrd"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    found = {}
    for nrrd in sorted(workdir.glob("*.nrrd")):
        label = slicer.vtkMRMLLabelMapVolumeNode()
        scene.AddNode(label)
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        scene.AddNode(storage)
        storage.SetFileName(str(nrrd))
        assert storage.ReadData(label) == 1, nrrd
        node = slicer.vtkMRMLSegmentationNode()
        scene.AddNode(node)
        assert logic.ImportLabelmapToSegmentationNode(label, node), nrrd
        segmentation = node.GetSegmentation()
        assert segmentation.GetNumberOfSegments() == 1, nrrd
        labelmap = slicer.vtkOrientedImageData()
        node.GetBinaryLabelmapRepresentation(segmentation.GetNthSegmentID(0), labelmap)
        found[int(nrrd.stem)] = _ras_of_voxels(labelmap)
    return found


def _ras_of_voxels(labelmap) -> np.ndarray:
    e = labelmap.GetExtent()
    values = vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(
        e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1)
    ijk = np.argwhere(values > 0)[:, ::-1] + [e[0], e[2], e[4]]
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    m = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    return (m @ np.c_[ijk, np.ones(len(ijk))].T).T[:, :3]


def stated_positions(seg: pydicom.Dataset) -> dict[int, np.ndarray]:
    """Segment number → RAS positions of the SEG's set pixels, from its own Plane Position /
    Orientation and Pixel Spacing (PS3.3 C.7.6.2.1.1, C.7.6.16.2.3-4)."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    row, column = np.reshape(np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float), (2, 3))
    spacing = np.array(shared.PixelMeasuresSequence[0].PixelSpacing, float)  # row, column spacing
    pixels = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    found: dict[int, list] = {}
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        identification = item.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
        number = int(identification[0].ReferencedSegmentNumber)
        origin = np.array(item.PlanePositionSequence[0].ImagePositionPatient, float)
        r, c = np.nonzero(pixels[index])
        lps = origin + np.outer(c * spacing[1], row) + np.outer(r * spacing[0], column)
        found.setdefault(number, []).append(lps * LPS_TO_RAS)
    return {number: np.concatenate(parts) for number, parts in found.items()}


def assert_same_points(got: np.ndarray, want: np.ndarray, what: object) -> None:
    """The same positions, each within 0.01 mm of one of the other's, one to one."""
    assert len(got) == len(want) > 0, what
    distance, index = cKDTree(want).query(got)
    assert distance.max() < 0.01 and len(set(index)) == len(want), (what, distance.max())


def _assert_same_places(seg_path: Path, workdir: Path) -> dict[int, np.ndarray]:
    """Slicer's segment voxels are the SEG's set pixels, placed where the SEG says; returns them."""
    seg = pydicom.dcmread(seg_path)
    got, want = slicer_segments(seg_path, workdir), stated_positions(seg)
    assert set(got) == set(want)
    for number in want:
        assert_same_points(got[number], want[number], number)
    return got


@pytest.mark.parametrize("layout", ["multiframe", "split"])
def test_slicer_places_each_planar_seg_where_its_lesions_are(layout: str, tmp_path: Path) -> None:
    study = make_study(layout)
    built = build_results(study.result, study.sources, ResultOptions(kinds=(ResultKind.SEG,)))
    assert len(built) == 2
    for n, (_, seg) in enumerate(built):
        path = tmp_path / f"seg{n}.dcm"
        seg.save_as(path, enforce_file_format=True)
        (view,) = [v for v in study.result.views if seg.SeriesDescription.endswith(VIEW_ABBREVIATIONS[v])]
        (voxels,) = _assert_same_places(path, tmp_path / f"slicer{n}").values()
        assert len(voxels) == int(study.result.views[view].mask.sum())  # every lesion pixel, no other


@pytest.mark.parametrize("with_ct", [True, False], ids=["spect-ct", "spect-only"])
def test_slicer_places_the_spect_seg_on_its_source_grid(with_ct: bool, tmp_path: Path) -> None:
    write_exams(tmp_path / "exam", exams=1, seed=21, size="tiny")
    folder = tmp_path / "exam" / "exam_0001"
    all_ct = [pydicom.dcmread(p) for p in sorted((folder / "ct").glob("*.dcm"))]
    nm = pydicom.dcmread(folder / "spect.dcm")
    labels = np.load(folder / "truth.npz")["labels_ct"]
    grid = ct_geometry(all_ct)[0]
    if not with_ct:
        labels = resample_labels(labels, grid, nm_volume(nm)[1], 3)
        grid = nm_volume(nm)[1]
    onehot = np.stack([(labels == k).astype(np.float32) for k in range(3)])
    objects = dict(build_volume_results(all_ct if with_ct else [], nm, onehot,
                                        algorithm=Algorithm("dicomnode-mtunet", "test", "mtunet"),
                                        options=ResultOptions(kinds=(ResultKind.SEG,))))
    path = tmp_path / "seg.dcm"
    objects[ResultKind.SEG].save_as(path, enforce_file_format=True)
    segments = _assert_same_places(path, tmp_path / "slicer")
    # ... and on the source: each class's voxels at the source grid's voxel centres (LPS → RAS)
    for label, number in ((1, 1), (2, 2)):
        expected = grid.to_patient(np.argwhere(labels == label)) * LPS_TO_RAS
        assert_same_points(segments[number], expected, label)
