"""The view flags every subcommand shares: how the 2n augmented views are drawn from the images."""

from __future__ import annotations

import dataclasses

from stepwise_ntk.data import AugmentSettings

__all__ = ["ViewSettings"]


@dataclasses.dataclass(frozen=True)
class ViewSettings:
    """Downsampling and the augmentation of the views (each is a flag: ``--crop-padding 4``).

    A subcommand's settings class derives from this one; it may give ``downsample`` another
    default (the network experiments use smaller images).
    """

    downsample: int = dataclasses.field(default=1, metadata={"help": "average-pool images by this factor", "min": 1})
    crop_padding: int = dataclasses.field(
        default=4, metadata={"help": "random crop with this padding (0: off)", "min": 0}
    )
    flip_prob: float = dataclasses.field(
        default=0.5, metadata={"help": "horizontal flip probability", "min": 0, "max": 1}
    )
    brightness: float = dataclasses.field(
        default=0.4, metadata={"help": "brightness jitter strength (0: off)", "min": 0}
    )
    jitter_prob: float = dataclasses.field(
        default=0.8, metadata={"help": "probability of applying the jitter", "min": 0, "max": 1}
    )

    def augment(self) -> AugmentSettings:
        """The :class:`~stepwise_ntk.data.AugmentSettings` these flags describe."""
        return AugmentSettings(
            crop="pad" if self.crop_padding > 0 else None,
            crop_padding=max(self.crop_padding, 1),
            flip_prob=self.flip_prob or None,
            jitter_prob=self.jitter_prob if self.brightness > 0 else None,
            brightness=self.brightness or None,
            contrast=None,
            saturation=None,
            gray_prob=None,
        )
