"""longstream: apps package."""
