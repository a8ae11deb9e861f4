"""The files and graph interfaces of an export folder (no heavy imports: ``--help`` and the runtime read it)."""

BODY_FILE = "body.onnx"
MASK_HEAD_FILE = "mask_head.onnx"
MANIFEST_FILE = "export.json"
EXPORT_FORMAT = "detr-panoptic-onnx"
BODY_INPUTS = ("pixel_values", "pixel_mask")
FEATURE_OUTPUTS = ("attention_maps", "projected", "res4", "res3", "res2")
BODY_OUTPUTS = ("logits", "pred_boxes", *FEATURE_OUTPUTS)
MASK_HEAD_INPUTS = (*FEATURE_OUTPUTS, "image_index", "query_index")
MASK_HEAD_OUTPUTS = ("masks",)
DEFAULT_OPSET = 17
# torch's TorchScript exporter writes opsets 14-20 for this model (GroupNorm, Resize with a dynamic size,
# GatherND need 14+); ONNX Runtime's CPU kernels cover all of them.
SUPPORTED_OPSETS = range(14, 21)
