"""A corpus of malformed (and awkward but legal) C-STORE inputs, with the answer the receiver must give.

Each :class:`Kind` builds the bytes of one data set exactly as they go on the wire, the presentation
context's transfer syntax and the command's Affected SOP Class / Instance UIDs. :func:`send_raw`
puts them on the wire unchanged (pynetdicom's chunked send: the data set bytes are not decoded or
re-encoded, so inputs that dcmtk's storescu would refuse to send still reach the receiver).

Decisions (status answered by the receiver; "refused" kinds are quarantined with their reason):

==================================  =======  ==========================================================
kind                                status   decision
==================================  =======  ==========================================================
valid_two_frame                     0x0000   baseline: ANT + POST in one instance, SCT view codes
valid_implicit_vr                   0x0000   Implicit VR Little Endian context
valid_deflated                      0x0000   Deflated Explicit VR Little Endian context
valid_rle                           0x0000   RLE Lossless, decoded as a check
signed_16bit                        0x0000   legal (PS3.3 C.8.4.7 allows Pixel Representation 1): accept
unsigned_8bit                       0x0000   legal and consistent (Bits Allocated 8): accept
odd_length_padded                   0x0000   8-bit odd pixel count + one pad byte (PS3.5 §7.1.1): accept
single_frame_no_view                0x0000   View Code Sequence is Type 3; the study may decide by order
two_frames_views_assumed            0x0000   no view information: frame order (anterior first), noted
image_type_static                   0x0000   legal NM static: stored as a static (never segmented), no views
legacy_srt_view_codes               0x0000   SRT G-5215 / G-5216 (CID 26 legacy): accept
missing_number_of_frames            0x0000   one frame assumed, warning logged
seg_of_held_instance                0x0000   a viewer's SEG on an instance we hold: a training label
uid_leading_zero                    0x0000   ``….091120.…`` component (field practice; warning logged)
ct_image                            0x0000   CT Image Storage (a SPECT/CT exam's CT): stored, never segmented
screen_capture                      0x0000   Secondary Capture, 8-bit RGB (a camera's screen save): stored
not_dicom                           0xC000   random bytes
truncated_header                    0xC000   cut inside an element header: bytes left after the last one
truncated_pixel_data                0xC000   Pixel Data declares more bytes than arrived
enormous_pixel_data_length          0xC000   Pixel Data length 0xFFFFFFF0: refused, never read
enormous_element_length             0xC000   Patient's Name length 0xFFFFFFF0 (implicit VR)
undecodable_value                   0xC000   Rows (US) with a 3-byte value
explicit_bytes_on_implicit_context  0xC000   encoding does not match the negotiated transfer syntax
implicit_bytes_on_explicit_context  0xC000   idem, the other way round
plain_bytes_on_deflate_context      0xC000   "deflated" data that does not inflate
deflate_bomb                        0xA700   520 kB of deflate that inflates beyond the decoding budget
native_pixel_data_undefined_length  0xC000   native Pixel Data of undefined length (PS3.5 A.4: encapsulated only)
bytes_after_last_element            0xC000   eight bytes that are no element after the data set
corrupt_rle                         0xC000   RLE segment offset past the frame: pixels cannot be decoded
sop_instance_uid_path_traversal     0xC000   ``../../x`` as SOP Instance UID: no path is ever built
study_uid_path_traversal            0xC000   ``1.2/../../../etc`` as Study Instance UID
uid_too_long                        0xC000   a 65-character Study Instance UID (PS3.5 §9.1)
uid_empty_component                 0xC000   ``1..3`` (a UID has no empty component)
seg_of_unknown_instance             0xC000   a SEG whose source this node does not hold
seg_without_references              0xC000   a SEG that references nothing at all
rows_columns_mismatch               0xA900   Rows x Columns disagree with the Pixel Data length
frames_mismatch                     0xA900   Number of Frames 3, data for 2
zero_number_of_frames               0xA900   Number of Frames 0
bits_allocated_32                   0xA900   NM allows 8 or 16 (C.8.4.7)
high_bit_mismatch                   0xA900   High Bit must be Bits Stored - 1
missing_pixel_data                  0xA900   Type 1 attribute missing
missing_rows                        0xA900   Type 1 attribute missing
zero_rows                           0xA900   Rows 0
missing_study_uid                   0xA900   Type 1 attribute missing
modality_not_nm                     0xA900   NM Image Storage with Modality CT
dataset_sop_class_differs           0xA900   data set says CT Image Storage, command says NM (as dcmtk)
dataset_sop_instance_differs        0xA900   data set's SOP Instance UID differs from the command's
two_anterior_views                  0xA900   contradictory views: both detectors anterior
detector_vector_frames_mismatch     0xA900   Detector Vector has 1 value for 2 frames
detector_vector_without_item        0xA900   Detector Vector 3 with two detector items
unreadable_patient_orientation      0xA900   Patient Orientation ``A\\P`` on a planar view
missing_pixel_spacing               0xA900   cannot measure lesions without it
pixel_spacing_not_numeric           0xA900   Pixel Spacing ``abcd\\efghi``
rgb_pixels                          0xA900   3 samples per pixel: not a grey-level NM view
code_contradicted_by_description    0xA900   View Code posterior, Series Description "WB ANT"
oblique_detector                    0xA900   a WHOLE BODY instance with a detector at 0.7071, 0.7071
==================================  =======  ==========================================================

Not in this table because it never reaches the handler: a SOP class the node does not receive (e.g.
MR Image Storage) is not negotiated at all — its presentation context is rejected (PS3.4 B.2.3) and the
sender reports "no presentation context" (``tests/test_scp.py``).
"""

