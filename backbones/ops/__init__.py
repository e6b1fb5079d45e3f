"""longstream: backbones/ops package."""
