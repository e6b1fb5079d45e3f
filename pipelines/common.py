"""Small helpers every pipeline composes: no trainer class, just functions.

Sections (read top to bottom):

- errors: :class:`UserError` — the one exception a user can cause (bad input, unknown
  name, corrupt checkpoint). The CLI turns it into one line on stderr and exit code 2.
- reproducibility: :func:`seed_everything`, :func:`set_threads`, :func:`pick_device`.
- configs: :func:`config_to_dict`, :func:`config_from_dict`, :func:`apply_overrides`
  (dotted ``--backbone.d_model 256`` overrides onto nested dataclasses, typed).
- optimisation: :func:`warmup_cosine`, :func:`make_scheduler`, :class:`EarlyStopping`.
- logging: :class:`MetricLogger` (JSONL), :func:`progress` (tqdm, quiet when not a TTY).
- train state: :func:`save_train_state` / :func:`load_train_state` (atomic, resumable:
  model, optimizer, scheduler, step, RNG; loaded with ``weights_only=True``).
- distributed: :func:`init_distributed`, :class:`DistEnv`, :func:`wrap_ddp`,
  :func:`shard_indices`, :func:`all_reduce_mean` (``torchrun``; gloo on CPU, NCCL on GPU).
- pretrained: :func:`save_pretrained` / :func:`load_pretrained` (``model.safetensors`` +
  ``config.json`` + ``README.md``, written to a temp dir and renamed, sha256 verified).
- CLI: :func:`run_pipeline_cli` builds the uniform verbs ``train`` / ``evaluate`` /
  ``predict`` (plus any extra verbs) so a pipeline's ``cli.py`` stays ~30 lines.

See ``pipelines/CONTRACT.md`` for what a pipeline must provide.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import traceback
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from longstream.backbones.lm import replace_dir, sha256_file

__all__ = [
    "UserError",
    "seed_everything",
    "set_threads",
    "pick_device",
    "build_backbone",
    "config_to_dict",
    "config_from_dict",
    "apply_overrides",
    "parse_dotted_args",
    "warmup_cosine",
    "make_scheduler",
    "EarlyStopping",
    "MetricLogger",
    "progress",
    "is_quiet",
    "save_train_state",
    "load_train_state",
    "DistEnv",
    "init_distributed",
    "cleanup_distributed",
    "wrap_ddp",
    "unwrap",
    "shard_indices",
    "all_reduce_mean",
    "sha256_file",
    "code_version",
    "save_pretrained",
    "check_out_dir",
    "load_pretrained",
    "read_checkpoint_config",
    "run_pipeline_cli",
    "print_json",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT_FORMAT = "longstream-checkpoint/1"


# --------------------------------------------------------------------------- errors


class UserError(Exception):
    """An error the user can fix (bad file, wrong shape, unknown name, corrupt checkpoint).

    The message must name the input and the fix. The CLI prints ``error: <message>`` on
    stderr with no traceback and exits with code 2. Anything else that escapes a verb is
    an internal failure (exit 1, traceback printed).
    """


# --------------------------------------------------------------------------- reproducibility


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy (if installed) and torch (CPU and CUDA)."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def set_threads(n: int | None = None) -> int:
    """Set torch intra-op threads (``None``: ``$LONGSTREAM_THREADS`` or leave as is). Returns the count."""
    if n is None:
        env = os.environ.get("LONGSTREAM_THREADS")
        n = int(env) if env else None
    if n is not None and n > 0:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def pick_device(pref: str = "auto") -> torch.device:
    """``"auto"`` -> cuda if available else cpu; otherwise the named device."""
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(pref)
    except RuntimeError as e:
        raise UserError(f"unknown device {pref!r}: use auto, cpu or cuda[:N]") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {pref!r} requested but CUDA is not available; use --device cpu")
    return dev


# --------------------------------------------------------------------------- configs


def config_to_dict(cfg: Any) -> Any:
    """A dataclass config (nested) as plain JSON-able dicts."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    return cfg


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # unresolved forward refs: fall back to the raw annotations
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _dataclass_type(tp: Any) -> type | None:
    """The dataclass inside ``tp`` (``X`` or ``X | None``), else None."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if isinstance(arg, type) and dataclasses.is_dataclass(arg):
            return arg
    return None


def config_from_dict(cls: type, d: dict[str, Any], *, strict: bool = False) -> Any:
    """Rebuild dataclass ``cls`` (nested dataclasses included) from :func:`config_to_dict` output.

    Unknown keys are ignored unless ``strict`` (then :class:`UserError`), so old checkpoints
    load after a field is removed; missing keys take the dataclass defaults.
    """
    if not isinstance(d, dict):
        raise UserError(f"expected a mapping for {cls.__name__}, got {type(d).__name__}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if strict and unknown:
        raise UserError(f"unknown {cls.__name__} option(s) {sorted(unknown)}; valid: {sorted(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        v = d[f.name]
        sub = _dataclass_type(hints.get(f.name))
        if sub is not None and isinstance(v, dict):
            v = config_from_dict(sub, v, strict=strict)
        elif isinstance(v, list) and typing.get_origin(hints.get(f.name)) is tuple:
            v = tuple(v)
        kwargs[f.name] = v
    return cls(**kwargs)


def parse_dotted_args(tokens: Sequence[str]) -> dict[str, str]:
    """``["--a.b", "1", "--c=x"]`` -> ``{"a.b": "1", "c": "x"}``. Raises UserError on junk."""
    out: dict[str, str] = {}
    i = 0
    toks = list(tokens)
    while i < len(toks):
        t = toks[i]
        if not t.startswith("--") or len(t) <= 2:
            raise UserError(f"unexpected argument {t!r}; overrides look like --section.field VALUE")
        key = t[2:]
        if "=" in key:
            key, val = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(toks):
                raise UserError(f"override --{key} needs a value (e.g. --{key} 256)")
            val = toks[i + 1]
            i += 2
        out[key.replace("-", "_")] = val
    return out


def _coerce(value: str, tp: Any, key: str) -> Any:
    """Convert the string ``value`` to type ``tp`` (bool/int/float/str/Optional/list/dict/Literal)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or tp is None:
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if origin in (typing.Union, types.UnionType):
        if value.lower() in ("none", "null") and type(None) in args:
            return None
        errs = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except UserError as e:
                errs.append(str(e))
        raise UserError(errs[0] if errs else f"bad value {value!r} for --{key}")
    if origin is typing.Literal:
        for a in args:
            if str(a) == value:
                return a
        raise UserError(f"--{key} must be one of {list(args)}, got {value!r}")
    if tp is bool:
        v = value.strip().lower()
        if v in ("1", "true", "yes", "y", "on"):
            return True
        if v in ("0", "false", "no", "n", "off"):
            return False
        raise UserError(f"--{key} expects true/false, got {value!r}")
    if tp in (int, float):
        try:
            return tp(float(value)) if tp is int and "e" in value.lower() else tp(value)
        except ValueError:
            raise UserError(f"--{key} expects {tp.__name__}, got {value!r}") from None
    if tp is str:
        return value
    if origin in (list, tuple, dict) or tp in (list, tuple, dict):
        try:
            v = json.loads(value)
        except json.JSONDecodeError:
            if origin in (list, tuple) or tp in (list, tuple):
                v = [s for s in value.split(",") if s != ""]
                if args:
                    v = [_coerce(s, args[0], key) for s in v]
            else:
                raise UserError(f"--{key} expects JSON, e.g. '{{\"k\": 1}}', got {value!r}") from None
        return tuple(v) if (origin is tuple or tp is tuple) else v
    return value


