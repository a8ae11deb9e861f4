"""Readers of CVAT exports (COCO 1.0, one folder per class, CVAT XML 1.1) into one `Export` record type."""
