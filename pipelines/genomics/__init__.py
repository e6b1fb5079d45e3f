"""Genomics pipeline (issue 13): single-nucleotide long-context models on real genomes.

Tasks (``--model.task``): ``species`` (4 bacterial species from a DNA window, held-out
strains), ``lm`` (next-nucleotide language model, bits per base at 1K-64K contexts) and
``cds`` (per-base coding-sequence segmentation of M. tuberculosis). See README.md.
"""

DOMAIN = "genomics"
