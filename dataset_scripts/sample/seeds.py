"""Which scene seeds each synthetic set may draw: disjoint ranges, one per purpose.

A scene is a pure function of its seed and options (`scene.render_scene`): two sets that draw the
same seed share that scene's stuff layout (the same bands and horizon, at any size) and, at the same
size and classes, its pixels. The shipped checkpoint (`pretrained/tiny-detr-panoptic`) was pretrained
on source-domain scenes, so a set that measures fine-tuning or that users fine-tune on must never draw
a pretraining seed: the scene-seed space is split into one range per purpose, and every plan
generator asks its range for its seeds (`SeedRange.scene_seed`), which refuses to leave it.

=============  ====================================  =============================================
range          scene seeds                           drawn by
=============  ====================================  =============================================
`PRETRAINING`  [0, 10**12)                           the source domain (`source_domain_plans`,
                                                     `finetune/make_tiny_checkpoint.py`)
`TARGET`       [10**12, 2 * 10**12)                  clean synthetic sets (`synthetic_plans`): the
                                                     benches' target sets, `make_sample.py --num-images`
`SAMPLE`       [2 * 10**12, 3 * 10**12)              the bundled quirky sample (`bundled_sample_plans`)
=============  ====================================  =============================================

Within a range, set seed `s` owns the block `[start + s * stride, start + (s + 1) * stride)` and its
image `i` draws `start + s * stride + i`: the synthetic sets use stride 1_000_003, the bundled sample
1000. `PRETRAINING` starts at 0, so the shipped checkpoint's scenes (set seed 0) are the seeds it
was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

# Scene seeds per set seed of a synthetic set (`synthetic_plans`): a prime, so consecutive set seeds'
# blocks do not line up with round image counts.
SYNTHETIC_STRIDE = 1_000_003
# Scene seeds per set seed of the bundled sample (`bundled_sample_plans`: images 0-17, 500-509, 999).
SAMPLE_STRIDE = 1000
_RANGE_SIZE = 10**12


@dataclass(frozen=True)
class SeedRange:
    """A half-open range of scene seeds reserved for one purpose.

    Attributes:
        name: The purpose (in error messages).
        start: First scene seed.
        stop: One past the last scene seed.
    """

    name: str
    start: int
    stop: int

    def scene_seed(self, set_seed: int, index: int, stride: int = SYNTHETIC_STRIDE) -> int:
        """The scene seed of image `index` of the set with seed `set_seed`.

        Raises:
            ValueError: the seed would leave this range (negative or too large `set_seed`, or
                `index` outside `[0, stride)`); the message names the `--seed` / `--num-images` flags.
        """
        if not 0 <= index < stride:
            raise ValueError(f"--num-images: a {self.name} set holds at most {stride} images (image {index})")
        seed = self.start + set_seed * stride + index
        if set_seed < 0 or seed >= self.stop:
            most = (self.stop - self.start) // stride - 1
            raise ValueError(f"--seed must be in [0, {most}] for a {self.name} set, got {set_seed}")
        return seed

    def __contains__(self, seed: object) -> bool:
        return isinstance(seed, int) and self.start <= seed < self.stop


PRETRAINING = SeedRange("pretraining", 0, _RANGE_SIZE)
TARGET = SeedRange("target", _RANGE_SIZE, 2 * _RANGE_SIZE)
SAMPLE = SeedRange("sample", 2 * _RANGE_SIZE, 3 * _RANGE_SIZE)
SEED_RANGES = (PRETRAINING, TARGET, SAMPLE)
