"""Public pretrained weights from the Hugging Face Hub: ``hf:<repo_id>[@revision]`` names.

``longstream hub import hf:state-spaces/mamba-130m`` (or :func:`import_hf`) lists the repo
with ``huggingface_hub`` (an optional dependency: ``pip install 'longstream[hub]'``),
downloads only the files the detected layout needs (``hf_hub_download`` resumes a cut
connection with an HTTP ``Range`` request), verifies every file against the checksum the
Hub publishes for it (LFS ``sha256``, else the git blob id), converts it with the
existing converters and writes a longstream checkpoint (``model.safetensors`` +
``config.json`` with its sha256 + ``README.md``) atomically to
``$LONGSTREAM_HOME/checkpoints/hf/<owner>--<name>[@<revision>]``. From then on the same
name resolves everywhere a checkpoint name does (:meth:`Hub.resolve`, ``hub info``,
``hub list``), offline too.

Known layouts (:data:`LAYOUTS`):

- ``mamba_ssm``: state-spaces/mamba-* and mamba2-* (``config.json`` with ``d_model``,
  ``n_layer``, ``ssm_cfg`` + ``pytorch_model.bin`` or ``model.safetensors``) ->
  :func:`longstream.backbones.convert.load_mamba_ssm`;
- ``transformers``: ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` (``model_type`` mamba /
  mamba2 + ``model.safetensors``, possibly sharded) -> :func:`~longstream.backbones.convert.load_hf`;
- ``hyenadna``: LongSafari/hyenadna-* (Lightning ``weights.ckpt`` + ``config.json``) and the
  ``-hf`` repos (``model_type`` hyenadna + ``model.safetensors``) ->
  :func:`longstream.backbones.hyenadna.load_hyenadna`; every published size is listed in
  :data:`HYENADNA_SIZES`.
- ``caduceus``: kuleshov-group/caduceus-{ph,ps}_* (``model_type`` caduceus +
  ``model.safetensors``) -> :func:`longstream.backbones.caduceus.convert_caduceus_state_dict`:
  Ph becomes a ``LanguageModel`` over the ``"BM"`` stack, PS an RC-equivariant
  :class:`~longstream.encoders.dna_rc.RCLanguageModel` (``model_type`` ``longstream_rc_lm``).
- ``vim``: hustvl/Vim-{tiny,small,base}-midclstok (a ``.pth`` training checkpoint, no
  ``config.json``) -> :func:`longstream.pipelines.vision.vim_convert.convert_vim_state_dict`, a
  :class:`~longstream.pipelines.vision.vim.VisionMamba` (``model_type`` ``longstream_vim``); the
  stride-16 release of each repo (:data:`~longstream.pipelines.vision.vim_convert.VIM_REPOS`).

:func:`load_imported_backbone` returns what a fine-tuning pipeline needs from any imported
checkpoint: the backbone config, the backbone and embedding weights (see :class:`ImportedBackbone`).

Offline (``LONGSTREAM_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``): an imported name resolves from
the cache; anything else is a :class:`UserError` raised before ``huggingface_hub`` is even
imported, so no connection is ever opened.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longstream.backbones.lm import load_checkpoint, save_checkpoint, sha256_file

from .common.errors import UserError
from .vision.vim_convert import VIM_REPOS, vim_weight_file

__all__ = [
    "HF_PREFIX",
    "LAYOUTS",
    "HFName",
    "parse_hf_name",
    "is_hf_name",
    "hf_offline",
    "import_dir",
    "import_hf",
    "resolve_hf",
    "imported",
    "load_imported",
    "detect_hf_layout",
    "HYENADNA_SIZES",
    "CADUCEUS_REPOS",
    "ImportedBackbone",
    "caduceus_from_upstream",
    "load_imported_backbone",
]

HF_PREFIX = "hf:"
LAYOUTS: dict[str, str] = {
    "mamba_ssm": "state-spaces/mamba-*, mamba2-*: config.json (d_model, n_layer, ssm_cfg) + pytorch_model.bin "
                 "or model.safetensors",
    "transformers": "transformers Mamba / Mamba-2: config.json (model_type mamba|mamba2) + model.safetensors",
    "hyenadna": "HyenaDNA (LongSafari/hyenadna-*): weights.ckpt (+ config.json), or the -hf repos' "
                "config.json (model_type hyenadna) + model.safetensors / pytorch_model.bin",
    "caduceus": "Caduceus (kuleshov-group/caduceus-ph_*, caduceus-ps_*): config.json (model_type caduceus) + "
                "model.safetensors",
    "vim": "Vision Mamba (hustvl/Vim-tiny-midclstok, -small-, -base-): a vim_*.pth training checkpoint "
           "({'model': state_dict, 'args': ...}), no config.json",
}  # fmt: skip

#: Every published HyenaDNA size: repo -> (d_model, n_layer, longest input in bases). Each also exists
#: as ``<repo>-hf``. Configs pinned in tests/fixtures/upstream_keys/hyenadna_sizes.json.
HYENADNA_SIZES: dict[str, tuple[int, int, int]] = {
    "LongSafari/hyenadna-tiny-1k-seqlen": (128, 2, 1024),
    "LongSafari/hyenadna-tiny-1k-seqlen-d256": (256, 2, 1024),
    "LongSafari/hyenadna-tiny-16k-seqlen-d128": (128, 2, 16384),
    "LongSafari/hyenadna-small-32k-seqlen": (256, 4, 32768),
    "LongSafari/hyenadna-medium-160k-seqlen": (256, 8, 160000),
    "LongSafari/hyenadna-medium-450k-seqlen": (256, 8, 450000),
    "LongSafari/hyenadna-large-1m-seqlen": (256, 8, 1000000),
}
#: The public Caduceus checkpoints: repo -> (variant, d_model, n_layer, training length).
CADUCEUS_REPOS: dict[str, tuple[str, int, int, int]] = {
    "kuleshov-group/caduceus-ph_seqlen-131k_d_model-256_n_layer-16": ("ph", 256, 16, 131072),
    "kuleshov-group/caduceus-ps_seqlen-131k_d_model-256_n_layer-16": ("ps", 256, 16, 131072),
}
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_REV = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HF_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class HFName:
    """A parsed ``hf:<owner>/<name>[@<revision>]``."""

    repo_id: str
    revision: str | None = None

    @property
    def name(self) -> str:
        """The canonical ``hf:`` name."""
        return f"{HF_PREFIX}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")

    @property
    def slug(self) -> str:
        """The cache directory name: ``<owner>--<name>[@<revision>]``."""
        return self.repo_id.replace("/", "--") + (f"@{self.revision}" if self.revision else "")


def is_hf_name(name: object) -> bool:
    """Whether ``name`` is an ``hf:`` checkpoint name."""
    return isinstance(name, str) and name.strip().startswith(HF_PREFIX)


def parse_hf_name(name: str) -> HFName:
    """Split and validate ``hf:<owner>/<name>[@<revision>]`` (a branch, tag or commit)."""
    s = name.strip()
    body = s[len(HF_PREFIX):] if s.startswith(HF_PREFIX) else s
    repo, _, rev = body.partition("@")
    parts = repo.split("/")
    if len(parts) != 2 or not all(_REPO_PART.match(p) and ".." not in p for p in parts) or (
        rev and (not _REV.match(rev) or ".." in rev)
    ) or (not rev and "@" in body):
        raise UserError(
            f"bad Hugging Face name {name!r}: use hf:<owner>/<repo>[@<revision>], e.g. hf:state-spaces/mamba-130m "
            "or hf:state-spaces/mamba-130m@main (revision: a branch, tag or commit; letters, digits, '.', '_', '-')"
        )
    return HFName(repo, rev or None)


def hf_offline() -> bool:
    """``LONGSTREAM_OFFLINE`` or ``HF_HUB_OFFLINE`` is set (read now, not at import time)."""
    return any(os.environ.get(v, "").strip().lower() in _HF_TRUE for v in ("LONGSTREAM_OFFLINE", "HF_HUB_OFFLINE"))


def import_dir(cache: str | os.PathLike, name: str | HFName) -> Path:
    """Where the converted checkpoint of ``name`` lives under the hub cache ``cache``."""
    n = name if isinstance(name, HFName) else parse_hf_name(name)
    return Path(cache) / "checkpoints" / "hf" / n.slug


def _is_complete(d: Path) -> bool:
    return (d / "config.json").is_file() and (d / "model.safetensors").is_file()


# ----------------------------------------------------------------------------- layouts
def detect_hf_layout(files: list[str], config: dict[str, Any] | None, repo: str = "?") -> tuple[str, list[str]]:
    """``(layout, weight files to download)`` from a repo's file names and its ``config.json``.

    Raises a :class:`UserError` naming the repo, the files seen and the supported layouts.
    """
    fs, cfg = set(files), config or {}
    mt = cfg.get("model_type")
    layer = cfg.get("layer") if isinstance(cfg.get("layer"), dict) else {}
    weights = [f for f in ("model.safetensors", "pytorch_model.bin") if f in fs]
    if "weights.ckpt" in fs or mt == "hyenadna" or layer.get("_name_") == "hyena":
        w = ["weights.ckpt"] if "weights.ckpt" in fs else weights[:1]
        if w:
            return "hyenadna", w
    elif mt == "caduceus":
        if weights:
            return "caduceus", weights[:1]
    elif mt in ("mamba", "mamba2"):
        if "model.safetensors" in fs:
            return "transformers", ["model.safetensors"]
        if "model.safetensors.index.json" in fs:
            idx = "model.safetensors.index.json"
            shards = sorted(f for f in fs if re.match(r"^model-\d+-of-\d+\.safetensors$", f))
            if shards:
                return "transformers", [idx, *shards]
    elif "d_model" in cfg and "n_layer" in cfg and weights:
        return "mamba_ssm", weights[:1]  # model.safetensors preferred over the pickle
    elif mt is None and (w := vim_weight_file(repo, files)) is not None and (repo in VIM_REPOS or w.startswith("vim")):
        return "vim", [w]
    supported = "; ".join(f"{k}: {v}" for k, v in LAYOUTS.items())
    raise UserError(
        f"hf:{repo} is not in a layout longstream can convert (files: {sorted(fs) or 'none'}; config.json "
        f"model_type: {mt!r}). Supported layouts: {supported}. Convert it yourself with "
        "longstream.backbones.convert or open an issue naming the repo"
    )


# ----------------------------------------------------------------------------- download
def _hf_module():
    try:
        import huggingface_hub
    except ImportError as e:
        raise UserError(
            "importing hf: checkpoints needs the optional package huggingface_hub: "
            "pip install 'longstream[hub]' (or pip install 'huggingface_hub>=0.20')"
        ) from e
    return huggingface_hub


def _git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1()  # noqa: S324 - git's object id, not a security hash
    h.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _check_file(path: Path, meta: dict[str, Any]) -> str | None:
    """A problem with a downloaded file against the Hub's record, or None."""
    size = meta.get("size")
    if size is not None and path.stat().st_size != size:
        return f"size {path.stat().st_size} != {size}"
    if meta.get("sha256"):
        got = sha256_file(path)
        return None if got == meta["sha256"] else f"sha256 {got[:12]}... != published {meta['sha256'][:12]}..."
    if meta.get("blob_id"):
        got = _git_blob_sha1(path)
        return None if got == meta["blob_id"] else f"git blob id {got[:12]}... != published {meta['blob_id'][:12]}..."
    return None


