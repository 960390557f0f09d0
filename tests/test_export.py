"""Export to real peers: dcmtk storescp and Orthanc as the PACS. Delivery over one association,
PACS down then up (the destination backs off, nothing is hammered, then everything arrives),
permanent association rejection and unsupported SOP classes (REFUSED, shown, not retried until
``retry``), and the C-STORE status table."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import SegmentationStorage
from sqlalchemy import func, select

from dicomnode.dicom.peers import Destination
from dicomnode.ops.status import retry
from dicomnode.pipeline.assembly import AssemblyPolicy, assemble
from dicomnode.pipeline.export import ExportPolicy, Exporter, DeliveryVerdict, classify_status
from dicomnode.pipeline.queue import QueuePolicy
from dicomnode.pipeline.results import ResultOptions
from dicomnode.pipeline.models import NodeModels
from dicomnode.pipeline.worker import Worker
from dicomnode.store.models import Export, ExportAttempt, ExportState, ResultKind, ResultObject, utcnow
from dicomnode.store.spool import Spool
from tests.nm_factory import nm_study, phantom_counts
from tests.peers import StoreSCP, free_port
from tests.processing_helpers import sqlite_database, store_study
from tests.processing_helpers import threshold_segmenter  # noqa: F401 (the "segmenter" fixture)

POLICY = ExportPolicy(backoff_initial_seconds=30, backoff_max_seconds=120, batch_size=10)
OPTIONS = ResultOptions(kinds=(ResultKind.SEG,))

pytestmark = pytest.mark.network


@pytest.fixture
def node(tmp_path, segmenter):
    """A node database and spool holding two processed studies whose results wait in the outbox."""
    database = sqlite_database(tmp_path)
    spool = Spool(tmp_path / "spool")  # closed below

    def process(destinations: list[str], studies: int = 2, options: ResultOptions = OPTIONS) -> list[str]:
        worker = Worker(database, spool, NodeModels(planar=segmenter), options, destinations, QueuePolicy())
        for seed in range(studies):
            store_study(database, spool, nm_study(phantom_counts(rows=256, columns=64, seed=seed)))
        assemble(database, AssemblyPolicy(quiet_seconds=0))
        while worker.run_once():
            pass
        with database.session() as session:
            return list(session.scalars(select(ResultObject.sop_instance_uid)).all())

    yield database, spool, process
    spool.close()
    database.dispose()


def exporter(database, spool, *destinations: Destination) -> Exporter:
    return Exporter(database, spool, destinations, calling_ae="DICOMNODE", policy=POLICY, timeout=5)


def destination(peer, name: str = "PACS") -> Destination:
    return Destination(name=name, host="127.0.0.1", port=peer.port, ae_title=peer.aet)


def export_states(database) -> dict[str, int]:
    with database.session() as session:
        return {state.value: count for state, count in
                session.execute(select(Export.state, func.count()).group_by(Export.state)).all()}


def test_results_are_delivered_to_storescp_over_one_association(node, storescp):
    database, spool, process = node
    sent = process(["PACS"])
    assert len(sent) == 4  # two studies, one SEG per view
    export = exporter(database, spool, destination(storescp))
    assert export.run_once()  # one batch carries all four
    assert not export.run_once()
    assert export_states(database) == {"delivered": 4}
    assert storescp.received_sop_instance_uids() == set(sent)
    with database.session() as session:
        attempts = session.scalars(select(ExportAttempt.status)).all()
        assert attempts == ["0x0000"] * 4
        assert all(row.delivered_at is not None for row in session.scalars(select(Export)))


def test_results_reach_orthanc_in_the_source_study(node, orthanc):
    database, spool, process = node
    sent = process(["ORTHANC"], studies=1)
    exporter(database, spool, destination(orthanc, "ORTHANC")).run_once()
    assert export_states(database) == {"delivered": 2}
    assert orthanc.sop_instance_uids() == set(sent)
    with database.session() as session:
        study_uid = session.scalars(select(ResultObject)).first().job.study.study_instance_uid
    (study,) = orthanc.rest("/studies?expand")
    assert study["MainDicomTags"]["StudyInstanceUID"] == study_uid


def test_pacs_down_backs_off_the_destination_then_delivers_when_it_is_up(node, tmp_path):
    database, spool, process = node
    pacs = StoreSCP(port=free_port(), workdir=tmp_path / "pacs")  # not started: the PACS is down
    sent = process(["PACS"])
    export = Exporter(database, spool, [destination(pacs)], "DICOMNODE",
                      ExportPolicy(backoff_initial_seconds=30, backoff_max_seconds=120,
                                   batch_size=2), timeout=5)
    start = utcnow()
    assert export.run_once(now=start)  # one batch of two tried, then the destination waits
    assert not export.run_once(now=start)  # the other two are held back too: no hammering
    sent = process(["PACS"], studies=1)  # all results so far: two more finished meanwhile wait as well
    assert len(sent) == 6
    assert not export.run_once(now=start)
    with database.session() as session:
        rows = session.scalars(select(Export)).all()
        assert {row.state for row in rows} == {ExportState.PENDING}
        assert sorted(row.attempts for row in rows) == [0, 0, 0, 0, 1, 1]
        assert all(row.next_attempt_at.replace(tzinfo=None) > start.replace(tzinfo=None) + timedelta(seconds=29)
                   for row in rows if row.id <= 4)
        assert {row.last_status for row in rows if row.attempts} == {"connection refused"}
    with pacs:
        later = start + timedelta(seconds=61)
        while export.run_once(now=later):
            pass
        assert pacs.received_sop_instance_uids() == set(sent)
    assert export_states(database) == {"delivered": 6}


class RefusingSCP(StoreSCP):
    """dcmtk storescp answering every association request with A-ASSOCIATE-RJ (``--refuse``)."""

    def command(self) -> list[str]:
        return [*super().command(), "--refuse"]


def test_a_refused_association_is_refused_once_and_shown_until_retry(node, tmp_path):
    database, spool, process = node
    process(["PACS"])
    with RefusingSCP(workdir=tmp_path / "refusing") as refusing:
        export = exporter(database, spool, destination(refusing))
        # storescp --refuse closes the connection right after its A-ASSOCIATE-RJ; now and then
        # pynetdicom sees the close first and reports an abort, which is rightly treated as
        # transient (back off, try again; a transient failure is retried for as long as it takes).
        # The refusal must be recognised within a few tries (on a loaded machine three tries in a row
        # have all seen the abort).
        later = utcnow()
        for _ in range(10):
            assert export.run_once(now=later)
            if export_states(database) == {"refused": 4}:
                break
            later += timedelta(hours=1)
        assert not export.run_once(now=later + timedelta(days=1))  # never again by itself
    assert export_states(database) == {"refused": 4}
    with database.session() as session:
        statuses = session.scalars(select(ExportAttempt.status)).all()
    assert set(statuses) <= {"association rejected (permanent)", "association aborted", "timeout"}
    assert "association rejected (permanent)" in statuses
    assert retry(database, jobs=False).exports == 4
    assert export_states(database) == {"pending": 4}


NM_ONLY_PROFILE = r"""
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LocalEndianExplicit
TransferSyntax2 = LittleEndianImplicit
[[PresentationContexts]]
[ImagesOnly]
PresentationContext1 = VerificationSOPClass\Uncompressed
PresentationContext2 = NuclearMedicineImageStorage\Uncompressed
PresentationContext3 = SecondaryCaptureImageStorage\Uncompressed
PresentationContext4 = MultiframeTrueColorSecondaryCaptureImageStorage\Uncompressed
[[Profiles]]
[ImagesOnly]
PresentationContexts = ImagesOnly
"""


class ImagesOnlySCP(StoreSCP):
    """dcmtk storescp that accepts NM and Secondary Capture images but not SEG (an older PACS)."""

    def command(self) -> list[str]:
        config = self.workdir / "images-only.cfg"
        config.write_text(NM_ONLY_PROFILE)
        command = super().command()
        command.remove("+xa")
        return [*command[:-1], "-xf", str(config), "ImagesOnly", command[-1]]


def test_an_unsupported_sop_class_is_refused_not_retried(node, tmp_path):
    """The SC goes through on the same association; the SEGs are refused once, not retried."""
    database, spool, process = node
    process(["PACS"], studies=1, options=ResultOptions(kinds=(ResultKind.SEG, ResultKind.SC)))
    with ImagesOnlySCP(workdir=tmp_path / "old-pacs") as pacs:
        export = exporter(database, spool, destination(pacs))
        export.run_once()
        assert not export.run_once(now=utcnow() + timedelta(days=1))
        received = pacs.received_sop_instance_uids()
    with database.session() as session:
        outcome = {(row.result.kind, row.state, row.last_status) for row in session.scalars(select(Export))}
        sc_uid = session.scalars(select(ResultObject.sop_instance_uid).where(ResultObject.kind == ResultKind.SC)).one()
    assert outcome == {(ResultKind.SEG, ExportState.REFUSED, "no presentation context"),
                       (ResultKind.SC, ExportState.DELIVERED, "0x0000")}
    assert received == {sc_uid}


def test_a_destination_that_takes_none_of_the_classes_is_refused(node, tmp_path):
    database, spool, process = node
    process(["PACS"])  # SEGs only: the association has no presentation context at all
    with ImagesOnlySCP(workdir=tmp_path / "old-pacs") as pacs:
        export = exporter(database, spool, destination(pacs))
        export.run_once()
        assert not export.run_once(now=utcnow() + timedelta(days=1))
        assert pacs.files() == []
    assert export_states(database) == {"refused": 4}
    with database.session() as session:
        assert set(session.scalars(select(Export.last_status)).all()) == {"no presentation context"}


def test_a_transient_failure_status_is_retried_for_that_object_only(node):
    """A PACS that is out of resources for the first object (0xA700) gets it again after back-off."""
    database, spool, process = node
    sent = process(["PACS"], studies=1)
    received: list[str] = []

    def handle_store(event):
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0xA700 if len(received) == 1 else 0x0000  # the first object: out of resources

    ae = AE(ae_title="FLAKY")
    ae.add_supported_context(SegmentationStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)])
    try:
        flaky = Destination(name="PACS", host="127.0.0.1", port=port, ae_title="FLAKY")
        export = exporter(database, spool, flaky)
        start = utcnow()
        export.run_once(now=start)
        states = export_states(database)
        assert states == {"delivered": 1, "pending": 1}
        assert not export.run_once(now=start + timedelta(seconds=5))  # its own back-off (30 s)
        assert export.run_once(now=start + timedelta(seconds=31))
    finally:
        server.shutdown()
    assert export_states(database) == {"delivered": 2}
    assert len(received) == 3 and received[2] == received[0]  # the refused one came again
    assert set(received) == set(sent)
    with database.session() as session:
        assert sorted(session.scalars(select(ExportAttempt.status)).all()) == ["0x0000", "0x0000", "0xA700"]


@pytest.mark.parametrize(("status", "verdict"), [
    (0x0000, DeliveryVerdict.DELIVERED),  # success
    (0xB000, DeliveryVerdict.DELIVERED),  # coercion of data elements (warning)
    (0xB007, DeliveryVerdict.DELIVERED),  # data set does not match SOP class (warning)
    (0xB001, DeliveryVerdict.DELIVERED),  # any warning: the object was stored (PS3.7 C.1.3)
    (0x0107, DeliveryVerdict.DELIVERED),  # attribute list error (warning)
    (0x0117, DeliveryVerdict.REFUSED),  # invalid SOP instance
    (0x0211, DeliveryVerdict.REFUSED),  # unrecognised operation
    (0xA9FF, DeliveryVerdict.REFUSED),
    (0x0213, DeliveryVerdict.RETRY),  # resource limitation
    (0x0122, DeliveryVerdict.REFUSED),  # SOP class not supported
    (0x0124, DeliveryVerdict.REFUSED),  # not authorised
    (0xA900, DeliveryVerdict.REFUSED),  # data set does not match SOP class (error)
    (0xA700, DeliveryVerdict.RETRY),  # out of resources
    (0xA7FF, DeliveryVerdict.RETRY),
    (0x0110, DeliveryVerdict.RETRY),  # processing failure
    (0xC000, DeliveryVerdict.REFUSED),  # cannot understand: the same bytes are not understood next time either
    (0xC123, DeliveryVerdict.REFUSED),
    (0xC211, DeliveryVerdict.REFUSED),  # pynetdicom: the SCP's handler raised (in the cannot-understand range)
    (0x0116, DeliveryVerdict.DELIVERED),  # attribute value out of range (warning)
    (0xBFFF, DeliveryVerdict.DELIVERED),
])
def test_status_table(status, verdict):
    assert classify_status(status).verdict is verdict


class AnsweringSCP:
    """A pynetdicom Storage SCP for SEG that answers each C-STORE with the next status of ``answers``
    (0x0000 once they run out), after ``delay`` seconds: the peer for statuses no PACS can be told to
    give. ``require_calling_aet`` and ``maximum_associations`` as pynetdicom's AE."""

    def __init__(self, answers=(), delay: float = 0.0, require_calling_aet=(), maximum_associations: int = 10):
        import time

        self.answers, self.received = list(answers), []
        ae = AE(ae_title="ANSWERING")
        ae.add_supported_context(SegmentationStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        ae.require_calling_aet = list(require_calling_aet)
        ae.maximum_associations = maximum_associations

        def handle_store(event):
            time.sleep(delay)
            self.received.append(str(event.request.AffectedSOPInstanceUID))
            return self.answers.pop(0) if self.answers else 0x0000

        self.port = free_port()
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, handle_store)])
        self.destination = Destination(name="PACS", host="127.0.0.1", port=self.port, ae_title="ANSWERING")

    def __enter__(self) -> AnsweringSCP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()


