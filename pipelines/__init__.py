"""longstream: pipelines package."""