def apply_overrides(cfg: Any, overrides: dict[str, str] | Sequence[str]) -> Any:
    """Return a copy of dataclass ``cfg`` with dotted string overrides applied, typed.

    ``overrides`` is ``{"backbone.d_model": "256"}`` or the raw CLI tokens
    ``["--backbone.d_model", "256"]``. Unknown keys raise :class:`UserError` listing the
    valid ones. A dict-valued field takes ``--field.key value`` (JSON-decoded value).
    """
    if not isinstance(overrides, dict):
        overrides = parse_dotted_args(overrides)
    for key, raw in overrides.items():
        cfg = _set_dotted(cfg, key.split("."), raw, key)
    return cfg


def _set_dotted(obj: Any, parts: list[str], raw: str, full: str) -> Any:
    head, rest = parts[0], parts[1:]
    if dataclasses.is_dataclass(obj):
        names = [f.name for f in dataclasses.fields(obj)]
        if head not in names:
            prefix = full[: len(full) - len(".".join(parts))]
            valid = ", ".join(prefix + n for n in names)
            raise UserError(f"unknown option --{full}; valid here: {valid}")
        cur = getattr(obj, head)
        if rest:
            new = _set_dotted(cur, rest, raw, full)
        else:
            if dataclasses.is_dataclass(cur):
                raise UserError(f"--{full} is a section; set one of its fields, e.g. --{full}.<field>")
            new = _coerce(raw, _hints(type(obj)).get(head, Any), full)
        return dataclasses.replace(obj, **{head: new})
    if isinstance(obj, dict):
        new = dict(obj)
        if rest:
            new[head] = _set_dotted(obj.get(head, {}), rest, raw, full)
        else:
            new[head] = _coerce(raw, Any, full)
        return new
    raise UserError(f"cannot set --{full}: {type(obj).__name__} has no fields")