def outcomes(database) -> dict[str, tuple[ExportState, str]]:
    with database.session() as session:
        return {row.result.sop_instance_uid: (row.state, row.last_status) for row in session.scalars(select(Export))}


def test_warnings_are_delivered_cannot_understand_refused_out_of_resources_retried(node):
    """A real peer answering each status of the policy (issue 17): every warning is a delivery,
    0xCxxx / 0xA9xx / 0x0122 refuse that object for good, 0xA7xx comes again after its back-off."""
    database, spool, process = node
    sent = process(["PACS"], studies=5)  # ten SEGs
    answers = [0x0001, 0x0107, 0x0116, 0xB123, 0xC123, 0xC211, 0xA9FF, 0x0122, 0xA701, 0x0000]
    with AnsweringSCP(answers) as pacs:
        export = exporter(database, spool, pacs.destination)
        start = utcnow()
        assert export.run_once(now=start)
        assert len(pacs.received) == 10 and set(pacs.received) == set(sent)
        first = outcomes(database)
        by_answer = {answer: first[uid] for answer, uid in zip(answers, pacs.received)}
        for warning in (0x0001, 0x0107, 0x0116, 0xB123):
            assert by_answer[warning] == (ExportState.DELIVERED, f"0x{warning:04X}")
        for refusal in (0xC123, 0xC211, 0xA9FF, 0x0122):
            assert by_answer[refusal] == (ExportState.REFUSED, f"0x{refusal:04X}")
        assert by_answer[0xA701] == (ExportState.PENDING, "0xA701")
        assert export.run_once(now=start + timedelta(seconds=31))  # the 0xA701 object only, once more
        assert not export.run_once(now=start + timedelta(days=1))  # the refused ones never again
    assert len(pacs.received) == 11 and pacs.received[10] == pacs.received[8]
    assert export_states(database) == {"delivered": 6, "refused": 4}


