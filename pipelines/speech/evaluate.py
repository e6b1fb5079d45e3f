"""Speech evaluation and prediction (spoken-digit classification).

Stable metric keys (:data:`METRIC_KEYS`): ``accuracy`` (fraction of test clips whose digit
is right), ``macro_f1`` (unweighted mean F1 over the 10 digits), ``mcc`` (multi-class
Matthews correlation), ``loss`` (mean cross-entropy, nats), ``n`` (clips scored), ``split``
(``standard`` or ``loso:<speaker>``, the checkpoint's protocol), ``accuracy_by_speaker``
(``{speaker: accuracy}``) and ``confusion`` (10 x 10, rows = true digit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from longstream.pipelines.common import (
    DEMOS_DIR,
    UserError,
    accuracy,
    as_file,
    check_finite_output,
    check_finite_result,
    confusion_matrix,
    dumps_strict,
    macro_f1,
    mcc,
    resolve_out,
    write_out,
)

from .ctc_model import CTCDigitModel
from .data import AUDIO_SUFFIXES, collate, crop, load_split, read_audio, trim_silence

METRIC_KEYS = ["accuracy", "macro_f1", "mcc", "loss", "n", "split", "accuracy_by_speaker", "confusion"]
DEFAULT_CHECKPOINT = "speech/mamba-digits"
EXAMPLE_INPUTS = [str(DEMOS_DIR / "speech" / "seven.wav"), str(DEMOS_DIR / "speech" / "three.flac")]
"""Two digits spoken by a speech synthesiser (not FSDD: no dataset copy ships); see demos/speech/README.md."""
EVAL_MAX_SECONDS = 10.0  # evaluation clips are cropped to this (FSDD's longest is 2.3 s)


def make_extreme(spec: str, value: float, tmp_dir: Path) -> str:
    """Contract hook: a float64 WAV copy of ``spec`` whose middle sample is ``value``."""
    import soundfile as sf

    data, sr = sf.read(spec, dtype="float64", always_2d=True)
    data[len(data) // 2, 0] = value
    out = Path(tmp_dir) / f"{Path(spec).stem}_extreme.wav"
    sf.write(str(out), data, sr, subtype="DOUBLE")
    return str(out)


@torch.no_grad()
def evaluate_waves(model: torch.nn.Module, waves: list[torch.Tensor], y: torch.Tensor, *, speakers: list[str] | None = None,
                   batch_size: int = 64, device: torch.device | str = "cpu", source: str = "the test set") -> dict[str, Any]:
    """Metrics of ``model`` on mono waveforms ``waves`` with digit labels ``y`` (see :data:`METRIC_KEYS`).

    Clips are batched by length (less padding; masking makes the result independent of it).
    """
    was = model.training
    model.eval()
    waves = crop(waves, int(EVAL_MAX_SECONDS * model.cfg.data.sample_rate))
    profiles = model.speaker_profiles(waves, speakers)  # norm=speaker: each speaker's own clips
    order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
    pred = torch.empty(len(waves), dtype=torch.long)
    loss_sum = 0.0
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        x, lengths = collate([waves[i] for i in idx])
        logits = model(x.to(device), lengths, None if profiles is None else profiles[idx].to(device))
        check_finite_output(logits, source=[f"{source}: clip {i + 1}" for i in idx], model_input=x, what="digit scores")
        loss_sum += F.cross_entropy(logits.float(), y[idx].to(device), reduction="sum").item()
        pred[idx] = logits.argmax(-1).cpu()
    model.train(was)
    out: dict[str, Any] = {"accuracy": accuracy(y, pred), "macro_f1": macro_f1(y, pred), "mcc": mcc(y, pred),
                           "loss": loss_sum / len(waves), "n": len(waves),
                           "split": getattr(model.cfg.data, "split", "standard")}
    spk = speakers or []
    out["accuracy_by_speaker"] = {s: accuracy(y[m], pred[m]) for s in sorted(set(spk))
                                  for m in [torch.tensor([t == s for t in spk])]}
    out["confusion"] = confusion_matrix(y, pred, n_classes=model.cfg.model.n_classes)
    return check_finite_result(out, what="speech metrics")


def evaluate(checkpoint: str, data: str | None = None) -> dict[str, Any]:
    """Metrics of ``checkpoint`` on the test clips of its split, read from ``data`` (an FSDD
    ``recordings/`` folder; default: the registered dataset under ``$LONGSTREAM_DATA``)."""
    from .model import from_pretrained

    model = from_pretrained(checkpoint)
    if isinstance(model, CTCDigitModel):  # long-stream CTC recogniser (ctc_evaluate.py)
        from .ctc_evaluate import evaluate_loaded

        return evaluate_loaded(model, data)
    waves, y, clips = load_split(model.cfg.data, "test", root=data)
    return evaluate_waves(model, waves, y, speakers=[c.speaker for c in clips],
                          batch_size=model.cfg.train.eval_batch_size, source=data or "the FSDD test split")


def read_input(spec: str, sample_rate: int, display: str | None = None) -> torch.Tensor:
    """An audio file (any format libsndfile or PyAV reads, any rate) -> mono ``(t,)`` at ``sample_rate``."""
    p = as_file(spec)
    if p is None:
        raise UserError(f"input {spec!r} is not an existing audio file; give a path to a "
                        f"{'/'.join(s[1:].upper() for s in AUDIO_SUFFIXES[:4])} file")
    return read_audio(p, sample_rate, display=display)


@torch.no_grad()
def classify(model: torch.nn.Module, waves: list[torch.Tensor], names: list[str], top_k: int = 3,
             trim: bool = True) -> list[dict[str, Any]]:
    """``[{"input", "digit", "confidence", "top": [{"digit", "p"}], "probs", "seconds"}]`` for mono waves.

    ``trim`` cuts leading / trailing silence first (:func:`.data.trim_silence`), as the FSDD
    training clips are cut; ``seconds`` is the duration before trimming.
    """
    from .model import predict_proba

    sr = model.cfg.data.sample_rate
    seconds = [len(w) / sr for w in waves]
    if trim:
        waves = [trim_silence(w, sr) for w in waves]
    for name, w in zip(names, waves):
        if model.num_frames(len(w)) < 1:
            raise UserError(f"audio file {name}: {len(w) / sr * 1000:.0f} ms is too short for one frame; "
                            "give a longer recording")
    probs = predict_proba(model, waves)
    x, _ = collate(waves)
    check_finite_output(probs, source=[f"audio file {n}" for n in names], model_input=x, what="digit probabilities")
    res = []
    for name, sec, p in zip(names, seconds, probs):
        top = torch.topk(p, min(top_k, len(p)))
        res.append({"input": name, "digit": int(p.argmax()), "confidence": round(float(p.max()), 4),
                    "top": [{"digit": int(i), "p": round(float(v), 4)} for v, i in zip(top.values, top.indices)],
                    "probs": [round(float(v), 4) for v in p], "seconds": round(sec, 3)})
    return res


def predict(checkpoint: str, inputs: list[str], out: str | None = None) -> list[dict[str, Any]]:
    """The spoken digit of each audio file, with its top-3 probabilities (also written to ``out`` as JSON)."""
    from .model import from_pretrained

    out_file = resolve_out(out)[0] if out else None  # the shared --out rule, before any work
    model = from_pretrained(checkpoint)
    if isinstance(model, CTCDigitModel):  # long-stream CTC recogniser: a transcript per file
        from .transcribe import predict_ctc

        return predict_ctc(model, inputs, out_file)
    sr = model.cfg.data.sample_rate
    waves = [read_input(s, sr) for s in inputs]
    results = classify(model, waves, list(inputs))
    if out_file is not None:
        write_out(out_file, dumps_strict(results, indent=2) + "\n")
    return results
