"""longstream: encoders package."""
