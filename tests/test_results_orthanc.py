"""A real PACS (Orthanc) accepts every result object over C-STORE and files it in the source's study."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from dicomnode.pipeline.results import ResultKind, build_results
from tests.peers import Orthanc
from tests.test_results_inputs import make_study

MODALITIES = {ResultKind.SEG: "SEG", ResultKind.GSPS: "PR", ResultKind.SR: "SR", ResultKind.SC: "OT"}


def c_store(pacs: Orthanc, datasets: list[Dataset]) -> list[int]:
    """Send ``datasets`` over one association; the C-STORE status of each."""
    ae = AE(ae_title="DICOMNODE")
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    association = ae.associate("127.0.0.1", pacs.port, ae_title=pacs.aet)
    assert association.is_established
    try:
        return [int(association.send_c_store(ds).Status) for ds in datasets]
    finally:
        association.release()


@pytest.mark.network
@pytest.mark.parametrize("layout", ["multiframe", "split"])
def test_orthanc_files_every_result_series_in_the_source_study(layout: str, orthanc: Orthanc) -> None:
    study = make_study(layout)
    objects = build_results(study.result, study.sources)
    statuses = c_store(orthanc, [*study.sources, *(ds for _, ds in objects)])
    assert statuses == [0x0000] * (len(study.sources) + len(objects))

    studies = orthanc.rest("/studies?expand")
    assert [s["MainDicomTags"]["StudyInstanceUID"] for s in studies] == [study.result.scan.study_instance_uid]
    listed = orthanc.rest(f"/studies/{studies[0]['ID']}/series")
    series = {entry["MainDicomTags"]["SeriesInstanceUID"]: entry for entry in listed}
    for kind, dataset in objects:
        datasets = [ds for k, ds in objects if ds.SeriesInstanceUID == dataset.SeriesInstanceUID]
        assert len(datasets) == 1  # one instance per series, a SEG per view included
        entry = series[dataset.SeriesInstanceUID]
        assert entry["MainDicomTags"]["Modality"] == MODALITIES[kind]
        assert entry["MainDicomTags"]["SeriesDescription"] == datasets[0].SeriesDescription
        assert int(entry["MainDicomTags"]["SeriesNumber"]) == datasets[0].SeriesNumber
        stored = {orthanc.rest(f"/instances/{instance}")["MainDicomTags"]["SOPInstanceUID"]
                  for instance in entry["Instances"]}
        assert stored == {ds.SOPInstanceUID for ds in datasets}
    assert len(series) == 1 + len(objects)  # the NM series and one per result object