from __future__ import annotations

import copy
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.dsutils import encode

from dicomnode.segmentation.scan import View
from tests.nm_factory import nm_study, phantom_counts

NM = "1.2.840.10008.5.1.4.1.1.20"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
CT = "1.2.840.10008.5.1.4.1.1.2"
SUCCESS, CANNOT_UNDERSTAND, DOES_NOT_MATCH, OUT_OF_RESOURCES = 0x0000, 0xC000, 0xA900, 0xA700


@dataclass(frozen=True)
class Sample:
    """One C-STORE as it goes on the wire."""

    sop_class_uid: str  # command's Affected SOP Class UID (and the context's abstract syntax)
    sop_instance_uid: str  # command's Affected SOP Instance UID (may be invalid on purpose)
    transfer_syntax: str  # the presentation context's transfer syntax
    body: bytes  # the data set bytes


@dataclass(frozen=True)
class Kind:
    name: str
    status: int  # what the receiver must answer
    reason: str  # a word the refusal reason must contain (empty for accepted kinds)
    build: Callable[[list[Dataset]], Sample]  # from the study the node already holds


# -- building blocks ---------------------------------------------------------------------------------


def study(layout: str = "multiframe", seed: int = 0, **kwargs) -> list[Dataset]:
    """A small valid NM study (64 x 16)."""
    return nm_study(phantom_counts(rows=64, columns=16, seed=seed), layout=layout, **kwargs)


def one(layout: str = "multiframe", **kwargs) -> Dataset:
    return study(layout, **kwargs)[0]


def sample(ds: Dataset, syntax: str = ExplicitVRLittleEndian, *, body: bytes | None = None,
           sop_class: str | None = None, sop_instance: str | None = None) -> Sample:
    """Encode ``ds`` in ``syntax`` (or take ``body`` as given) with the command UIDs of ``ds``."""
    if body is None:
        syntax_uid = hd.UID(syntax)
        body = encode(ds, syntax_uid.is_implicit_VR, syntax_uid.is_little_endian, syntax_uid.is_deflated)
        assert body is not None, "pydicom could not encode the data set"
    return Sample(sop_class or str(ds.SOPClassUID), sop_instance or str(ds.SOPInstanceUID), str(syntax), body)


def changed(**attributes: object) -> Callable[[list[Dataset]], Sample]:
    """A valid two-frame instance with some attributes replaced (None deletes)."""

    def build(_held: list[Dataset]) -> Sample:
        ds = one()
        for keyword, value in attributes.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        return sample(ds)

    return build