def test_an_unknown_calling_ae_is_refused_and_not_retried(node):
    """A-ASSOCIATE-RJ rejected-permanent, calling AE title not recognised (PS3.8 9.3.4), from a
    pynetdicom peer that knows only another caller: the batch is refused and never sent again."""
    database, spool, process = node
    process(["PACS"], studies=1)
    with AnsweringSCP(require_calling_aet=["SOMEONE_ELSE"]) as pacs:
        export = exporter(database, spool, pacs.destination)
        assert export.run_once()
        assert not export.run_once(now=utcnow() + timedelta(days=1))
    assert pacs.received == []
    assert export_states(database) == {"refused": 2}
    with database.session() as session:
        assert set(session.scalars(select(Export.last_status)).all()) == {"association rejected (permanent)"}


def test_a_transient_rejection_and_a_timeout_back_off_and_deliver_later(node):
    """A peer at its association limit rejects transiently (PS3.8 9.3.4, "local limit exceeded"), a
    peer that answers after the DIMSE timeout is no answer: both back off, neither ends an export."""
    from dicomnode.dicom.scu import associate

    database, spool, process = node
    process(["PACS"], studies=1)
    with AnsweringSCP(maximum_associations=1) as pacs:
        export = exporter(database, spool, pacs.destination)
        start = utcnow()
        with associate(pacs.destination, "OTHER", [(SegmentationStorage, ["1.2.840.10008.1.2.1"])], 5):
            assert export.run_once(now=start)  # the only association slot is taken
        with database.session() as session:
            assert set(session.scalars(select(Export.last_status)).all()) == {"association rejected (transient)"}
        assert export_states(database) == {"pending": 2}
    slow = Exporter(database, spool, [], calling_ae="DICOMNODE", policy=POLICY, timeout=1)
    with AnsweringSCP(delay=3) as pacs:
        slow.destinations = {"PACS": pacs.destination}
        assert slow.run_once(now=start + timedelta(minutes=5))
    assert export_states(database) == {"pending": 2}
    with database.session() as session:
        assert "association lost" in set(session.scalars(select(Export.last_status)).all())
    with AnsweringSCP() as pacs:
        export = exporter(database, spool, pacs.destination)
        assert export.run_once(now=start + timedelta(hours=1))
    assert export_states(database) == {"delivered": 2}


