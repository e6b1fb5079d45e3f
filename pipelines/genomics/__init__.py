"""Genomics pipeline (placeholder written by gen-io; gen-pipe's version replaces it)."""