def mangled(transform: Callable[[bytes], bytes] = lambda body: body, syntax: str = ExplicitVRLittleEndian,
            encoded_as: str | None = None) -> Callable[[list[Dataset]], Sample]:
    """A valid two-frame instance encoded in ``encoded_as`` (default ``syntax``), its bytes passed
    through ``transform``, sent on a ``syntax`` context with the instance's own command UIDs."""

    def build(_held: list[Dataset]) -> Sample:
        ds = one()
        return sample(ds, syntax, body=transform(sample(ds, encoded_as or syntax).body))

    return build


def _set_length(body: bytes, header: bytes, length: int) -> bytes:
    """Overwrite the 32-bit value length that follows ``header`` (first occurrence)."""
    at = body.index(header) + len(header)
    return body[:at] + struct.pack("<I", length) + body[at + 4:]


def _pixel_header(body: bytes) -> bytes:
    for vr in (b"OW", b"OB"):
        header = b"\xe0\x7f\x10\x00" + vr + b"\x00\x00"
        if header in body:
            return header
    raise AssertionError("no explicit-VR Pixel Data element")


def _rle(ds: Dataset) -> Dataset:
    ds = copy.deepcopy(ds)
    ds.compress(RLELossless)
    return ds


def seg_for(source: Dataset) -> Dataset:
    """A viewer's binary SEG on one single-frame NM instance (highdicom, per the notes' proxy recipe)."""
    proxy = copy.deepcopy(source)
    for keyword in ("FrameOfReferenceUID", "PositionReferenceIndicator"):
        proxy.pop(keyword, None)
    group = Dataset()
    group.PixelMeasuresSequence = Sequence([Dataset()])
    group.PixelMeasuresSequence[0].PixelSpacing = source.PixelSpacing
    proxy.SharedFunctionalGroupsSequence = Sequence([group])
    mask = np.zeros((source.Rows, source.Columns), np.uint8)
    mask[10:20, 4:8] = 1
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Bone metastasis",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.NeoplasmSecondary, algorithm_type="MANUAL",
    )
    return hd.seg.Segmentation(
        source_images=[proxy], pixel_array=mask, segmentation_type="BINARY",
        segment_descriptions=[description], series_instance_uid=hd.UID(), series_number=200,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="Viewer", manufacturer_model_name="v",
        software_versions="1", device_serial_number="1",
    )


def _seg_without_references(held: list[Dataset]) -> Sample:
    seg = seg_for(held[0])
    del seg.ReferencedSeriesSequence
    for frame in seg.PerFrameFunctionalGroupsSequence:
        frame.pop("DerivationImageSequence", None)
    seg.pop("SourceImageSequence", None)
    return sample(seg)


def _two_anterior(_held: list[Dataset]) -> Sample:
    ds = one()
    for item in ds.DetectorInformationSequence:
        item.ViewCodeSequence[0].CodeValue = "399321004"
    return sample(ds)


def _rgb(_held: list[Dataset]) -> Sample:
    ds = one("split")
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = bytes(ds.Rows * ds.Columns * 3 * 2)
    return sample(ds)


def _replace_value(ds: Dataset, header: bytes, value: bytes) -> Sample:
    """Encode ``ds`` and replace the value after ``header`` (explicit VR, 2-byte length) by ``value``
    of the same length: for values pydicom would refuse to set."""
    body = sample(ds).body
    at = body.index(header) + len(header)
    (length,) = struct.unpack("<H", body[at:at + 2])
    assert length == len(value), f"value must be {length} bytes"
    return sample(ds, body=body[:at + 2] + value + body[at + 2 + length:])


def _uid_in_dataset(keyword: str, value: str) -> Callable[[list[Dataset]], Sample]:
    def build(_held: list[Dataset]) -> Sample:
        ds = one()
        setattr(ds, keyword, value)
        return sample(ds, sop_instance=str(ds.SOPInstanceUID) if keyword != "SOPInstanceUID" else value)

    return build


