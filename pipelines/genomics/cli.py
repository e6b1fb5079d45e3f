"""``longstream genomics train|evaluate|predict``: the uniform verbs, built by ``longstream.pipelines.common``."""

from __future__ import annotations

from longstream.pipelines.common import run_pipeline_cli

from . import DOMAIN, config


def _embed_args(p) -> None:
    from .embed import add_embed_args

    add_embed_args(p)


def _variants_args(p) -> None:
    from .variants import add_variant_args

    add_variant_args(p)


def main(argv: list[str] | None = None) -> int:
    return run_pipeline_cli(
        argv,
        domain=DOMAIN,
        presets=config.PRESETS,
        train="longstream.pipelines.genomics.train:train",
        evaluate="longstream.pipelines.genomics.evaluate:evaluate",
        predict="longstream.pipelines.genomics.evaluate:predict",
        default_checkpoint="genomics/mamba-species",
        extra_verbs={"embed": (_embed_args, "longstream.pipelines.genomics.embed:embed_command"),
                     "score-variants": (_variants_args, "longstream.pipelines.genomics.variants:score_command")},
        description="Genomics: species from a DNA window, a DNA language model, and gene (CDS) segmentation "
                    "on real bacterial genomes (--model.task species|lm|cds).",
    )


if __name__ == "__main__":
    raise SystemExit(main())
