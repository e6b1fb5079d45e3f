"""``longstream speech ...``: the uniform verbs plus this pipeline's extra subcommands.

:data:`SUBCOMMANDS` is the table of extra verbs: ``name -> (add_arguments(parser),
handler(args) -> JSON-able)``, the handler given as ``"module:function"`` so it is imported
only when its verb runs. Long-stream recognition adds its rows here (``transcribe``, ``stream``).
"""

from __future__ import annotations

from longstream.pipelines.common import run_pipeline_cli

from . import DOMAIN, config


def _transcribe_args(p) -> None:
    from .transcribe import add_transcribe_args

    add_transcribe_args(p)


def _stream_args(p) -> None:
    from .transcribe import add_stream_args

    add_stream_args(p)


def _calibrate_args(p) -> None:
    from .ctc_train import add_calibrate_args

    add_calibrate_args(p)


SUBCOMMANDS: dict[str, tuple] = {  # long-stream CTC recognition (transcribe.py, ctc_train.py)
    "transcribe": (_transcribe_args, "longstream.pipelines.speech.transcribe:transcribe_command"),
    "stream": (_stream_args, "longstream.pipelines.speech.transcribe:stream_command"),
    "calibrate": (_calibrate_args, "longstream.pipelines.speech.ctc_train:calibrate_command"),
}


def main(argv: list[str] | None = None) -> int:
    return run_pipeline_cli(
        argv,
        domain=DOMAIN,
        presets=config.PRESETS,
        train="longstream.pipelines.speech.train:train",
        evaluate="longstream.pipelines.speech.evaluate:evaluate",
        predict="longstream.pipelines.speech.evaluate:predict",
        default_checkpoint="speech/mamba-digits",
        description="Speech: spoken-digit classification on the Free Spoken Digit Dataset (log-mel or raw "
                    "waveform into Mamba / S4D).",
        extra_verbs=SUBCOMMANDS,
    )


if __name__ == "__main__":
    raise SystemExit(main())
