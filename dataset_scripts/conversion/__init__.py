"""CVAT records -> COCO-panoptic folder: the pure per-image step (`image`, `rasterize`, `polygon_clip`),
the orchestrator (`orchestrator`: options, output folder, workers, report) and what it plans (`plan`,
`splits`), its report (`report`), and its process handling (`workers`, `interrupts`)."""
