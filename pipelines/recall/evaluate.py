"""Recall evaluation: accuracy on a length x depth grid, state bytes, effective length.

Stable metric keys (also stored in shipped checkpoints' ``config.json["metrics"]``):

- ``accuracy`` — in-distribution accuracy (at the training length, mean over depths).
  Needle tasks (passkey, multikey, vartrack) score an example as correct only if every
  digit is right (exact match); MQAR / selective copying score every queried position;
  induction scores its single answer.
- ``acc_<m>x`` — accuracy at ``m`` times the training length (m in ``eval.multipliers``,
  default 1, 4, 16, 64; lengths above ``eval.max_len`` are skipped).
- ``effective_length`` — the longest evaluated length L such that every evaluated
  length <= L keeps >= 90% of the in-distribution accuracy; ``effective_multiplier`` = it
  divided by the training length.
- ``state_bytes`` — bytes of streaming state (backbone state + memory) held per sequence
  after the longest evaluated input; ``state_bytes_<m>x`` per length.
- ``n`` — examples evaluated; ``train_len``; ``grid`` — nested ``{length: {depth: acc}}``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from longstream.pipelines.common import UserError, check_finite_result, dumps_strict, progress

from .config import Config, EvalConfig
from .data import DEPTH_TASKS, EXACT_MATCH_TASKS, SEED_MAX, generate

METRIC_KEYS = ["accuracy", "effective_length", "effective_multiplier", "state_bytes", "n", "train_len"]
EXAMPLE_INPUTS = ["1x@0.5", "4x@0.1#3"]
DEFAULT_CHECKPOINT = "recall/hybrid-mqar"


def make_extreme(spec: str, value: float, tmp_dir: Path) -> str:
    """Contract hook: ``spec`` (``LENGTH[@DEPTH][#SEED]``) with its seed, the one free number, set to ``int(value)``."""
    return f"{spec.partition('#')[0]}#{int(value)}"


def score(preds: Tensor, targets: Tensor, task: str) -> tuple[float, int]:
    """(sum of per-unit correctness, units): examples for exact-match tasks, positions otherwise."""
    sel = targets != -100
    hit = (preds == targets) & sel
    if task in EXACT_MATCH_TASKS:
        ok = (hit.sum(-1) == sel.sum(-1)) & (sel.sum(-1) > 0)
        return float(ok.sum()), int(targets.shape[0])
    return float(hit.sum()), int(sel.sum())


@torch.no_grad()
def accuracy_on(model, tokens: Tensor, targets: Tensor, *, batch_size: int = 16,
                segment_len: int | None = None) -> tuple[float, int]:
    """Accuracy of ``model`` on one set of examples, and per-row state bytes at the end."""
    task = model.cfg.data.task
    got, units, nbytes = 0.0, 0, 0
    for i in range(0, tokens.shape[0], batch_size):
        p, nbytes = model.predict_at(tokens[i : i + batch_size], targets[i : i + batch_size], segment_len=segment_len)
        a, u = score(p, targets[i : i + batch_size], task)
        got, units = got + a, units + u
    return got / max(units, 1), nbytes


def eval_data(cfg: Config):
    """The DataConfig evaluation uses: ``cfg.data`` with ``cfg.eval.data_overrides`` applied."""
    import dataclasses

    return dataclasses.replace(cfg.data, **cfg.eval.data_overrides) if cfg.eval.data_overrides else cfg.data


def grid_lengths(cfg: Config, ev: EvalConfig) -> list[tuple[int, int]]:
    """``[(multiplier, length)]`` evaluated for this config."""
    return [(m, m * cfg.data.seq_len) for m in ev.multipliers if m * cfg.data.seq_len <= ev.max_len]


@torch.no_grad()
def evaluate_model(model, ev: EvalConfig | None = None, *, show_progress: bool = True) -> dict[str, Any]:
    """The full metric dict of the module docstring for an in-memory model."""
    was = model.training
    model.eval()
    cfg: Config = model.cfg
    ev = ev or cfg.eval
    if ev.data_overrides:  # e.g. train on dense multi-needle data, evaluate on single needles
        import copy
        import dataclasses

        cfg = copy.copy(cfg)
        cfg.data = dataclasses.replace(cfg.data, **ev.data_overrides)
    task = cfg.data.task
    depths: list[float | None] = list(ev.depths) if task in DEPTH_TASKS else [None]
    cells = grid_lengths(cfg, ev)
    if not cells:
        raise UserError(
            f"no evaluation length <= max_len={ev.max_len} (training length {cfg.data.seq_len} x multipliers "
            f"{list(ev.multipliers)}); raise max_len: \"max_len\" in the evaluate --data JSON, or "
            "--eval.max_len when training"
        )
    grid: dict[str, dict[str, float]] = {}
    per_len: dict[int, float] = {}
    bytes_at: dict[int, int] = {}
    n = 0
    t0 = time.time()
    bar = progress(total=len(cells) * len(depths), desc="recall eval") if show_progress else None
    for m, L in cells:
        accs = []
        for j, d in enumerate(depths):
            seed = ev.seed + 7919 * m + 104_729 * j
            x, y = generate(cfg.data, ev.n_per_cell, seq_len=L, depth=d, seed=seed)
            bs = max(1, min(ev.batch_size, (ev.batch_size * 4096) // L)) if L > 4096 else ev.batch_size
            seg = cfg.model.segment_len or ev.segment_len or min(L, 4096)
            acc, nb = accuracy_on(model, x, y, batch_size=bs, segment_len=seg)
            grid.setdefault(str(L), {})["any" if d is None else f"{d:g}"] = round(acc, 4)
            accs.append(acc)
            bytes_at[m] = nb
            n += ev.n_per_cell
            if bar is not None:
                bar.update(1)
        per_len[m] = sum(accs) / len(accs)
    if bar is not None:
        bar.close()
    model.train(was)
    base = per_len[cells[0][0]]
    eff = 0
    for m, L in cells:
        if per_len[m] >= 0.9 * base and base > 0:
            eff = L
        else:
            break
    out: dict[str, Any] = {
        "accuracy": round(base, 4),
        "effective_length": eff,
        "effective_multiplier": round(eff / cfg.data.seq_len, 3),
        "state_bytes": bytes_at[cells[-1][0]],
        "n": n,
        "train_len": cfg.data.seq_len,
    }
    for m, _ in cells:
        out[f"acc_{m}x"] = round(per_len[m], 4)
    for m, _ in cells:
        out[f"state_bytes_{m}x"] = bytes_at[m]
    out["task"] = task
    out["grid"] = grid
    out["eval_seconds"] = round(time.time() - t0, 1)
    return check_finite_result(out, what="recall metrics")


_DATA_EXAMPLE = '{"multipliers": [1, 4], "n_per_cell": 16}'


def check_eval_config(ev: EvalConfig, where: str) -> EvalConfig:
    """Refuse evaluation settings that would give an empty or meaningless result.

    ``where`` names the source in the message (``--data FILE`` or ``--eval``)."""
    from .config import DataConfig

    def bad(msg: str) -> UserError:
        return UserError(f"{where}: {msg}")

    if ev.n_per_cell < 1:
        raise bad(f"n_per_cell must be >= 1 (examples per length x depth cell), got {ev.n_per_cell}")
    if ev.batch_size < 1:
        raise bad(f"batch_size must be >= 1, got {ev.batch_size}")
    if not ev.multipliers or any(m < 1 for m in ev.multipliers):
        raise bad(f"multipliers must be a non-empty list of integers >= 1 (x training length), got {ev.multipliers}")
    if not ev.depths or any(not 0 <= d <= 1 for d in ev.depths):
        raise bad(f"depths must be a non-empty list of numbers in [0, 1], got {ev.depths}")
    if ev.max_len < 1:
        raise bad(f"max_len must be >= 1, got {ev.max_len}")
    if ev.segment_len < 0:
        raise bad(f"segment_len must be >= 0 (0 = the model's), got {ev.segment_len}")
    import dataclasses

    known = {f.name for f in dataclasses.fields(DataConfig)}
    unknown = set(ev.data_overrides) - known
    if unknown:
        raise bad(f"data_overrides has unknown DataConfig field(s) {sorted(unknown)}; valid: {sorted(known)}")
    return ev


def _eval_config_from_file(base: EvalConfig, data: str) -> EvalConfig:
    """``--data`` for recall is a JSON file of EvalConfig overrides (the data are generated)."""
    from longstream.pipelines.common import as_file, read_json_spec

    if as_file(data, what="--data") is None:
        raise UserError(f"--data {data}: not a file; recall data are generated, pass a JSON file of eval "
                        f"overrides like {_DATA_EXAMPLE}")
    ev = read_json_spec(data, EvalConfig, base=base, what="--data", example=_DATA_EXAMPLE)
    return check_eval_config(ev, f"--data {data}")


def evaluate(checkpoint: str, data: str | None = None) -> dict[str, Any]:
    """Metrics of ``checkpoint`` on its generated task (``data``: optional JSON of eval overrides)."""
    from .model import from_pretrained

    ev = None if data is None else _eval_config_from_file(EvalConfig(), data)  # check the file first
    model = from_pretrained(checkpoint)
    if data is not None:
        ev = _eval_config_from_file(model.cfg.eval, data)
    return evaluate_model(model, ev)


_SPEC = re.compile(r"^(?P<len>\d+)(?P<x>x?)(?:@(?P<depth>[0-9.]+))?(?:#(?P<seed>\d+))?$")


def parse_spec(spec: str, cfg: Config) -> tuple[int, float | None, int]:
    """``"<length>[@depth][#seed]"`` or ``"<m>x[@depth][#seed]"`` -> (length, depth, seed)."""
    m = _SPEC.match(spec.strip())
    if not m:
        from longstream.pipelines.common import as_file

        kind = "is a file, but recall inputs are not files" if as_file(spec) is not None else "is not a spec"
        raise UserError(f"input {spec!r} {kind}: use LENGTH[@DEPTH][#SEED] or MULTIPLIERx[@DEPTH][#SEED], "
                        "e.g. 4x@0.5#1 (the examples are generated)")
    L = int(m["len"]) * (cfg.data.seq_len if m["x"] else 1)
    if L < 8 or L > 1_048_576:
        raise UserError(f"input {spec!r}: length {L} out of range 8..1048576")
    try:
        depth = float(m["depth"]) if m["depth"] else None
    except ValueError:
        raise UserError(f"input {spec!r}: depth {m['depth']!r} is not a number; use e.g. @0.5") from None
    if depth is not None and not 0 <= depth <= 1:
        raise UserError(f"input {spec!r}: depth must be in [0, 1]")
    seed = int(m["seed"] or 0)
    if seed > SEED_MAX:
        raise UserError(f"input {spec!r}: seed {seed} is out of range; use a #SEED from 0 to {SEED_MAX}")
    return L, depth, seed


@torch.no_grad()
def predict_one(model, length: int, depth: float | None, seed: int) -> dict[str, Any]:
    """Generate one example, run the model, and compare prediction with target."""
    cfg = model.cfg
    x, y = generate(eval_data(cfg), 1, seq_len=length, depth=depth if cfg.data.task in DEPTH_TASKS else None,
                    seed=seed)
    p, nb = model.predict_at(x, y)
    sel = y[0] != -100
    tgt, pr = y[0][sel].tolist(), p[0][sel].tolist()
    a, u = score(p, y, cfg.data.task)
    pos = sel.nonzero().squeeze(-1).tolist()
    return {
        "task": cfg.data.task,
        "length": length,
        "depth": depth,
        "seed": seed,
        "positions": pos[:64],
        "target": tgt[:64],
        "prediction": pr[:64],
        "correct": a / max(u, 1),
        "state_bytes": nb,
    }


def predict(checkpoint: str, inputs: list[str], out: str | None = None) -> list[dict[str, Any]]:
    """For each ``LENGTH[@DEPTH][#SEED]`` spec: prediction vs target on a generated example."""
    from longstream.pipelines.common import resolve_out, write_out

    from .model import from_pretrained

    out_file = resolve_out(out)[0] if out else None  # the shared --out rule, before any work
    model = from_pretrained(checkpoint)
    results = [predict_one(model, *parse_spec(s, model.cfg)) | {"input": s} for s in inputs]
    if out_file is not None:
        write_out(out_file, dumps_strict(results, indent=2) + "\n")
    return results
