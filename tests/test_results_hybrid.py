"""Tests of the SPECT/CT and SPECT-only result objects: SEG read back by highdicom and dcmqi as a volume,
TID 1500 SR, fused SC."""

from __future__ import annotations

import subprocess
from datetime import datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicomnode.config import ModelSection
from dicomnode.dicom.sop import ResultKind
from dicomnode.pipeline.results.common import ResultOptions
from dicomnode.pipeline.kinds import StudyContext
from dicomnode.pipeline.models import NodeModels
from dicomnode.pipeline.processing import process_acquisition
from dicomnode.pipeline.results.volume.build import build_volume_results
from dicomnode.synth.spectct import write_exams
from dicomnode.dicom.acquisitions import VolumeAcquisition
from dicomnode.segmentation.result import Algorithm
from dicomnode.segmentation.volume import ct_geometry, nm_geometry, nm_volume, resample_labels
from dicomnode.segmentation.volume_lesions import find_lesions
from tests.test_results_inputs import dcentvfy_errors, dciodvfy_errors

ALGORITHM = Algorithm("dicomnode-mtunet", "test", "mtunet")


@pytest.fixture(scope="module")
def exam(tmp_path_factory) -> tuple[list[pydicom.Dataset], pydicom.Dataset, np.ndarray]:
    out = tmp_path_factory.mktemp("hybrid")
    write_exams(out, exams=1, seed=21, size="tiny")
    folder = out / "exam_0001"
    cts = [pydicom.dcmread(p) for p in sorted((folder / "ct").glob("*.dcm"))]
    labels = np.load(folder / "truth.npz")["labels_ct"]
    return cts, pydicom.dcmread(folder / "spect.dcm"), labels


def _onehot(labels: np.ndarray) -> np.ndarray:
    return np.stack([(labels == k).astype(np.float32) for k in range(3)])


def _objects(exam, tmp_path: Path) -> dict[str, pydicom.Dataset]:
    cts, nm, labels = exam
    objects = build_volume_results(cts, nm, _onehot(labels), algorithm=ALGORITHM, created=datetime(2025, 1, 2, 3, 4, 5))
    out = {}
    for _, ds in objects:
        path = tmp_path / f"{ds.Modality}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out[ds.Modality] = pydicom.dcmread(path)
    return out


def test_seg_reads_back_as_a_volume_on_the_ct_grid_with_two_segments(exam, tmp_path):
    cts, _, labels = exam
    assert labels.max() == 2 and (labels == 1).any()  # the fixture holds both classes
    seg = hd.seg.Segmentation.from_dataset(_objects(exam, tmp_path)["SEG"])
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["Bone metastasis", "Benign bone lesion"]
    assert seg.FrameOfReferenceUID == cts[0].FrameOfReferenceUID
    volume = seg.get_volume(combine_segments=True, allow_missing_positions=True)
    geometry, _ = ct_geometry(cts)
    # the SEG volume covers the lesion slices; place it on the CT grid through patient coordinates
    got = np.zeros(labels.shape, np.uint8)
    for index in np.argwhere(volume.array > 0):
        point = volume.affine[:3, :3] @ index + volume.affine[:3, 3]
        k, i, j = np.rint(geometry.to_index(point)).astype(int)
        got[k, i, j] = volume.array[tuple(index)]
    np.testing.assert_array_equal(got, labels)


def test_sr_has_one_volumetric_group_per_lesion_and_counts_per_class(exam, tmp_path):
    _, _, labels = exam
    objects = _objects(exam, tmp_path)
    _, lesions = find_lesions(_onehot(labels), np.zeros(labels.shape), None, ct_geometry(exam[0])[0])
    report = hd.sr.Comprehensive3DSR.from_dataset(objects["SR"])
    content = report.content
    groups = content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(lesions) > 0
    names = {(m.name.value, m.name.meaning, m.derivation.meaning if m.derivation else None)
             for m in groups[0].get_measurements()}
    assert {("118565006", "Volume", None),
            ("110821", "Mean Nuclear Medicine Tomographic Activity", "Mean"),
            ("110821", "Maximum Nuclear Medicine Tomographic Activity", "Maximum"),
            ("112031", "Mean Attenuation Coefficient", "Mean"), ("122157", "Probability", None)} <= names
    referenced = groups[0].reference_type
    assert referenced.meaning == "Referenced Segment"
    counts = {}
    for group in content.get_image_measurement_groups():
        number = [m for m in group.get_measurements() if m.name.meaning.startswith("Number of lesions")]
        counts[group.finding_type.meaning] = int(number[0].value)
    expected = {"Neoplasm, Secondary": sum(les.label == 1 for les in lesions), "Lesion": sum(les.label == 2 for les in lesions)}
    assert counts == expected
    assert objects["SR"].Modality == "SR" and objects["SEG"].SOPInstanceUID in str(objects["SR"].CurrentRequestedProcedureEvidenceSequence)


