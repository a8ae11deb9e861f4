"""Procedural CVAT sample data: construction-scene photos with CVAT annotations.

One idea per module, in data-flow order:

* `rle`: run-length encoders (COCO uncompressed RLE, CVAT's brush-mask RLE);
* `geometry`: COCO polygons, their pycocotools rasterisation and the thing outlines;
* `textures`: the stuff and thing textures;
* `scene`: `render_scene` (seed + options -> image + shapes), pure;
* `jpeg`: image bytes (grayscale, EXIF-rotated storage);
* `task`: one annotation task in memory (images, shapes, encodings, z-order), format-free;
* `coco_writer` / `xml_writer`: one task as CVAT COCO 1.0 JSON / "CVAT for images 1.1" XML;
* `export`: image plans, one export folder, a whole dataset (atomic);
* `plans`: the bundled quirky sample and clean synthetic sets;
* `source_domain`: the source set of the tiny pretrained checkpoint (other class names);
* `readme`: the generated sample's ``README.md``.

The command line is `dataset_scripts.make_sample`.
"""
