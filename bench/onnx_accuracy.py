"""Accuracy of an ONNX export: PyTorch vs the fp32 export (parity), fp32 vs int8 (the quantization's cost).

The same photos, the same checkpoint settings (thresholds, stuff fusion), each model through
`PanopticPredictor` (so the same preprocessing and post-processing). For each pair: images with the same
segments (count and labels), the lowest per-image fraction of equal id-map pixels, the largest score
difference, and the PQ of the second set scored against the first (`finetune.export.compare`). Optionally
(``--gt-json``) the PQ of each side against the ground truth.

    python bench/onnx_accuracy.py --model outputs/quickstart/final --fp32 outputs/quickstart/onnx-none \
        --int8 outputs/quickstart/onnx-int8 --images outputs/sample_panoptic/val [--threads 2]

Goals (issue 21): fp32 vs PyTorch: same segments on every image, >= 99.9 % equal pixels, scores within 1e-4;
int8 vs fp32: PQ >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="PyTorch checkpoint folder")
    parser.add_argument("--fp32", required=True, help="its fp32 export (detr-panoptic-export)")
    parser.add_argument("--int8", default=None, help="its int8 export (--quantize int8)")
    parser.add_argument("--images", required=True, help="folder of photos")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args(argv)

    import torch
    from PIL import Image

    from finetune.export.compare import compare_predictions
    from finetune.inference import PanopticPredictor

    torch.set_num_threads(args.threads)
    paths = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    images = [Image.open(p).convert("RGB") for p in paths]
    sides = {"pytorch": args.model, "fp32": args.fp32}
    if args.int8:
        sides["int8"] = args.int8
    predictions = {}
    for name, folder in sides.items():
        predictor = PanopticPredictor.from_pretrained(folder, device="cpu", batch_size=args.batch_size)
        predictions[name] = predictor.predict(images)
    labels, stuff = len(predictor.id2label), predictor.stuff_label_ids
    report = {
        "images": len(images),
        "threshold": predictor.threshold,
        "fp32_vs_pytorch": compare_predictions(predictions["pytorch"], predictions["fp32"], labels, stuff),
    }
    if args.int8:
        report["int8_vs_fp32"] = compare_predictions(predictions["fp32"], predictions["int8"], labels, stuff)
    print(json.dumps(report, indent=2))
    parity = report["fp32_vs_pytorch"]
    ok = (
        parity["same_segments"] == len(images)
        and parity["pixel_agreement"] >= 0.999
        and (parity["max_score_diff"] or 0.0) <= 1e-4
    )
    print(f"fp32 parity goal {'met' if ok else 'MISSED'}", file=sys.stderr)
    if args.int8:
        pq = report["int8_vs_fp32"]["pq"]
        print(f"int8 PQ vs fp32 {pq:.4f}: goal >= 0.95 {'met' if pq >= 0.95 else 'MISSED'}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