KINDS: list[Kind] = [
    # -- accepted -----------------------------------------------------------------------------------
    Kind("valid_two_frame", SUCCESS, "", lambda h: sample(one())),
    Kind("valid_implicit_vr", SUCCESS, "", lambda h: sample(one(), ImplicitVRLittleEndian)),
    Kind("valid_deflated", SUCCESS, "", lambda h: sample(one(), DeflatedExplicitVRLittleEndian)),
    Kind("valid_rle", SUCCESS, "", lambda h: sample(_rle(one()), RLELossless)),
    Kind("signed_16bit", SUCCESS, "", lambda h: sample(one(signed=True))),
    Kind("unsigned_8bit", SUCCESS, "", lambda h: sample(one(bits_allocated=8))),
    Kind("odd_length_padded", SUCCESS, "",
         lambda h: sample(nm_study(phantom_counts(rows=15, columns=5), layout="split", bits_allocated=8)[0])),
    Kind("single_frame_no_view", SUCCESS, "", lambda h: sample(one("split", scheme=None, orientation={}))),
    Kind("two_frames_views_assumed", SUCCESS, "", lambda h: sample(one(scheme=None, orientation={}))),
    Kind("image_type_static", SUCCESS, "", changed(ImageType=["ORIGINAL", "PRIMARY", "STATIC", "EMISSION"])),
    Kind("legacy_srt_view_codes", SUCCESS, "", lambda h: sample(one(scheme="SRT"))),
    Kind("missing_number_of_frames", SUCCESS, "", lambda h: sample(_without(one("split"), "NumberOfFrames"))),
    Kind("seg_of_held_instance", SUCCESS, "", lambda h: sample(seg_for(h[0]))),
    Kind("uid_leading_zero", SUCCESS, "", lambda h: sample(_with(one(), SOPInstanceUID="1.2.826.0.1.3680043.8.498.20140305.091120.7"))),
    Kind("ct_image", SUCCESS, "", lambda h: sample(_with(one("split"), SOPClassUID=CT, Modality="CT",
                                                            ImageType=["ORIGINAL", "PRIMARY", "AXIAL"]))),
    Kind("screen_capture", SUCCESS, "", lambda h: sample(_screen_capture())),
    # -- cannot understand ----------------------------------------------------------------------------
    Kind("not_dicom", CANNOT_UNDERSTAND, "", mangled(lambda body: np.random.default_rng(0).bytes(4096))),
    Kind("truncated_header", CANNOT_UNDERSTAND, "truncated", mangled(lambda body: body[:203])),
    Kind("truncated_pixel_data", CANNOT_UNDERSTAND, "(7FE0,0010)", mangled(lambda body: body[:-500])),
    Kind("enormous_pixel_data_length", CANNOT_UNDERSTAND, "(7FE0,0010)",
         mangled(lambda body: _set_length(body, _pixel_header(body), 0xFFFFFFF0))),
    Kind("enormous_element_length", CANNOT_UNDERSTAND, "(0010,0010)",
         mangled(lambda body: _set_length(body, b"\x10\x00\x10\x00", 0xFFFFFFF0), ImplicitVRLittleEndian)),
    Kind("undecodable_value", CANNOT_UNDERSTAND, "decoded", mangled(lambda body: body.replace(
        b"\x28\x00\x10\x00US\x02\x00\x40\x00", b"\x28\x00\x10\x00US\x03\x00\x40\x00\x00", 1))),
    Kind("explicit_bytes_on_implicit_context", CANNOT_UNDERSTAND, "explicit VR",
         mangled(syntax=ImplicitVRLittleEndian, encoded_as=ExplicitVRLittleEndian)),
    Kind("implicit_bytes_on_explicit_context", CANNOT_UNDERSTAND, "implicit VR",
         mangled(syntax=ExplicitVRLittleEndian, encoded_as=ImplicitVRLittleEndian)),
    Kind("plain_bytes_on_deflate_context", CANNOT_UNDERSTAND, "inflate",
         mangled(syntax=DeflatedExplicitVRLittleEndian, encoded_as=ExplicitVRLittleEndian)),
    Kind("deflate_bomb", OUT_OF_RESOURCES, "decoding budget", lambda h: _deflate_bomb()),
    Kind("native_pixel_data_undefined_length", CANNOT_UNDERSTAND, "undefined length",
         lambda h: _native_pixels_of_undefined_length()),
    Kind("bytes_after_last_element", CANNOT_UNDERSTAND, "", mangled(lambda body: body + b"\xff" * 8)),
    Kind("corrupt_rle", CANNOT_UNDERSTAND, "decoded", lambda h: sample(_corrupt_rle(), RLELossless)),
    Kind("sop_instance_uid_path_traversal", CANNOT_UNDERSTAND, "UID", _uid_in_dataset("SOPInstanceUID", "../../x")),
    Kind("study_uid_path_traversal", CANNOT_UNDERSTAND, "Study Instance UID",
         _uid_in_dataset("StudyInstanceUID", "1.2/../../../etc")),
    Kind("uid_too_long", CANNOT_UNDERSTAND, "65 characters", _uid_in_dataset("StudyInstanceUID", "1." + "2" * 63)),
    Kind("uid_empty_component", CANNOT_UNDERSTAND, "not a UID", _uid_in_dataset("SeriesInstanceUID", "1..3")),
    Kind("seg_of_unknown_instance", CANNOT_UNDERSTAND, "references no instance",
         lambda h: sample(seg_for(one("split", seed=99)))),
    Kind("seg_without_references", CANNOT_UNDERSTAND, "references no source", _seg_without_references),
    # -- data set does not match SOP class ------------------------------------------------------------
    Kind("rows_columns_mismatch", DOES_NOT_MATCH, "Pixel Data", changed(Rows=65)),
    Kind("frames_mismatch", DOES_NOT_MATCH, "Pixel Data", changed(NumberOfFrames=3, DetectorVector=[1, 2, 1])),
    Kind("zero_number_of_frames", DOES_NOT_MATCH, "Number of Frames", changed(NumberOfFrames=0)),
    Kind("bits_allocated_32", DOES_NOT_MATCH, "Bits Allocated", changed(BitsAllocated=32, BitsStored=32, HighBit=31)),
    Kind("high_bit_mismatch", DOES_NOT_MATCH, "High Bit", changed(HighBit=7)),
    Kind("missing_pixel_data", DOES_NOT_MATCH, "PixelData", changed(PixelData=None)),
    Kind("missing_rows", DOES_NOT_MATCH, "Rows", changed(Rows=None)),
    Kind("zero_rows", DOES_NOT_MATCH, "Rows", changed(Rows=0)),
    Kind("missing_study_uid", DOES_NOT_MATCH, "Study Instance UID", changed(StudyInstanceUID=None)),
    Kind("modality_not_nm", DOES_NOT_MATCH, "Modality", changed(Modality="CT")),
    Kind("dataset_sop_class_differs", DOES_NOT_MATCH, "SOP Class UID",
         lambda h: sample(_with(one(), SOPClassUID=CT), sop_class=NM)),
    Kind("dataset_sop_instance_differs", DOES_NOT_MATCH, "SOP Instance UID",
         lambda h: sample(one(), sop_instance=generate_uid())),
    Kind("two_anterior_views", DOES_NOT_MATCH, "two anterior", _two_anterior),
    Kind("detector_vector_frames_mismatch", DOES_NOT_MATCH, "Detector Vector", changed(DetectorVector=[1])),
    Kind("detector_vector_without_item", DOES_NOT_MATCH, "Detector Vector", changed(DetectorVector=[1, 3])),
    Kind("unreadable_patient_orientation", DOES_NOT_MATCH, "Patient Orientation",
         lambda h: sample(_with(one("split", scheme=None), PatientOrientation=["A", "P"]))),
    Kind("missing_pixel_spacing", DOES_NOT_MATCH, "Pixel Spacing", changed(PixelSpacing=None)),
    Kind("pixel_spacing_not_numeric", DOES_NOT_MATCH, "Pixel Spacing", lambda h: _replace_value(
        one(), b"\x28\x00\x30\x00DS", b"abcd\\efghi")),
    Kind("rgb_pixels", DOES_NOT_MATCH, "Samples per Pixel", _rgb),
    Kind("code_contradicted_by_description", DOES_NOT_MATCH, "contradictory view information",
         lambda h: sample(_with(study("split")[1], SeriesDescription="WB ANT"))),
    Kind("oblique_detector", DOES_NOT_MATCH, "oblique", lambda h: sample(_oblique())),
]


