"""``longstream genomics train|evaluate|predict``: the uniform verbs, built by ``longstream.pipelines.common``."""

from __future__ import annotations

from longstream.pipelines.common import run_pipeline_cli

from . import DOMAIN, config


def main(argv: list[str] | None = None) -> int:
    return run_pipeline_cli(
        argv,
        domain=DOMAIN,
        presets=config.PRESETS,
        train="longstream.pipelines.genomics.train:train",
        evaluate="longstream.pipelines.genomics.evaluate:evaluate",
        predict="longstream.pipelines.genomics.evaluate:predict",
        description="Genomics: species from a DNA window, a DNA language model, and gene (CDS) segmentation "
                    "on real bacterial genomes (--model.task species|lm|cds).",
    )


if __name__ == "__main__":
    raise SystemExit(main())