def test_a_transient_failure_never_ends_an_export_and_its_back_off_is_capped(tmp_path):
    """A PACS down for hours: fifty failed attempts later the object is still pending, retried every
    backoff_max_seconds (issue: the old retry budget of ~30 min failed everything)."""
    from pydicom.uid import generate_uid

    from dicomnode.pipeline.export import DeliveryOutcome, claim_batch, record
    from dicomnode.pipeline.queue import StoredResult, claim, complete
    from dicomnode.store.models import as_utc
    from tests.processing_helpers import add_study

    database = sqlite_database(tmp_path / "var")
    add_study(database)
    assemble(database, AssemblyPolicy(quiet_seconds=0))
    job = claim(database, "w", QueuePolicy())
    complete(database, job, [StoredResult(kind=ResultKind.SEG, sop_instance_uid=generate_uid(),
                                          sop_class_uid=SegmentationStorage, series_instance_uid=generate_uid(),
                                          path="results/x.dcm")], ["PACS"])
    policy = ExportPolicy(backoff_initial_seconds=5, backoff_max_seconds=600)
    now = utcnow()
    for _ in range(50):
        destination, items = claim_batch(database, "exporter", ["PACS"], policy, now=now)
        assert destination == "PACS" and len(items) == 1
        state = record(database, "exporter", items[0], DeliveryOutcome(DeliveryVerdict.RETRY, "0xA700", "out of resources"), policy,
                       now=now)
        assert state is ExportState.PENDING
        with database.session() as session:
            export = session.scalars(select(Export)).one()
            wait = (as_utc(export.next_attempt_at) - now).total_seconds()
        assert wait <= 600
        now = as_utc(export.next_attempt_at)
    assert export.attempts == 50 and wait == 600
    database.dispose()
