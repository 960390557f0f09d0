"""Grayscale Softcopy Presentation State (PS3.3 A.33.1): lesion contours on the source frames.

One GSPS for the study references every view's source frame. Per view, a Graphic Annotation
(PS3.3 C.10.5) names the image and frame and holds one closed POLYLINE per lesion on the graphic
layer ``LESIONS`` (tracking id and UID shared with the SR's planar ROI of the same lesion), and a
short text summary on the layer ``SUMMARY``.

highdicom reads the modality and VOI LUTs of an NM source from functional groups it does not
have (docs/dicom.md, "Result objects"), so both are passed explicitly: the source's Rescale
Slope / Intercept (identity when absent, PS3.3 C.11.1), and the bone window of
:func:`~dicomnode.pipeline.results.common.bone_window` (derived from the bone reference level, so
that the skeleton is visible and the bladder saturates).

Each graphic layer carries a Recommended Display Grayscale Value beside its CIELab colour (PS3.3
C.10.7.1.1), for grayscale-only displays: both layers white, which stands out on the dark
background and on normal bone (about 40 % of the window).
"""

from __future__ import annotations

import logging

import highdicom as hd
from pydicom.dataset import Dataset

from dicomnode.pipeline.results.planar.burden import BoneBurden
from dicomnode.pipeline.results.common import (
    NOT_FOR_DIAGNOSTIC_USE,
    Provenance,
    ResultKind,
    SourceFrame,
    bone_window,
    check_writable,
    source_datasets,
)
from dicomnode.pipeline.results.planar.contours import LESION_CIELAB, lesion_outlines
from dicomnode.pipeline.results.text import bsi_summary, lesion_caption, view_summary
from dicomnode.segmentation.scan import View

logger = logging.getLogger(__name__)

LESION_LAYER = hd.pr.GraphicLayer(
    layer_name="LESIONS", order=1, description="AI bone metastasis contours",
    display_color=LESION_CIELAB,  # red, as in the SEG and the SC
)
SUMMARY_LAYER = hd.pr.GraphicLayer(
    layer_name="SUMMARY", order=2, description="AI result summary",
    display_color=hd.color.CIELabColor(97.1, -21.6, 94.5),  # yellow
)
#: Recommended Display Grayscale Value (0070,0066) of each layer (module docstring).
LAYER_GRAYSCALE = {"LESIONS": 0xFFFF, "SUMMARY": 0xFFFF}


def build_presentation_state(
    frames: dict[View, SourceFrame], provenance: Provenance, burden: BoneBurden
) -> list[Dataset]:
    """The study's GSPS (one instance)."""
    series = provenance.series(ResultKind.GSPS)
    first = next(iter(frames.values()))
    references = source_datasets(frames)
    annotations = [
        annotation for frame in frames.values() for annotation in _annotations(frame, provenance, burden)
    ]
    slope, intercept = _rescale(first.dataset)
    center, width, explanation = bone_window(frames)
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=references,
        series_instance_uid=series.uid,
        series_number=series.number,
        sop_instance_uid=provenance.uid(ResultKind.GSPS.value),
        instance_number=1,
        **provenance.equipment,
        content_label="BONE_METS",
        content_description=f"AI bone metastasis contours; {NOT_FOR_DIAGNOSTIC_USE}",
        graphic_layers=[LESION_LAYER, SUMMARY_LAYER],
        graphic_annotations=annotations,
        institution_name=provenance.options.institution_name,
        modality_lut_transformation=hd.ModalityLUTTransformation(
            rescale_intercept=intercept, rescale_slope=slope, rescale_type="US"
        ),
        voi_lut_transformations=[
            hd.pr.SoftcopyVOILUTTransformation(
                window_center=[center], window_width=[width], window_explanation=[explanation]
            )
        ],
        series_description=series.description,
    )
    for layer in gsps.GraphicLayerSequence:
        layer.GraphicLayerRecommendedDisplayGrayscaleValue = LAYER_GRAYSCALE[layer.GraphicLayer]
    provenance.finish(gsps, first.dataset, series)
    logger.info("GSPS: %d contour(s) on %d view(s)", burden.lesion_count, len(frames))
    return [check_writable(gsps)]


def _annotations(
    frame: SourceFrame, provenance: Provenance, burden: BoneBurden
) -> list[hd.pr.GraphicAnnotation]:
    """Contours (if any lesion) and the summary text of one view, on its source frame."""
    objects = []
    for lesion, outline in zip(frame.result.lesions, lesion_outlines(frame.result), strict=True):
        identifier, uid = provenance.lesion_tracking(lesion)
        objects.append(hd.pr.GraphicObject(
            graphic_type=hd.pr.GraphicTypeValues.POLYLINE, graphic_data=outline,
            units=hd.pr.AnnotationUnitsValues.PIXEL, tracking_id=identifier, tracking_uid=uid,
        ))
    rows, columns = frame.source.rows, frame.source.columns
    line_height = max(8.0, rows / 40)
    lines = [view_summary(burden.views[frame.view]), bsi_summary(burden), NOT_FOR_DIAGNOSTIC_USE]
    captions = [  # each lesion's number and region beside its contour
        hd.pr.TextObject(
            text_value=lesion_caption(item.lesion.label, item.site, item.lesion.probability)[:64],
            units=hd.pr.AnnotationUnitsValues.PIXEL,
            anchor_point=(float(item.lesion.bbox[3]), float(item.lesion.bbox[0])),
            anchor_point_visible=False,
        )
        for item in burden.views[frame.view].lesions
    ]
    texts = [
        hd.pr.TextObject(
            text_value=line, units=hd.pr.AnnotationUnitsValues.PIXEL,
            bounding_box=(1.0, 1.0 + i * line_height, columns - 1.0, (i + 1) * line_height),
            text_justification=hd.pr.TextJustificationValues.LEFT,
        )
        for i, line in enumerate(lines)
    ]
    numbers = frame.referenced_frame_numbers
    frame_number = numbers[0] if numbers else None
    contours = (
        [hd.pr.GraphicAnnotation(
            referenced_images=[frame.dataset], graphic_layer=LESION_LAYER,
            referenced_frame_number=frame_number, graphic_objects=objects, text_objects=captions,
        )]
        if objects else []
    )
    summary = hd.pr.GraphicAnnotation(
        referenced_images=[frame.dataset], graphic_layer=SUMMARY_LAYER,
        referenced_frame_number=frame_number, text_objects=texts,
    )
    return [*contours, summary]


def _rescale(dataset: Dataset) -> tuple[float, float]:
    """(Rescale Slope, Rescale Intercept) of the source; identity where absent (PS3.3 C.11.1)."""
    slope = float(dataset.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(dataset.get("RescaleIntercept", 0.0) or 0.0)
    return slope, intercept

