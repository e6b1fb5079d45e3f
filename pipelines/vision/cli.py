"""``longstream vision ...``: the uniform verbs, built by ``longstream.pipelines.common``."""

from __future__ import annotations

from longstream.pipelines.common import run_pipeline_cli

from . import DOMAIN, config


def main(argv: list[str] | None = None) -> int:
    return run_pipeline_cli(
        argv,
        domain=DOMAIN,
        presets=config.PRESETS,
        train="longstream.pipelines.vision.train:train",
        evaluate="longstream.pipelines.vision.evaluate:evaluate",
        predict="longstream.pipelines.vision.evaluate:predict",
        default_checkpoint="vision/vim-fmnist",
        description="Vision: Fashion-MNIST / ImageFolder classification with Vision Mamba, a timm ViT baseline "
                    "and sequential-pixel Mamba / S4D models; predict prints the top-k labels of image files.",
    )


if __name__ == "__main__":
    raise SystemExit(main())
