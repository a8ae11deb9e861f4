"""ONNX export of a panoptic DETR checkpoint, and its ONNX Runtime backend (docs/deploying.md).

* `finetune.export.graphs`: the two graphs (body; mask head on selected queries) and the folder's file names;
* `finetune.export.exporter`: `export_model` (export, validate against PyTorch, optional int8, write atomically);
* `finetune.export.runtime`: `OnnxPanopticModel`, the export as a backend of the inference core;
* `finetune.export.compare`: agreement of two sets of predictions (segments, pixels, scores, PQ);
* `finetune.export.cli`: ``detr-panoptic-export`` / ``python -m finetune.export``.

Importing this package imports nothing heavy; onnx and onnxruntime (the ``export`` extra) are imported where
used, with a one-line message when missing.
"""
