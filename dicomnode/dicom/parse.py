"""Reading a received C-STORE data set from its bytes, refusing what is not read fully and
consistently (each refusal a :class:`Refusal` with its DICOM status and reason).

Part of "receive" in docs/architecture.md; the checks that follow on the data set read here are
:mod:`dicomnode.dicom.validate`. Values are read from the received bytes in memory, so no declared
length makes the reader allocate more than arrived; every top-level element's declared length is then
checked against the bytes received (PS3.5 §7.1); the VR encoding must match the negotiated transfer
syntax (PS3.5 §7.1.2 / §7.1.3); a deflated data set (PS3.5 A.5) is inflated step by step within a
ceiling and the decoding budget (:mod:`dicomnode.dicom.budget`).
"""

from __future__ import annotations

import io
import zlib

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.tag import Tag
from pydicom.uid import UID

from dicomnode.dicom.budget import COPIES, INFLATE_STEP, Hold
from dicomnode.dicom.status import Status
from dicomnode.segmentation.viewrules import frame_count

MAX_INFLATED = 512 * 1024 * 1024  # a deflated data set may not inflate beyond this (deflate bombs)
_UNDEFINED_LENGTH = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010


class Refusal(Exception):
    """The instance is refused with ``status``; ``reason`` says why (logged, kept in quarantine)."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason



def brief(exc: BaseException) -> str:
    """An exception's type and first line, at most 200 characters (for a refusal's reason)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:200]


# -- the data set --------------------------------------------------------------------------------------


def parse_dataset(raw: bytes, syntax: UID, hold: Hold) -> Dataset:
    """Read the data set in the negotiated transfer syntax; refuse anything not read fully and consistently."""
    cannot = Status.CANNOT_UNDERSTAND
    if syntax.is_deflated:
        raw = _inflate(raw, hold)
    if not raw:
        raise Refusal(cannot, "the data set is empty")
    _check_vr_encoding(raw, syntax)
    undefined_pixels: list[bool] = []

    def native_pixels_of_undefined_length(tag: int, _vr: str | None, length: int) -> bool:
        if tag == _PIXEL_DATA and length == _UNDEFINED_LENGTH and not syntax.is_encapsulated:
            undefined_pixels.append(True)
            return True
        return False

    try:
        ds = read_dataset(io.BytesIO(raw), syntax.is_implicit_VR, syntax.is_little_endian,
                          stop_when=native_pixels_of_undefined_length)
    except Exception as exc:  # pydicom raises many types for broken input
        raise Refusal(cannot, f"not readable as DICOM: {brief(exc)}") from None
    if undefined_pixels:  # PS3.5 A.4: undefined length only for encapsulated (compressed) Pixel Data
        raise Refusal(cannot, f"Pixel Data (7FE0,0010) has undefined length in native {syntax.name}")
    _check_declared_lengths(ds, len(raw))
    try:
        for _ in ds.iterall():  # convert every value, nested ones too
            pass
    except Exception as exc:
        raise Refusal(cannot, f"a value cannot be decoded: {brief(exc)}") from None
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


def _inflate(raw: bytes, hold: Hold) -> bytes:
    """Inflate a Deflated Explicit VR Little Endian data set (PS3.5 A.5), at most :data:`MAX_INFLATED`
    bytes, :data:`~dicomnode.dicom.budget.INFLATE_STEP` at a time, each step held from the budget
    before it is inflated (so a deflate bomb stops at the budget)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflated = bytearray()
    pending = raw
    try:
        while not inflater.eof:
            hold.take(COPIES * INFLATE_STEP, "the inflated data set")
            inflated += inflater.decompress(pending, INFLATE_STEP)
            pending = inflater.unconsumed_tail
            if len(inflated) > MAX_INFLATED:
                raise Refusal(Status.CANNOT_UNDERSTAND, f"deflated data set inflates to more than {MAX_INFLATED} bytes")
            if not pending and not inflater.eof:
                inflated += inflater.flush()
                break
    except zlib.error as exc:
        raise Refusal(Status.CANNOT_UNDERSTAND, f"deflated data set does not inflate: {exc}") from None
    if not inflater.eof:
        raise Refusal(Status.CANNOT_UNDERSTAND, "deflated data set is truncated")
    return bytes(inflated)


def decoded_size(ds: Dataset) -> int:
    """Bytes that decoding the compressed Pixel Data gives (PS3.5 §8.2): Rows × Columns × Frames ×
    Samples per Pixel × Bits Allocated / 8, as the data set declares them (checked already)."""
    frames = frame_count(ds)
    return (int(ds.Rows) * int(ds.Columns) * frames * int(ds.SamplesPerPixel) * int(ds.BitsAllocated) + 7) // 8


def _check_vr_encoding(raw: bytes, syntax: UID) -> None:
    """The first element must be encoded as the transfer syntax says (PS3.5 §7.1.2 / §7.1.3).

    In explicit VR the two bytes after the tag are the VR, two upper-case letters; in implicit VR they
    are the low half of a 32-bit length (the same test pydicom uses to guess, but a guess is not
    acceptable here: a file stored with the wrong transfer syntax misleads every later reader).
    """
    vr = raw[4:6]
    explicit = len(vr) == 2 and all(0x41 <= byte <= 0x5A for byte in vr)
    if explicit == syntax.is_implicit_VR:
        actual = "explicit" if explicit else "implicit"
        raise Refusal(Status.CANNOT_UNDERSTAND,
                      f"data set is encoded in {actual} VR, not as the negotiated {syntax.name}")


def _check_declared_lengths(ds: Dataset, size: int) -> None:
    """Top-level elements must lie inside the received bytes and cover them to the end (PS3.5 §7.1).

    Values are read from the received bytes in memory, so a declared length can never make the reader
    allocate more than arrived; this check then refuses what such a length means: a truncated or
    corrupt data set (pydicom itself would silently keep the short value).
    """
    last_end: int | None = None  # where the last element (highest tag, last on the wire) ends
    for tag in sorted(ds.keys()):
        element = ds.get_item(tag)
        if not isinstance(element, RawDataElement):  # read already (undefined-length sequence)
            last_end = None
            continue
        if element.length == _UNDEFINED_LENGTH:
            last_end = element.value_tell + len(element.value or b"") + 8  # + sequence delimiter item
        else:
            last_end = element.value_tell + element.length
        if last_end > size:
            raise Refusal(
                Status.CANNOT_UNDERSTAND,
                f"{Tag(tag)} declares {element.length} bytes but only {max(size - element.value_tell, 0)} "
                "were received (truncated or corrupt length)",
            )
    if last_end is not None and last_end < size:
        raise Refusal(Status.CANNOT_UNDERSTAND,
                      f"truncated element header: {size - last_end} bytes after the last complete element")
