"""longstream: memory package."""
