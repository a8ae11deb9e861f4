"""A small web demo: upload a photo, pick a threshold, see the panoptic overlay and the segment list.

    pip install -e ".[demo]"                 # the project with gradio
    python demo.py --model outputs/quickstart/final [--port 7860] [--host 127.0.0.1]

Works with any checkpoint folder written by `finetune/train.py` or a Hub model id. Runs locally only:
Gradio analytics are switched off and no public share link is ever created.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Before gradio is imported: no analytics / version-check calls to the network.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import argparse
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

try:  # the project and its dependencies must be installed: one line says so, not a traceback
    from PIL import Image

    from dataset_scripts.cli_options import make_parser
    from finetune.predictor_options import add_predictor_arguments, predictor_from_args
except ModuleNotFoundError as missing:
    print(f"{sys.argv[0]}: {missing}: install detr-panoptic with `pip install -e '.[demo]'` from the repository root", file=sys.stderr)
    raise SystemExit(2) from None

if TYPE_CHECKING:  # torch-backed: imported where used, so that `--help` stays fast
    from finetune.inference import PanopticPredictor

logger = logging.getLogger("demo")

SEGMENT_COLUMNS = ["id", "class", "type", "score", "area (px)", "box [x, y, w, h]"]


def segment_rows(segments: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """One table row per segment, highest score first."""
    rows = []
    for seg in sorted(segments, key=lambda s: -s["score"]):
        rows.append(
            [
                seg["id"],
                seg["name"],
                "thing" if seg["isthing"] else "stuff",
                round(seg["score"], 3),
                seg["area"],
                str(seg["bbox"]),
            ]
        )
    return rows


def segment_image(
    predictor: PanopticPredictor, image: Image.Image | None, threshold: float
) -> tuple[Image.Image | None, list[list[Any]]]:
    """The overlay and the segment table of one uploaded image (nothing uploaded: nothing shown)."""
    from finetune.inference import render_overlay

    if image is None:
        return None, []
    [prediction] = predictor.predict([image.convert("RGB")], threshold=float(threshold))
    return render_overlay(image.convert("RGB"), prediction), segment_rows(prediction.segments)


def build_demo(predictor: PanopticPredictor, title: str = "detr-panoptic demo"):
    """The Gradio Blocks app over a loaded predictor."""
    import gradio as gr

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(
            f"# {title}\nUpload a photo, choose the score threshold, and press **Segment**. "
            "Things are outlined and named; stuff classes appear in the legend."
        )
        with gr.Row():
            with gr.Column():
                image_in = gr.Image(type="pil", label="Photo", elem_id="input-image")
                threshold = gr.Slider(0.0, 1.0, value=predictor.threshold, step=0.05, label="Score threshold")
                button = gr.Button("Segment", variant="primary", elem_id="segment-button")
            with gr.Column():
                overlay = gr.Image(type="pil", label="Panoptic overlay", elem_id="overlay", interactive=False)
        table = gr.Dataframe(headers=SEGMENT_COLUMNS, label="Segments", elem_id="segments", interactive=False)

        def run(image: Image.Image | None, value: float):
            return segment_image(predictor, image, value)

        button.click(run, inputs=[image_in, threshold], outputs=[overlay, table])
        image_in.upload(run, inputs=[image_in, threshold], outputs=[overlay, table])
    return demo


def build_parser() -> argparse.ArgumentParser:
    """The command line of the demo."""
    parser = make_parser("Gradio demo of a detr-panoptic checkpoint.")
    add_predictor_arguments(parser, batch_size=None)
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (default: 7860)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1; 0.0.0.0 for your LAN)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Start the demo server; returns the exit status (2 when gradio or the checkpoint is missing)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        import gradio  # noqa: F401
    except ImportError:
        logger.error('gradio is not installed: pip install -e ".[demo]" from the repository root')
        return 2
    from finetune.inference import ModelLoadError

    try:
        predictor = predictor_from_args(args)
    except (ModelLoadError, ValueError) as err:
        logger.error("%s", err)
        return 2
    demo = build_demo(predictor, title=f"detr-panoptic: {Path(str(args.model)).name}")
    demo.queue().launch(server_name=args.host, server_port=args.port, share=False, show_error=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