def test_sc_is_a_burned_in_rgb_picture(exam, tmp_path):
    sc = _objects(exam, tmp_path)["OT"]
    assert sc.PhotometricInterpretation == "RGB" and sc.BurnedInAnnotation == "YES"
    pixels = sc.pixel_array
    assert pixels.shape[2] == 3 and pixels.shape[1] == 768
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    assert red.any()  # metastasis contour drawn


def test_kinds_switch_objects_off_and_a_wrong_grid_is_refused(exam):
    cts, nm, labels = exam
    only = build_volume_results(cts, None, _onehot(labels), algorithm=ALGORITHM,
                                options=ResultOptions(kinds=(ResultKind.SEG,)))
    assert [ds.Modality for _, ds in only] == ["SEG"]
    with pytest.raises(ValueError, match="a CT series or an NM"):
        build_volume_results([], None, _onehot(labels), algorithm=ALGORITHM)
    with pytest.raises(ValueError, match="do not match"):
        build_volume_results(cts, nm, _onehot(labels)[:, 1:], algorithm=ALGORITHM)
    with pytest.raises(ValueError, match="do not match"):  # SPECT-only: the NM grid, not the CT's
        build_volume_results([], nm, _onehot(labels), algorithm=ALGORITHM)


def _nm_labels(cts, nm, labels) -> np.ndarray:
    """The truth on the NM volume's grid (the class covering most of each NM voxel)."""
    counts, nm_grid = nm_volume(nm)
    ct_grid, _ = ct_geometry(cts)
    return resample_labels(labels, ct_grid, nm_grid, 3)