def build_backbone(spec: Any, **overrides: Any) -> nn.Module:
    """``longstream.backbones.create_backbone`` with configuration mistakes turned into :class:`UserError`.

    ``spec`` is a preset name or a ``BackboneConfig`` (e.g. ``cfg.backbone``). A bad
    pattern, unknown preset or unknown mixer option is something the user typed
    (``--backbone.pattern Q``), so it exits 2 with the message instead of a traceback.
    """
    from longstream.backbones import create_backbone

    try:
        return create_backbone(spec, **overrides)
    except (ValueError, KeyError, TypeError) as e:
        msg = e.args[0] if e.args else str(e)
        raise UserError(f"bad backbone configuration: {msg} (check the --backbone.* options)") from e


# --------------------------------------------------------------------------- optimisation


def warmup_cosine(step: int, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.1) -> float:
    """LR multiplier: linear warmup to 1 over ``warmup_steps``, then cosine to ``min_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: weight decay on matrices only. Vectors (norm scales, biases)
    and parameters flagged ``_no_weight_decay`` (Mamba's ``A_log``, ``D``, ``dt_bias``) are
    not decayed: decaying ``A_log`` pulls every SSM timescale to 1 step and shortens memory."""
    decay, keep = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (keep if p.dim() < 2 or getattr(p, "_no_weight_decay", False) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def make_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.1
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following :func:`warmup_cosine` (call ``.step()`` once per optimizer step)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, total_steps, warmup_steps, min_ratio)
    )


class EarlyStopping:
    """Stop when the monitored value has not improved by ``min_delta`` for ``patience`` checks."""

    def __init__(self, patience: int = 5, mode: str = "min", min_delta: float = 0.0) -> None:
        if mode not in ("min", "max"):
            raise ValueError("mode must be 'min' or 'max'")
        self.patience, self.mode, self.min_delta = patience, mode, min_delta
        self.best: float | None = None
        self.bad = 0

    def improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def step(self, value: float) -> bool:
        """Record ``value``; return True when training should stop."""
        if self.improved(value):
            self.best, self.bad = value, 0
        else:
            self.bad += 1
        return self.bad >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad": self.bad}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.best, self.bad = d.get("best"), int(d.get("bad", 0))


# --------------------------------------------------------------------------- logging and progress

_QUIET = False


def is_quiet() -> bool:
    """True with ``--quiet``, ``LONGSTREAM_QUIET=1``, or when stderr is not a terminal."""
    if _QUIET or os.environ.get("LONGSTREAM_QUIET") == "1":
        return True
    try:
        return not sys.stderr.isatty()
    except (AttributeError, ValueError):
        return True


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str | None = None, **kw: Any):
    """A tqdm bar on stderr, disabled when quiet (see :func:`is_quiet`) or on non-zero ranks."""
    from tqdm.auto import tqdm

    disable = is_quiet() or int(os.environ.get("RANK", "0")) != 0
    return tqdm(iterable, total=total, desc=desc, disable=disable, dynamic_ncols=True, leave=False, **kw)