def _hub_error(hf: Any, n: HFName, endpoint: str, e: Exception) -> UserError:
    errs = hf.errors if hasattr(hf, "errors") else hf.utils
    kind = {
        "RepositoryNotFoundError": "no such repository (or it is private/gated)",
        "RevisionNotFoundError": f"no revision {n.revision!r} in it",
        "EntryNotFoundError": "a file it lists is missing",
    }
    for cls, what in kind.items():
        if isinstance(e, getattr(errs, cls, ())):
            return UserError(f"{n.name}: {what} at {endpoint}; check the name (see https://huggingface.co/{n.repo_id})")
    return UserError(
        f"{n.name}: download from {endpoint} failed ({type(e).__name__}: {str(e)[:300]}); check the connection "
        "and retry (downloads resume), or set HF_ENDPOINT to a mirror"
    )


class _Downloader:
    """Lists a repo at one commit and downloads + verifies single files into ``cache/hf``."""

    def __init__(self, n: HFName, cache: Path, timeout: float) -> None:
        self.hf = _hf_module()
        self.n = n
        self.endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
        self.cache_dir = str(cache / "hf")
        self.timeout = timeout
        try:
            info = self.hf.HfApi(endpoint=self.endpoint).model_info(
                n.repo_id, revision=n.revision, files_metadata=True, timeout=timeout
            )
        except Exception as e:  # noqa: BLE001 - every hub/network failure becomes one clear message
            raise _hub_error(self.hf, n, self.endpoint, e) from e
        self.commit: str = info.sha or (n.revision or "main")
        self.files: dict[str, dict[str, Any]] = {
            s.rfilename: {
                "size": s.lfs.size if s.lfs else s.size,
                "sha256": s.lfs.sha256 if s.lfs else None,
                "blob_id": None if s.lfs else s.blob_id,
            }
            for s in info.siblings or []
        }

    def get(self, fname: str) -> Path:
        """Download ``fname`` (resumed after a cut) and verify it; one fresh re-fetch on a mismatch."""
        problems = []
        for attempt in range(2):
            try:
                p = Path(self.hf.hf_hub_download(
                    self.n.repo_id, fname, revision=self.commit, cache_dir=self.cache_dir, endpoint=self.endpoint,
                    force_download=attempt > 0, etag_timeout=self.timeout,
                ))  # fmt: skip
            except Exception as e:  # noqa: BLE001
                raise _hub_error(self.hf, self.n, self.endpoint, e) from e
            bad = _check_file(p, self.files.get(fname, {}))
            if bad is None:
                return p
            problems.append(f"attempt {attempt + 1}: {bad}")
            _unlink_blob(p)
        raise UserError(
            f"{self.n.name}/{fname} failed verification ({'; '.join(problems)}); the download is refused. "
            "The server's copy or its published checksum is wrong; retry later or use another HF_ENDPOINT"
        )