def _deflate_bomb() -> Sample:
    """Raw deflate (PS3.5 A.5) of 520 MiB of zeros, made in 1 MiB steps (never held whole)."""
    ds = one()
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    body = b"".join(deflater.compress(zeros) for _ in range(520)) + deflater.flush()
    return sample(ds, DeflatedExplicitVRLittleEndian, body=body)


def _native_pixels_of_undefined_length() -> Sample:
    """A valid instance whose native Pixel Data says undefined length, ended by a Sequence Delimiter."""
    body = sample(one()).body
    at = body.rfind(b"\xe0\x7f\x10\x00")  # (7FE0,0010) OW, explicit VR: tag, VR, 2 reserved, 4-byte length
    length = struct.unpack("<I", body[at + 8:at + 12])[0]
    pixels = body[at + 12:at + 12 + length]
    return Sample(NM, str(one().SOPInstanceUID), ExplicitVRLittleEndian,
                  body[:at + 8] + b"\xff\xff\xff\xff" + pixels + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")


def _screen_capture() -> Dataset:
    ds = one("split")
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = bytes(int(ds.Rows) * int(ds.Columns) * 3)
    return ds


def _oblique() -> Dataset:
    ds = one()
    ds.DetectorInformationSequence[0].ImageOrientationPatient = [0.7071, 0.7071, 0, 0, 0, -1]
    return ds


def _without(ds: Dataset, keyword: str) -> Dataset:
    delattr(ds, keyword)
    return ds


def _with(ds: Dataset, **attributes: object) -> Dataset:
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _corrupt_rle() -> Dataset:
    ds = _rle(one())
    from pydicom.encaps import encapsulate, generate_fragmented_frames

    frames = [b"".join(fragments) for fragments in generate_fragmented_frames(ds.PixelData,
                                                                            number_of_frames=int(ds.NumberOfFrames))]
    frames = [frame[:4] + struct.pack("<I", 0xFFFFF0) + frame[8:] for frame in frames]  # offset past the end
    ds.PixelData = encapsulate(frames)
    return ds


def views_of(kind: str) -> tuple[str, ...]:
    """The views the index must record for the accepted kinds that hold NM images."""
    both = (View.ANTERIOR.value, View.POSTERIOR.value)
    return {"single_frame_no_view": (), "odd_length_padded": (View.ANTERIOR.value,),
            "missing_number_of_frames": (View.ANTERIOR.value,), "seg_of_held_instance": (),
            "image_type_static": (), "ct_image": (), "screen_capture": ()}.get(kind, both)


# -- sending ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: no response (the association was aborted)
    error_comment: str


def send_raw(port: int, called_ae: str, item: Sample, directory: Path, calling_ae: str = "FUZZER") -> Answer:
    """Send ``item.body`` unchanged in one association (pynetdicom chunked send of a Part 10 file)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{generate_uid()}.dcm"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = item.sop_class_uid
    meta.MediaStorageSOPInstanceUID = item.sop_instance_uid
    meta.TransferSyntaxUID = item.transfer_syntax
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    with path.open("wb") as handle:
        handle.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(handle, meta, enforce_standard=True)
        handle.write(item.body)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(item.sop_class_uid, [item.transfer_syntax])
    saved = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
        assert assoc.is_established, "the receiver refused the association"
        try:
            response = assoc.send_c_store(path)
        finally:
            if assoc.is_established:
                assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = saved
    if "Status" not in response:
        return Answer(None, "")
    return Answer(int(response.Status), str(response.get("ErrorComment", "")))