class MetricLogger:
    """Append one JSON object per call to ``path`` (JSONL); only rank 0 writes."""

    def __init__(self, path: str | os.PathLike | None, *, rank: int = 0) -> None:
        self.path = Path(path) if path is not None else None
        self.rank = rank
        if self.path is not None and rank == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, step: int | None = None, **metrics: Any) -> dict[str, Any]:
        rec: dict[str, Any] = {"time": round(_dt.datetime.now(_dt.timezone.utc).timestamp(), 3)}
        if step is not None:
            rec["step"] = step
        for k, v in metrics.items():
            rec[k] = v.item() if isinstance(v, torch.Tensor) else v
        if self.path is not None and self.rank == 0:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
        return rec

    @staticmethod
    def read(path: str | os.PathLike) -> list[dict[str, Any]]:
        p = Path(path)
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- atomic files


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- train state (resume)


def _rng_state() -> dict[str, Any]:
    st: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        s = np.random.get_state()
        st["numpy"] = [s[0], torch.from_numpy(s[1].astype("int64")), int(s[2]), int(s[3]), float(s[4])]
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    if "python" in st:
        py = st["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
    if "torch" in st:
        torch.set_rng_state(st["torch"])
    if "numpy" in st:
        import numpy as np

        s = st["numpy"]
        np.random.set_state((s[0], s[1].numpy().astype("uint32"), s[2], s[3], s[4]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_train_state(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    step: int = 0,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Atomically write a resumable training state (model, optimizer, scheduler, step, RNG).

    Saved with ``torch.save`` of tensors and plain containers only, so it loads with
    ``weights_only=True`` (no arbitrary pickles). ``extra`` must hold plain values.
    """
    path = Path(path)
    state = {
        "step": int(step),
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": _rng_state(),
        "extra": extra or {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_train_state(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    restore_rng: bool = True,
    map_location: str | torch.device = "cpu",
) -> tuple[int, dict[str, Any]]:
    """Load a state written by :func:`save_train_state`; returns ``(step, extra)``."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"no training state at {path}; drop --resume to start a new run")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise UserError(f"training state {path} is unreadable ({e}); delete it or drop --resume") from e
    unwrap(model).load_state_dict(state["model"])
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if restore_rng and state.get("rng"):
        _set_rng_state(state["rng"])
    return int(state["step"]), dict(state.get("extra") or {})


# --------------------------------------------------------------------------- distributed


@dataclasses.dataclass
class DistEnv:
    """Where this process sits in a (possibly 1-process) data-parallel run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True when the environment variables set by ``torchrun`` are present."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def init_distributed(device: str = "auto") -> DistEnv:
    """Initialise ``torch.distributed`` if launched by ``torchrun``, else a single-process env.

    Backend: NCCL when the device is CUDA, gloo otherwise. Each rank uses
    ``cuda:LOCAL_RANK`` on GPU machines.
    """
    import torch.distributed as dist

    dev = pick_device(device)
    if not launched_by_torchrun() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistEnv(device=dev)
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=_dt.timedelta(minutes=10))
    return DistEnv(rank=rank, world_size=world, local_rank=local, device=dev, backend=backend)


def cleanup_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        import torch.distributed as dist

        dist.barrier()


def wrap_ddp(model: nn.Module, env: DistEnv) -> nn.Module:
    """Wrap in ``DistributedDataParallel`` (gradients all-reduced, averaged) when distributed."""
    if not env.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [env.device.index] if env.device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP / compiled wrapper."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module  # type: ignore[assignment]
    return getattr(model, "_orig_mod", model)


def shard_indices(indices: Sequence[int] | torch.Tensor, env: DistEnv) -> list[int]:
    """This rank's contiguous share of a global batch's ``indices``.

    With a global batch of size ``B`` and ``W`` ranks, rank r takes ``B // W`` items
    starting at ``r * B // W``; ``B`` must be divisible by ``W`` so every rank sees the
    same number of items and the DDP gradient average equals the single-process one.
    """
    idx = list(indices.tolist() if isinstance(indices, torch.Tensor) else indices)
    if not env.distributed:
        return idx
    if len(idx) % env.world_size:
        raise UserError(
            f"global batch {len(idx)} is not divisible by {env.world_size} processes; change --train.batch_size"
        )
    per = len(idx) // env.world_size
    return idx[env.rank * per : (env.rank + 1) * per]


def all_reduce_mean(value: float | torch.Tensor, env: DistEnv) -> float:
    """Mean of a scalar over all ranks (returns a Python float)."""
    t = torch.as_tensor(value, dtype=torch.float64, device=env.device if env.backend == "nccl" else "cpu")
    if env.distributed:
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t = t / env.world_size
    return float(t.item())


# --------------------------------------------------------------------------- pretrained checkpoints


def code_version() -> str:
    """``<package version>+g<git sha>[.dirty]`` when in a git checkout, else the package version."""
    try:
        from importlib.metadata import version

        v = version("longstream")
    except Exception:
        v = "0+unknown"
    try:
        sha = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        if sha:
            v += f"+g{sha}"
    except Exception:
        pass
    return v


def _default_card(meta: dict[str, Any]) -> str:
    m = meta.get("metrics") or {}
    rows = "\n".join(f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in m.items())
    data = meta.get("data") or {}
    bb = meta.get("backbone")
    if isinstance(bb, dict):
        bb = " ".join(f"{k}={bb[k]}" for k in ("pattern", "d_model", "n_layers", "d_intermediate") if k in bb)
    return f"""# {meta.get('name') or meta['pipeline']}

longstream `{meta['pipeline']}` pipeline checkpoint.

- task: {meta.get('task', '')}
- preset: `{meta.get('preset')}`
- backbone: `{bb}`
- data: {data.get('name', 'n/a')} (sha256 `{data.get('sha256', 'n/a')}`)
- code version: `{meta.get('code_version')}`
- created: {meta.get('created')}

## Metrics

| metric | value |
|---|---|
{rows}

## Use

```bash
longstream {meta['pipeline']} evaluate --checkpoint <this directory or name> --json
```

Files: `model.safetensors` (weights), `config.json` (config, metrics, sha256 of the weights).
"""


_RUN_FILES = {"model.safetensors", "config.json", "README.md", "metrics.jsonl", "train_state.pt"}
_RUN_SUFFIXES = {".pt", ".jsonl", ".json", ".log", ".png", ".csv", ".md", ".safetensors"}  # run artifacts


def check_out_dir(out: str | os.PathLike, *, strict: bool = True) -> Path:
    """Refuse an output dir that holds something other than a checkpoint / training run.

    Saving swaps the whole directory atomically, so pointing ``--out`` at a folder with
    unrelated content (``--out .``, ``--out ~``, a folder of folders) must fail before
    anything is trained or moved. ``strict`` (used before training starts) also refuses
    unknown files in a directory that is not yet a checkpoint.
    """
    p = Path(out).expanduser().resolve()
    if p.exists() and not p.is_dir():
        raise UserError(f"--out {out} is a file; give a directory for the checkpoint")
    cwd = Path.cwd().resolve()
    if p == cwd or p in cwd.parents or p == Path.home().resolve():
        raise UserError(f"--out {out} is the current directory or one of its parents; give a new sub-directory")
    if p.is_dir():
        kids = [c for c in p.iterdir() if not c.name.startswith(".")]
        names = {c.name for c in kids}
        subdirs = sorted(c.name for c in kids if c.is_dir())
        foreign = (sorted(n for n in names - _RUN_FILES if Path(n).suffix not in _RUN_SUFFIXES)
                   if (strict and "config.json" not in names) else [])
        if subdirs or foreign:
            raise UserError(
                f"--out {out} already holds other files ({', '.join((subdirs + foreign)[:3])}...); "
                "choose a new or empty directory (or an earlier checkpoint/run dir)"
            )
    return p


def save_pretrained(
    model: nn.Module,
    config: Any,
    out_dir: str | os.PathLike,
    *,
    pipeline: str,
    preset: str | None = None,
    backbone: Any = None,
    task: str = "",
    metrics: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    name: str | None = None,
    card: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` + ``config.json`` + ``README.md`` into ``out_dir``, atomically.

    Files are written to a temp dir beside ``out_dir`` and swapped in by rename, so a
    crash never leaves a half-written checkpoint. Other files already in ``out_dir``
    (e.g. ``metrics.jsonl``) are kept. ``config`` is a dataclass (or dict); ``data`` is
    ``{"name": ..., "sha256": ...}`` describing the training data. The sha256 and size of
    ``model.safetensors`` are recorded in ``config.json["files"]`` and checked on load.
    """
    from safetensors.torch import save_file

    out = check_out_dir(out_dir, strict=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    m = unwrap(model)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in m.state_dict().items()}
    # safetensors refuses shared storage: keep the first name of each tied tensor
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    tied: dict[str, str] = {}
    for k in list(sd):
        t = sd[k]
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if t.numel() and key in seen:
            tied[k] = seen[key]
            del sd[k]
        else:
            seen[key] = k
    sd = {k: v.clone() for k, v in sd.items()}
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt", "pipeline": pipeline})
        meta: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "pipeline": pipeline,
            "name": name or (f"{pipeline}/{out.name}"),
            "task": task,
            "preset": preset,
            "backbone": config_to_dict(backbone),
            "config": config_to_dict(config),
            "metrics": metrics or {},
            "data": data or {},
            "code_version": code_version(),
            "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            "tied_weights": tied,
            "files": {
                "model.safetensors": {
                    "sha256": sha256_file(tmp / "model.safetensors"),
                    "size": (tmp / "model.safetensors").stat().st_size,
                }
            },
        }
        if extra:
            meta.update(extra)
        (tmp / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")
        (tmp / "README.md").write_text(card if card is not None else _default_card(meta))
        _publish_perms(tmp)
        if out.exists():  # keep extra files (logs) that live beside the checkpoint
            for p in out.iterdir():
                if not (tmp / p.name).exists() and not p.name.startswith("."):
                    os.replace(p, tmp / p.name)
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _publish_perms(d: Path) -> None:
    """mkdtemp/mkstemp make 0700/0600 entries; a published checkpoint is world-readable."""
    d.chmod(0o755)
    for p in d.iterdir():
        if p.is_file():
            p.chmod(0o644)


def read_checkpoint_config(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a checkpoint dir, with a clear error if missing or malformed."""
    p = Path(ckpt_dir) / "config.json"
    if not p.exists():
        raise UserError(f"{ckpt_dir} is not a longstream checkpoint (no config.json)")
    try:
        meta = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{p} is corrupt ({e}); re-download it with `longstream hub download`") from e
    if not isinstance(meta, dict) or "pipeline" not in meta:
        raise UserError(f"{p} is not a longstream checkpoint config (no 'pipeline' key)")
    return meta


LEGACY_WEIGHTS = ("pytorch_model.bin", "model.pt")


def _load_legacy(path: Path, meta: dict[str, Any], verify: bool) -> dict[str, torch.Tensor]:
    """A legacy pickle checkpoint, loaded only with ``weights_only=True`` (no code execution)."""
    rec = (meta.get("files") or {}).get(path.name) or {}
    if verify and rec.get("sha256") and sha256_file(path) != rec["sha256"]:
        raise UserError(f"{path} is corrupt: sha256 does not match config.json; re-download it")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path} cannot be loaded safely ({type(e).__name__}: {e}); only plain tensor "
                        "state dicts are accepted (weights_only=True)") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{path} is not a state dict of tensors")
    return sd


def load_weights(model: torch.nn.Module, state_dict: dict[str, Any], source: Any, meta: dict[str, Any] | None = None):
    """Load ``state_dict`` into ``model``; a missing or unexpected key is one UserError naming ``source``.

    Returns the model in eval mode.
    """
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        made_by = f"; it was made by code version {meta.get('code_version')}" if meta else ""
        raise UserError(
            f"checkpoint {source} does not match the model (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}){made_by}; re-download or retrain it"
        )
    return model.eval()


def load_pretrained(
    name_or_dir: str | os.PathLike, *, pipeline: str | None = None, verify: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path]:
    """Resolve a checkpoint (path, shipped name, cache or download) and read it.

    Returns ``(state_dict, config_json, checkpoint_dir)``. ``name_or_dir`` is a directory,
    ``<domain>/<name>``, or ``<name>`` when ``pipeline`` is given. Verifies the weights'
    sha256 against ``config.json`` and that the checkpoint belongs to ``pipeline``.
    A pipeline's ``from_pretrained`` builds its model from ``config_json["config"]`` and
    calls ``model.load_state_dict(state_dict)``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .hub import resolve

    d = resolve(str(name_or_dir), domain=pipeline)
    meta = read_checkpoint_config(d)
    if pipeline is not None and meta.get("pipeline") != pipeline:
        raise UserError(
            f"checkpoint {name_or_dir} belongs to pipeline {meta.get('pipeline')!r}, not {pipeline!r}; "
            f"use `longstream {meta.get('pipeline')} ...`"
        )
    wpath = d / "model.safetensors"
    if not wpath.exists():
        legacy = next((d / n for n in LEGACY_WEIGHTS if (d / n).exists()), None)
        if legacy is None:
            raise UserError(f"{d} has no model.safetensors; re-download it with `longstream hub download`")
        return _load_legacy(legacy, meta, verify), meta, d
    rec = (meta.get("files") or {}).get("model.safetensors") or {}
    if verify and rec.get("sha256"):
        got = sha256_file(wpath)
        if got != rec["sha256"]:
            raise UserError(
                f"{wpath} is corrupt: sha256 {got[:12]}... does not match config.json ({rec['sha256'][:12]}...); "
                "re-download it (`longstream hub download NAME --force`) or retrain"
            )
    try:
        sd = load_file(str(wpath))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{wpath} cannot be read ({e}); re-download it") from e
    for k, src in (meta.get("tied_weights") or {}).items():
        if src in sd:
            sd[k] = sd[src]
    return sd, meta, d


# --------------------------------------------------------------------------- CLI


def print_json(obj: Any) -> None:
    """Print ``obj`` as one JSON line on stdout (the machine-readable last line)."""
    print(json.dumps(obj, default=_json_default), flush=True)


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if dataclasses.is_dataclass(o):
        return config_to_dict(o)
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class _Parser(argparse.ArgumentParser):
    """argparse that raises UserError (exit 2, one line) instead of printing usage and exiting.

    Abbreviations are off, so a dotted override is never taken for a prefix of an option.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message} (see --help)")


def make_parser(prog: str, description: str = "") -> argparse.ArgumentParser:
    return _Parser(prog=prog, description=description)


def run_cli_guarded(fn: Callable[[], int | None]) -> int:
    """Run ``fn`` mapping UserError -> 2 (one line), other exceptions -> 1 (traceback)."""
    try:
        rc = fn()
        return 0 if rc is None else int(rc)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` etc.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        except OSError:
            pass
        return 0
    except SystemExit as e:  # argparse --help
        code = e.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    except Exception:
        traceback.print_exc()
        print("error: internal failure (the traceback above); please report it", file=sys.stderr)
        return 1


def _lazy(fn: Callable[..., Any] | str) -> Callable[..., Any]:
    """``"package.module:function"`` -> the function, imported on first call (keeps ``--help`` fast)."""
    if callable(fn):
        return fn
    mod, _, attr = fn.partition(":")
    if not attr:
        raise ValueError(f"lazy reference {fn!r} must look like 'package.module:function'")

    def call(*args: Any, **kwargs: Any) -> Any:
        import importlib

        return getattr(importlib.import_module(mod), attr)(*args, **kwargs)

    return call


def run_pipeline_cli(
    argv: Sequence[str] | None,
    *,
    domain: str,
    presets: dict[str, Callable[[], Any]],
    train: Callable[..., dict[str, Any]] | str,
    evaluate: Callable[..., dict[str, Any]] | str,
    predict: Callable[..., Any] | str,
    default_preset: str = "tiny",
    description: str = "",
    extra_verbs: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], Any] | str]]
    | None = None,
) -> int:
    """The uniform pipeline command line. Returns the exit code (0 / 1 / 2).

    Verbs and the calls they make (see ``pipelines/CONTRACT.md``):

    - ``train [--preset NAME] [--out DIR] [--resume] [--quiet] [--section.field VALUE ...]``
      -> ``train(cfg, out_dir=Path, resume=bool, preset=str) -> dict`` of final metrics.
    - ``evaluate --checkpoint NAME_OR_DIR [--data PATH] [--json] [--quiet]``
      -> ``evaluate(checkpoint=str, data=str|None) -> dict[str, float]``; ``--json``
      prints one JSON object as the last line of stdout.
    - ``predict --checkpoint NAME_OR_DIR INPUT... [--out FILE]``
      -> ``predict(checkpoint=str, inputs=list[str], out=str|None) -> JSON-able``; printed
      as JSON on stdout (and written to ``--out`` by the pipeline if it makes files).
    - ``extra_verbs``: ``{"backtest": (add_arguments(parser), handler(args) -> JSON-able)}``.

    ``train`` / ``evaluate`` / ``predict`` (and extra handlers) may be given as
    ``"pipelines.<domain>.train:train"`` strings, imported only when the verb runs.
    """
    train, evaluate, predict = _lazy(train), _lazy(evaluate), _lazy(predict)
    extra_verbs = {v: (a, _lazy(h)) for v, (a, h) in (extra_verbs or {}).items()}
    global _QUIET
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = f"longstream {domain}"
    parser = make_parser(prog, description)
    sub = parser.add_subparsers(dest="verb", metavar="{train,evaluate,predict" + "".join(
        "," + v for v in (extra_verbs or {})) + "}")

    p_train = sub.add_parser("train", help="train a model from a preset (dotted overrides allowed)")
    p_train.add_argument("--preset", default=default_preset, help=f"one of: {', '.join(presets)}")
    p_train.add_argument("--out", default=None, help="output dir (default runs/<domain>/<preset>)")
    p_train.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    p_train.add_argument("--quiet", action="store_true")
    p_train.add_argument("--print-config", action="store_true", help="print the resolved config and exit")

    p_eval = sub.add_parser("evaluate", help="evaluate a checkpoint")
    p_eval.add_argument("--checkpoint", required=True, help="checkpoint dir or hub name")
    p_eval.add_argument("--data", default=None, help="data file/dir (default: the pipeline's dataset)")
    p_eval.add_argument("--json", action="store_true", help="print metrics as one JSON object (last line)")
    p_eval.add_argument("--quiet", action="store_true")

    p_pred = sub.add_parser("predict", help="run a checkpoint on inputs")
    p_pred.add_argument("--checkpoint", required=True, help="checkpoint dir or hub name")
    p_pred.add_argument("inputs", nargs="+", metavar="INPUT")
    p_pred.add_argument("--out", default=None, help="write the result here")
    p_pred.add_argument("--quiet", action="store_true")

    for verb, (add_args, _) in (extra_verbs or {}).items():
        p = sub.add_parser(verb)
        add_args(p)
        if not any(a.dest == "quiet" for a in p._actions):
            p.add_argument("--quiet", action="store_true")

    def body() -> int:
        global _QUIET
        args, rest = parser.parse_known_args(argv)
        if args.verb is None:
            parser.print_help()
            return 2
        _QUIET = bool(getattr(args, "quiet", False))
        if args.verb != "train" and rest:
            raise UserError(f"{prog} {args.verb}: unrecognised arguments {' '.join(rest)}")
        if args.verb == "train":
            if args.preset not in presets:
                raise UserError(f"unknown preset {args.preset!r} for {domain}; choose from {', '.join(presets)}")
            cfg = apply_overrides(presets[args.preset](), rest)
            if args.print_config:
                print_json(config_to_dict(cfg))
                return 0
            out = Path(args.out) if args.out else Path("runs") / domain / args.preset
            check_out_dir(out, strict=not args.resume)
            metrics = train(cfg, out_dir=out, resume=args.resume, preset=args.preset)
            if int(os.environ.get("RANK", "0")) == 0:
                print(f"saved {out}", file=sys.stderr)
                print_json(metrics or {})
            return 0
        if args.verb == "evaluate":
            metrics = evaluate(checkpoint=args.checkpoint, data=args.data)
            if args.json:
                print_json(metrics)
            else:
                for k, v in metrics.items():
                    print(f"{k:>24s}  {v:.6g}" if isinstance(v, float) else f"{k:>24s}  {v}")
            return 0
        if args.verb == "predict":
            result = predict(checkpoint=args.checkpoint, inputs=list(args.inputs), out=args.out)
            if args.out and result is not None and not Path(args.out).exists():
                _atomic_write_bytes(Path(args.out), (json.dumps(result, default=_json_default) + "\n").encode())
            print_json(result)
            return 0
        handler = (extra_verbs or {})[args.verb][1]
        result = handler(args)
        if result is not None:
            print_json(result)
        return 0

    try:
        return run_cli_guarded(body)
    finally:
        _QUIET = False
