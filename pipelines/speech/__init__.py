"""Speech pipeline: spoken-digit classification on the Free Spoken Digit Dataset (issue 14).

Audio front ends live in :mod:`longstream.encoders.audio` (file loading, log-mel, SpecAugment,
raw-waveform stem); this package holds the FSDD data and splits, the classifier, training,
evaluation, the CLI and the Gradio tab. Long-stream CTC recognition (``transcribe`` /
``stream``) builds on the same front end and CLI table (``cli.SUBCOMMANDS``).
"""

DOMAIN = "speech"
