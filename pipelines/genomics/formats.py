"""Genome file formats, one import for the pipeline: FASTA, GenBank, BED, VCF and the score writers.

Readers are well-kept libraries, wrapped so that every problem a user can cause is one
:class:`~longstream.pipelines.common.UserError` naming the file (and the line where it applies):

- **FASTA** (``.fa``, ``.fasta``, ``.fna``, optionally gzip / bgzip compressed): parsed by
  Biopython (``SimpleFastaParser``) or indexed by pyfaidx. :class:`FastaFile` gives random
  access: uncompressed and **bgzip** files are indexed by pyfaidx (``.fai`` beside the file,
  or under ``<cache>/fai/`` when that folder is read-only) and read piece by piece; a
  **plain gzip** file cannot be seeked, so it is decompressed once and held in memory
  (about 1 byte per base: a 5 Mbp bacterial genome costs 5 MB). A file whose lines have
  uneven widths (legal FASTA that pyfaidx cannot index) is read into memory too.
  Record names are the first word of the header line (as samtools and pyfaidx do).
- **Bases**: upper and lower case ``A C G T N``, ``U`` and the IUPAC codes ``R Y K M S W B D
  H V``. Lower case marks soft-masked repeats: readers keep the case
  (:func:`read_fasta` / :meth:`FastaFile.fetch` return the text as written) and the tokenizer
  (:mod:`longstream.encoders.dna`) gives it the upper-case id; ``N`` is an unknown base.
  Any other character (``-``, ``*``, digits, tabs) is an error naming its line.
- **GenBank**: Biopython; :func:`read_genbank` returns the sequence and the CDS features as
  0-based half-open :class:`Feature` s with strand ``+1`` / ``-1``. An annotation-only file
  (empty ``ORIGIN``, like the shipped NC_000962.3.gb) takes its sequence from the FASTA beside it.
- **BED**: a strict small reader (:func:`read_bed`): 0-based half-open, ``track`` /
  ``browser`` / ``#`` header lines skipped, every malformed line an error with its number.
- **VCF**: cyvcf2, each line checked first; REF checked against the FASTA; scores written to
  a copy of the VCF (INFO ``LS_SCORE`` / ``LS_SKIP``) or a TSV, atomically (:mod:`.vcf`).

The code lives in :mod:`.fasta`, :mod:`.annotations` and :mod:`.vcf`; this module re-exports it.

Errors raised here: not FASTA / GenBank / BED / VCF, binary file, empty file, bad character,
truncated or corrupt gzip, duplicate record name, a record without sequence, unknown record
name, an interval outside its record; for VCF also a REF that disagrees with the FASTA and an
unknown contig (see :mod:`.vcf`).
"""

from .annotations import Feature, GenBankRecord, Interval, read_bed, read_genbank
from .fasta import BASES, FastaFile, compression, iter_lines, read_fasta, read_text, valid_bases
from .vcf import (
    KIND_REASONS,
    VARIANT_TSV_COLUMNS,
    Variant,
    count_records,
    read_vcf,
    write_scored_vcf,
    write_tsv,
)

__all__ = [
    "BASES",
    "FastaFile",
    "read_fasta",
    "read_text",
    "iter_lines",
    "compression",
    "valid_bases",
    "Feature",
    "GenBankRecord",
    "read_genbank",
    "Interval",
    "read_bed",
    "Variant",
    "KIND_REASONS",
    "VARIANT_TSV_COLUMNS",
    "read_vcf",
    "count_records",
    "write_scored_vcf",
    "write_tsv",
]
