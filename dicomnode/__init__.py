"""dicomnode: a DICOM-native AI node for whole-body bone scintigraphy (see DESIGN.md)."""

__version__ = "0.1.0"
