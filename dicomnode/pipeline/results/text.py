"""The short sentences that the GSPS, the SR and the picture share, worded once.

Plain ASCII ("mm2", not "mm²") so that they are valid in the default character repertoire too.
"""

from __future__ import annotations

from dicomnode.pipeline.results.planar.burden import BoneBurden, ViewBurden
from dicomnode.pipeline.results.common import VIEW_ABBREVIATIONS


def view_summary(view: ViewBurden) -> str:
    """E.g. ``ANT: 2 lesions, 500.6 mm2`` or ``POST: no lesion detected``."""
    name = VIEW_ABBREVIATIONS[view.view]
    if view.lesion_count == 0:
        return f"{name}: no lesion detected"
    noun = "lesion" if view.lesion_count == 1 else "lesions"
    return f"{name}: {view.lesion_count} {noun}, {view.total_area_mm2:.1f} mm2"


def lesion_caption(number: int, site: str | None, probability: float | None) -> str:
    """A lesion's label on the picture and the GSPS, e.g. ``3 left ribs p=0.82`` (the region from the
    anatomy map; the probability that it is a bone lesion, where a second stage judged it)."""
    words = [str(number), site or "site unknown"]
    if probability is not None:
        words.append(f"p={probability:.2f}")
    return " ".join(words)


def bsi_summary(burden: BoneBurden) -> str:
    """E.g. ``Approx. BSI 0.24 % (planar estimate)``."""
    if burden.bsi_percent is None:
        return "Approx. BSI not available (skeletal regions not found)"
    return f"Approx. BSI {burden.bsi_percent:.2f} % (planar estimate)"


def study_summary(burden: BoneBurden) -> str:
    """One sentence for the whole study, e.g. ``3 lesions in 2 views, 750.9 mm2 in total``."""
    if burden.lesion_count == 0:
        return "No lesion detected."
    noun = "lesion" if burden.lesion_count == 1 else "lesions"
    views = len(burden.views)
    return (
        f"{burden.lesion_count} {noun} in {views} view{'s' if views > 1 else ''}, "
        f"{burden.total_area_mm2:.1f} mm2 in total (a lesion seen in both views counts in each)."
    )


def clip_words(text: str, limit: int) -> str:
    """``text`` if it fits in ``limit`` characters, else its longest prefix of whole words.

    For length-limited DICOM strings (LO: 64 characters, PS3.5 Table 6.2-1) that a person reads:
    a value is never cut in the middle of a word. Trailing separators are dropped.
    """
    if len(text) <= limit:
        return text
    cut = text[: limit + 1].rsplit(" ", 1)[0] if " " in text[: limit + 1] else text[:limit]
    return cut[:limit].rstrip(" ,;:")