def _unlink_blob(p: Path) -> None:
    """Remove a cached snapshot file and the blob it links to."""
    target = p.resolve()
    p.unlink(missing_ok=True)
    if target != p:
        target.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- convert + save
def _convert(layout: str, src: Path, trust_pickle: bool, files: list[str] | None = None) -> tuple[dict[str, Any], Any]:
    """``(config to record, model)`` for the files in ``src`` (``files``: the layout's weight files)."""
    from longstream.backbones import convert
    from longstream.backbones.hyenadna import load_hyenadna

    try:
        if layout == "mamba_ssm":
            model = convert.load_mamba_ssm(src)
        elif layout == "transformers":
            model = convert.load_hf(src)
        elif layout == "caduceus":
            return _convert_caduceus(src, trust_pickle)
        elif layout == "vim":
            from .vision.vim import MODEL_TYPE, VisionMamba

            model = VisionMamba.from_hustvl(src / (files or [])[0], trust_pickle=trust_pickle)
            return {"model_type": MODEL_TYPE, "vim": dict(model.config)}, model
        else:
            model = load_hyenadna(src, trust_pickle=trust_pickle)
            return {"model_type": "hyenadna", **dataclasses.asdict(model.config)}, model
    except (ValueError, FileNotFoundError) as e:  # ConversionError is a ValueError
        raise UserError(f"converting the {layout} checkpoint failed: {e}") from e
    return dict(model.config), model


