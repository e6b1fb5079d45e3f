"""longstream: long-sequence models (Mamba, Mamba-2, S4D, Hyena, attention, hybrids) with streaming memory.

The short Python API::

    import longstream

    model = longstream.load("timeseries/etth1-ensemble-h96")   # any shipped or cached model, one line
    backbone = longstream.create_backbone("mamba", d_model=64, n_layers=2)
    longstream.list_models()                                   # the names `load` accepts
    longstream.__version__

This file is the ``longstream`` package itself: setup.py maps ``apps/api/`` to ``longstream``
(the repository's top-level layout is fixed, so the package's ``__init__`` lives here) and
leaves it out of ``longstream.apps``. It stays cheap to import, because every
``import longstream.<anything>`` runs it first: nothing heavy is imported at module level;
``create_backbone`` and ``__version__`` are resolved on first use and ``load`` imports the pipelines inside.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # never runs: the names below are resolved lazily by __getattr__
    import torch

    from longstream.backbones.stack import create_backbone
    from longstream.pipelines.hub import HubEntry

    __version__: str

if __name__ != "longstream":  # the repository's apps/api/ seen as longstream.apps.api: a second copy
    raise ImportError(f"{__name__} is the `longstream` package itself; use `import longstream`")

__all__ = ["__version__", "load", "list_models", "create_backbone"]


def _huge_page_allocations() -> None:
    """Ask PyTorch's CPU allocator for transparent huge pages (``THP_MEM_ALLOC_ENABLE=1``: blocks of
    2 MB and more are ``madvise(MADV_HUGEPAGE)``-ed), unless the user set that
    variable or ``LONGSTREAM_THP=0``. Long sequences allocate fresh tensors of tens of MB in every
    training step; glibc maps each one anew and the first touch of every 4 KB page faults, which
    here cost more than the arithmetic (a 64 MB elementwise op: 31 ms on fresh 4 KB pages, 10 ms
    on huge pages, 5 ms into a reused buffer). PyTorch reads the variable once, at its first large
    allocation, so this only takes effect when ``longstream`` is imported before such an allocation.
    Linux only; the kernel honours it when ``/sys/kernel/mm/transparent_hugepage/enabled`` is
    ``always`` or ``madvise``."""
    if sys.platform.startswith("linux") and os.environ.get("LONGSTREAM_THP", "1").lower() not in ("0", "false", "no"):
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


_huge_page_allocations()


def _version() -> str:
    """The installed distribution's version (``pyproject.toml``), ``0+unknown`` for a never-installed tree."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("longstream")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "0+unknown"


def load(name_or_dir: str | Path, *, map_location: str = "cpu") -> torch.nn.Module:
    """Load any checkpoint in one line, in eval mode (weights' sha256 verified).

    ``name_or_dir`` is a hub name (``timeseries/etth1-ensemble-h96``, ``template/sine-attn``;
    see :func:`list_models` or ``longstream hub list``), an imported Hugging Face model
    (``hf:<repo_id>``) or a checkpoint directory. The kind is read from its ``config.json``:
    a pipeline checkpoint is built by that pipeline's ``model.from_pretrained`` (found through
    the registry), a language model by ``LanguageModel.from_pretrained``, a bare backbone by
    ``SequenceBackbone.from_pretrained``. A bad name or a corrupt checkpoint raises
    :class:`longstream.pipelines.common.UserError` naming it.
    """
    from longstream.backbones.io import CheckpointError, read_config
    from longstream.pipelines.common import UserError
    from longstream.pipelines.hub import checkpoint_kind, default_hub

    name = str(name_or_dir)
    d = Path(default_hub().resolve(name))
    try:
        if name.strip().startswith("hf:"):
            from longstream.pipelines.hf_import import load_imported

            return load_imported(d, map_location=map_location).eval()
        meta = read_config(d)
        kind = checkpoint_kind(meta)
        if kind == "pipeline":
            from longstream.pipelines.registry import PIPELINES, get_pipeline

            domain = str(meta["pipeline"])
            if domain not in PIPELINES:
                raise UserError(f"checkpoint {name} belongs to pipeline {domain!r}, which this installation does "
                                f"not have (known: {', '.join(sorted(PIPELINES))}); upgrade longstream")
            return get_pipeline(domain, "model").from_pretrained(str(d))
        if kind == "lm":
            from longstream.backbones.lm import LanguageModel

            return LanguageModel.from_pretrained(d, map_location=map_location).eval()
        if kind == "backbone":
            from longstream.backbones.stack import SequenceBackbone

            return SequenceBackbone.from_pretrained(d, map_location=map_location).eval()
        if meta.get("model_type") == "hyenadna":  # an imported HyenaDNA checkpoint copied elsewhere
            from longstream.pipelines.hf_import import load_imported

            return load_imported(d, map_location=map_location).eval()
        raise UserError(f"{d / 'config.json'} is not a checkpoint longstream can load (no 'pipeline' key and "
                        f"model_type {meta.get('model_type')!r}); see `longstream hub list`")
    except CheckpointError as e:
        raise UserError(f"{e} (`longstream hub download NAME --force` re-fetches a named model)") from e


def list_models(domain: str | None = None) -> list[HubEntry]:
    """Every model :func:`load` accepts by name (shipped, registered, cached, imported), or one domain's."""
    from longstream.pipelines.hub import list_models as _list

    return _list(domain)


def __getattr__(name: str) -> Any:
    """Lazy re-exports (PEP 562): ``longstream.create_backbone`` imports the backbones on first use."""
    if name == "create_backbone":
        from longstream.backbones.stack import create_backbone

        return create_backbone
    if name == "__version__":  # importlib.metadata costs ~50 ms: read only when asked
        globals()["__version__"] = v = _version()
        return v
    raise AttributeError(f"module 'longstream' has no attribute {name!r}")
