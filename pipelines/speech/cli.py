"""``longstream speech ...``: the uniform verbs plus this pipeline's extra subcommands.

:data:`SUBCOMMANDS` is the table of extra verbs: ``name -> (add_arguments(parser),
handler(args) -> JSON-able)``, the handler given as ``"module:function"`` so it is imported
only when its verb runs. Long-stream recognition adds its rows here (``transcribe``, ``stream``).
"""

from __future__ import annotations

from longstream.pipelines.common import run_pipeline_cli

from . import DOMAIN, config

SUBCOMMANDS: dict[str, tuple] = {
    # "transcribe": (transcribe.add_arguments, "longstream.pipelines.speech.transcribe:run"),
}


def main(argv: list[str] | None = None) -> int:
    return run_pipeline_cli(
        argv,
        domain=DOMAIN,
        presets=config.PRESETS,
        train="longstream.pipelines.speech.train:train",
        evaluate="longstream.pipelines.speech.evaluate:evaluate",
        predict="longstream.pipelines.speech.evaluate:predict",
        description="Speech: spoken-digit classification on the Free Spoken Digit Dataset (log-mel or raw "
                    "waveform into Mamba / S4D).",
        extra_verbs=SUBCOMMANDS,
    )


if __name__ == "__main__":
    raise SystemExit(main())