def import_hf(
    name: str,
    *,
    cache: str | os.PathLike,
    force: bool = False,
    trust_pickle: bool = False,
    timeout: float = 30.0,
    offline: bool | None = None,
) -> Path:
    """Download, verify and convert ``hf:<repo_id>[@rev]`` into the hub cache; return the checkpoint dir.

    An already imported name is returned as is unless ``force``. ``trust_pickle`` allows
    Lightning ``weights.ckpt`` files that pickle objects besides tensors. ``offline``
    (default: :func:`hf_offline`) refuses anything not imported yet, before any connection.
    """
    n = parse_hf_name(name)
    cache = Path(cache)
    final = import_dir(cache, n)
    if _is_complete(final) and not force:
        return final
    if hf_offline() if offline is None else offline:
        raise UserError(
            f"{n.name} is not imported yet and LONGSTREAM_OFFLINE / HF_HUB_OFFLINE forbids downloading it; "
            f"unset them and run `longstream hub import {n.name}` once"
        )
    dl = _Downloader(n, cache, timeout)
    cfg = None
    if "config.json" in dl.files:
        try:
            cfg = json.loads(dl.get("config.json").read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{n.name}/config.json is not valid JSON ({e})") from e
    layout, wanted = detect_hf_layout(list(dl.files), cfg, n.repo_id)
    paths = {f: dl.get(f) for f in wanted}
    src = next(iter(paths.values())).parent  # hf_hub_download puts one commit's files in one snapshot dir
    config, model = _convert(layout, src, trust_pickle, wanted)
    upstream = {f: dl.files.get(f, {}) for f in (["config.json"] if cfg is not None else []) + wanted}
    config["source"] = {
        "hub": "huggingface", "name": n.name, "repo_id": n.repo_id, "revision": n.revision, "commit": dl.commit,
        "endpoint": dl.endpoint, "layout": layout,
        "files": {f: {"sha256": sha256_file(paths.get(f) or src / f), "size": m.get("size")} for f, m in upstream.items()},
    }  # fmt: skip
    config["task"] = f"imported from {n.name} ({layout})"
    sd = model.state_dict()
    if getattr(model, "tie_embeddings", False):
        sd.pop("lm_head.weight", None)
    card = (
        f"# {n.name}\n\nConverted by `longstream hub import` from https://huggingface.co/{n.repo_id} "
        f"(commit `{dl.commit}`, layout `{layout}`). The weights and their licence are the upstream authors'.\n"
    )
    final.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(final, sd, config, card=card)


def resolve_hf(name: str, *, cache: str | os.PathLike, download: bool = True, offline: bool | None = None) -> Path:
    """The checkpoint dir of an ``hf:`` name: imported -> that dir; else import it (unless offline)."""
    n = parse_hf_name(name)
    d = import_dir(cache, n)
    if _is_complete(d):
        return d
    if not download:
        raise UserError(f"{n.name} is not imported; run `longstream hub import {n.name}`")
    return import_hf(n.name, cache=cache, offline=offline)


def imported(cache: str | os.PathLike) -> list[dict[str, Any]]:
    """Records (``name, task, path, files, source``) of every imported ``hf:`` checkpoint in ``cache``."""
    root = Path(cache) / "checkpoints" / "hf"
    out = []
    for cfg in sorted(root.glob("*/config.json")) if root.is_dir() else []:
        try:
            meta = json.loads(cfg.read_text())
        except json.JSONDecodeError:
            continue
        src = meta.get("source") or {}
        if not src.get("name") or not (cfg.parent / "model.safetensors").exists():
            continue
        files = dict(meta.get("files") or {})
        for f, sha in (meta.get("sha256") or {}).items():
            files.setdefault(f, {"sha256": sha, "size": (cfg.parent / f).stat().st_size if (cfg.parent / f).exists() else None})
        out.append({"name": src["name"], "task": meta.get("task", ""), "path": cfg.parent, "files": files,
                    "source": src, "metrics": meta.get("metrics") or {}})
    return out


def load_imported(directory: str | os.PathLike, map_location: str = "cpu") -> Any:
    """The model in an imported checkpoint dir (sha256 verified): a ``LanguageModel``, an
    ``RCLanguageModel`` (Caduceus-PS), a ``HyenaDNAModel`` or a ``VisionMamba`` (hustvl/Vim)."""
    from longstream.backbones.lm import LanguageModel

    d = Path(directory)
    meta = json.loads((d / "config.json").read_text()) if (d / "config.json").exists() else {}
    if meta.get("model_type") == RC_LM:
        config, tensors = load_checkpoint(d, map_location=map_location)
        model = _rc_lm(config)
        try:
            model.load_state_dict(tensors)
        except RuntimeError as e:
            raise UserError(f"weights in {d} do not fit the model in its config.json: {e}") from None
        return model.eval()
    if meta.get("model_type") == "longstream_vim":
        from .vision.vim import VisionMamba

        return VisionMamba.from_pretrained(d, map_location=map_location)
    if meta.get("model_type") != "hyenadna":
        return LanguageModel.from_pretrained(d, map_location=map_location)
    from longstream.backbones.hyenadna import HyenaDNAConfig, load_hyenadna

    config, tensors = load_checkpoint(d, map_location=map_location)
    fields = {f.name for f in dataclasses.fields(HyenaDNAConfig)}
    return load_hyenadna(tensors, HyenaDNAConfig(**{k: v for k, v in config.items() if k in fields}))


# ----------------------------------------------------------------------------- Caduceus
RC_LM = "longstream_rc_lm"  # config.json model_type of an RC-equivariant DNA LM (Caduceus-PS)


def _rc_lm(config: dict[str, Any]) -> Any:
    """An untrained ``RCLanguageModel`` shaped by a ``longstream_rc_lm`` config dict."""
    from longstream.backbones.config import BackboneConfig
    from longstream.backbones.stack import SequenceBackbone
    from longstream.encoders.dna_rc import RCLanguageModel

    backbone = SequenceBackbone(BackboneConfig.from_dict(config["backbone"]))
    return RCLanguageModel(backbone, config["vocab_size"], config.get("complement_map"))


def caduceus_from_upstream(sd: dict[str, Any], hf_config: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """``(config to record, model)`` from an upstream Caduceus state dict and its config.json dict.

    Ph -> ``LanguageModel`` (tied head, ``model_type`` longstream_lm); PS -> ``RCLanguageModel``
    (``model_type`` longstream_rc_lm, the complement map recorded in the config).
    """
    from longstream.backbones.caduceus import CaduceusConversionError, convert_caduceus_state_dict
    from longstream.backbones.lm import LanguageModel

    cfg, bsd, emb = convert_caduceus_state_dict(sd, hf_config)
    rows = int(emb.shape[0])
    tensors = {"embedding.weight": emb, **{f"backbone.{k}": v for k, v in bsd.items()}}
    if cfg.rc_equivariant:
        raw = hf_config.get("complement_map") or {}
        comp = [int(raw.get(str(i), raw.get(i, i))) for i in range(rows)]  # upstream pads with identity
        for k in ("caduceus.backbone.embeddings.word_embeddings.complement_map", "lm_head.complement_map"):
            if k in sd and [int(c) for c in sd[k].tolist()] != comp:
                raise CaduceusConversionError(f"{k} in the weights differs from config.json complement_map")
        config = {"model_type": RC_LM, "vocab_size": rows, "complement_map": comp, "backbone": cfg.to_dict()}
        model = _rc_lm(config)
    else:
        model = LanguageModel(rows, cfg, tie_embeddings=True, pad_vocab_size_multiple=1)
        tensors["lm_head.weight"] = emb
        config = dict(model.config)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise CaduceusConversionError(f"Caduceus checkpoint does not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    config["tokenizer"] = "dna_char"  # HyenaDNA's character ids (encoders/dna.py): A=7 C=8 G=9 T=10 N=11
    return config, model.eval()


def _convert_caduceus(src: Path, trust_pickle: bool) -> tuple[dict[str, Any], Any]:
    cfg_path = src / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"no config.json next to the Caduceus weights in {src}")
    weights = next((src / f for f in ("model.safetensors", "pytorch_model.bin") if (src / f).exists()), None)
    if weights is None:
        raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {src}")
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(weights))
    else:
        import torch

        sd = torch.load(str(weights), map_location="cpu", weights_only=not trust_pickle)
    return caduceus_from_upstream(dict(sd), json.loads(cfg_path.read_text()))


# ----------------------------------------------------------------------------- fine-tuning entry
@dataclass
class ImportedBackbone:
    """What :func:`load_imported_backbone` returns: enough to build ``embedding -> backbone`` and fine-tune.

    - ``kind``: ``"lm"`` (``LanguageModel``: Mamba, Mamba-2, Caduceus-Ph), ``"rc_lm"``
      (Caduceus-PS, RC-equivariant), ``"hyenadna"`` or ``"vim"`` (``VisionMamba``; the
      ``embedding_state`` is its image encoder's, ``vocab_size`` 0).
    - ``backbone_config``: a :class:`~longstream.backbones.config.BackboneConfig` (``lm``,
      ``rc_lm``) or a :class:`~longstream.backbones.hyenadna.HyenaDNAConfig`.
    - ``backbone_state`` / ``embedding_state``: state dicts of ``model.backbone`` and
      ``model.embedding`` (for ``hyenadna``: of ``model.backbone`` without the embedding,
      and ``{"weight": word_embeddings}``).
    - ``model``: the whole loaded model (its ``hidden(ids)`` / forward give features).
    - ``d_model``: the width of the hidden states; ``vocab_size``: embedding rows;
      ``rc_equivariant``: pool with :func:`longstream.encoders.dna_rc.rc_pool`, and build the
      embedding as ``RCEmbedding(vocab_size, d_model, complement_map)``.
    """

    kind: str
    name: str
    backbone_config: Any
    backbone_state: dict[str, Any]
    embedding_state: dict[str, Any]
    model: Any
    d_model: int
    vocab_size: int
    rc_equivariant: bool
    config: dict[str, Any]
    complement_map: list[int] | None = None


def load_imported_backbone(directory: str | os.PathLike, map_location: str = "cpu") -> ImportedBackbone:
    """Load a checkpoint dir written by ``longstream hub import`` (or any ``save_pretrained`` LM) for fine-tuning.

    Raises a :class:`UserError` naming the directory if it is not a checkpoint.
    """
    d = Path(directory)
    if not (d / "config.json").is_file():
        raise UserError(f"{d} is not an imported checkpoint (no config.json); run `longstream hub import hf:<repo>` "
                        "and pass the directory it prints")
    try:
        meta = json.loads((d / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{d / 'config.json'} is not valid JSON ({e})") from e
    model = load_imported(d, map_location=map_location)
    name = (meta.get("source") or {}).get("name") or str(d)
    if meta.get("model_type") == "hyenadna":
        bsd = {k: v for k, v in model.backbone.state_dict().items() if not k.startswith("embeddings.")}
        emb = {"weight": model.backbone.embeddings.word_embeddings.weight.detach()}
        return ImportedBackbone("hyenadna", name, model.config, bsd, emb, model, model.config.d_model,
                                model.config.padded_vocab, False, meta)
    if meta.get("model_type") == "longstream_vim":  # a Vision Mamba classifier: the image encoder is the "embedding"
        return ImportedBackbone("vim", name, model.backbone.cfg, model.backbone.state_dict(), model.embed.state_dict(),
                                model, model.embed_dim, 0, False, meta)
    kind = "rc_lm" if meta.get("model_type") == RC_LM else "lm"
    cfg = model.backbone.cfg
    rows = int(model.embedding.weight.shape[0])
    return ImportedBackbone(kind, name, cfg, model.backbone.state_dict(), model.embedding.state_dict(), model,
                            cfg.d_model, rows, bool(cfg.rc_equivariant), meta, meta.get("complement_map"))