def test_spect_only_seg_lies_on_the_nm_frames_and_the_sr_and_sc_follow(exam, tmp_path):
    """Without CT the SEG's source is the NM volume: every SEG frame references its NM frame, sits
    at that frame's position, and the mask read back per NM frame equals the labels; the SR names
    no CT numbers; dciodvfy, dcentvfy and dcmqi accept the objects."""
    cts, nm, labels = exam
    nm_labels = _nm_labels(cts, nm, labels)
    assert (nm_labels == 1).any()
    objects = dict(build_volume_results([], nm, _onehot(nm_labels), algorithm=ALGORITHM))
    assert set(objects) == {ResultKind.SEG, ResultKind.SR, ResultKind.SC}
    paths = {}
    for kind, ds in objects.items():
        paths[kind] = tmp_path / f"{kind.value}.dcm"
        ds.save_as(paths[kind], enforce_file_format=True)
        assert dciodvfy_errors(paths[kind]) == [], kind
    nm_path = tmp_path / "nm.dcm"
    nm.save_as(nm_path, enforce_file_format=True)
    assert dcentvfy_errors([*paths.values(), nm_path]) == []

    seg = pydicom.dcmread(paths[ResultKind.SEG])
    assert seg.FrameOfReferenceUID == nm.FrameOfReferenceUID
    geometry, order = nm_geometry(nm)
    slice_of_frame = np.argsort(order)
    got = np.zeros(nm_labels.shape, np.uint8)
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        (source,) = item.DerivationImageSequence[0].SourceImageSequence
        assert source.ReferencedSOPInstanceUID == nm.SOPInstanceUID
        frame = int(source.ReferencedFrameNumber) - 1
        k = slice_of_frame[frame]
        position = np.array(item.PlanePositionSequence[0].ImagePositionPatient, float)
        np.testing.assert_allclose(position, geometry.to_patient(np.array([k, 0.0, 0.0])), atol=1e-3)
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        got[k][seg.pixel_array[index] > 0] = segment
    np.testing.assert_array_equal(got, nm_labels)

    report = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(paths[ResultKind.SR]))
    groups = report.content.get_volumetric_roi_measurement_groups()
    assert groups
    names = {m.name.value for m in groups[0].get_measurements()}
    assert "110821" in names and "112031" not in names  # counts, no CT numbers
    content = pydicom.dcmread(paths[ResultKind.SR]).ContentSequence
    assert nm.SeriesInstanceUID in str(content)
    (procedure,) = [item for item in content if item.ConceptNameCodeSequence[0].CodeValue == "121058"]
    assert procedure.ConceptCodeSequence[0].CodeMeaning == "SPECT of whole body"
    sc = pydicom.dcmread(paths[ResultKind.SC])
    assert sc.StudyInstanceUID == nm.StudyInstanceUID and "SPECT" in sc.ImageComments
    assert "fused" not in sc.ImageComments

    out = tmp_path / "dcmqi"
    out.mkdir()
    run = subprocess.run(["segimage2itkimage", "--inputDICOM", str(paths[ResultKind.SEG]), "--outputDirectory",
                          str(out), "-t", "nrrd"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    header = (out / "1.nrrd").read_bytes().split(b"\n\n", 1)[0].decode("latin-1")
    assert f"sizes: {nm.Columns} {nm.Rows} " in header


def test_objects_pass_dicom3tools_and_dcmqi_reads_the_seg(exam, tmp_path):
    cts, nm, labels = exam
    objects = build_volume_results(cts, nm, _onehot(labels), algorithm=ALGORITHM)
    paths = []
    for _, ds in objects:
        paths.append(tmp_path / f"{ds.Modality}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
        assert dciodvfy_errors(paths[-1]) == []
    sources = []
    for n, ds in enumerate([*cts, nm]):
        sources.append(tmp_path / f"source_{n}.dcm")
        ds.save_as(sources[-1], enforce_file_format=True)
    assert dcentvfy_errors(paths + sources) == []
    out = tmp_path / "dcmqi"
    out.mkdir()
    run = subprocess.run(["segimage2itkimage", "--inputDICOM", str(paths[0]), "--outputDirectory", str(out), "-t", "nrrd"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    for segment in (1, 2):  # one volume per segment, on the CT's rows and columns
        header = (out / f"{segment}.nrrd").read_bytes().split(b"\n\n", 1)[0].decode("latin-1")
        assert f"sizes: {labels.shape[2]} {labels.shape[1]} " in header



def test_spect_only_seg_with_a_real_camera_s_odd_geometry_passes_dciodvfy(exam, tmp_path):
    """A real reconstruction's Image Position (Patient) has many decimals (e.g. -187.12345678901234)
    and its slice spacing is not round: every DS the SEG writes stays within 16 characters (PS3.5
    Table 6.2-1), so dciodvfy reports no error (the real SPECT-only SEGs had 3 errors each)."""
    cts, nm, labels = exam
    nm_labels = _nm_labels(cts, nm, labels)
    odd = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_encoded(nm)))
    detector = odd.DetectorInformationSequence[0]
    detector.ImagePositionPatient = [-187.12345678901, -201.9876543210, 1012.3456789012]
    odd.SpacingBetweenSlices = odd.SliceThickness = 4.79520010948181
    objects = dict(build_volume_results([], odd, _onehot(nm_labels), algorithm=ALGORITHM))
    path = tmp_path / "seg.dcm"
    objects[ResultKind.SEG].save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    seg = pydicom.dcmread(path)
    positions = [item.PlanePositionSequence[0].ImagePositionPatient for item in seg.PerFrameFunctionalGroupsSequence]
    assert positions and all(len(str(value)) <= 16 for position in positions for value in position)
    assert any(len(str(value)) > 10 for position in positions for value in position)  # not merely round


def _encoded(ds: pydicom.Dataset) -> bytes:
    from pydicom.filebase import DicomBytesIO

    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_a_spect_ct_job_decodes_each_source_once(exam, monkeypatch):
    """The segmenter's decoded volumes go to the result builder: one CT and one NM decode per
    acquisition (each was decoded twice, once for the model and once for the results)."""
    import dicomnode.segmentation.volume as volume

    calls: dict[str, int] = {}
    for name in ("ct_volume", "nm_volume"):
        def counted(*args, _real=getattr(volume, name), _name=name, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _real(*args, **kwargs)
        monkeypatch.setattr(volume, name, counted)
    cts, nm, _ = exam
    acquisition = VolumeAcquisition(key=f"spect {nm.SOPInstanceUID}", label="SPECT", spect=nm, ct=tuple(cts))
    models = NodeModels(ModelSection(device="cpu"))
    run = process_acquisition(acquisition, models, ResultOptions(), study=StudyContext(unvalidated_results=True))
    assert run.processed, run.reason
    assert {kind for kind, _ in run.objects} == {ResultKind.SEG, ResultKind.SR, ResultKind.SC}
    assert calls == {"ct_volume": 1, "nm_volume": 1}
