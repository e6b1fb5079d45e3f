"""Speech benchmark (issue 14, task 1): spoken-digit accuracy on FSDD, neural models beside an
MFCC + SVM baseline trained and scored in the same run.

Writes ``benchmarks/results/speech.json`` and ``.md``:

- ``standard`` split (takes 0-4 of every speaker and digit = the 300 test clips): the MFCC + SVM
  baseline (``pipelines/speech/baselines.py``, trained here on the 2,700 other clips) and the
  shipped checkpoints (``speech/mamba-digits``, ``speech/s4d-raw-digits``) scored by the
  pipeline's own ``evaluate``;
- leave-one-speaker-out, all six folds: per fold the baseline and each model trained here from
  the ``loso`` / ``loso-raw`` presets (``--data.split loso:<speaker>``) on the five other
  speakers and tested on every clip of the sixth; the mean over folds.

Each finished fold is saved to the JSON at once, so an interrupted run continues where it
stopped (``--fresh`` starts over). Threads are pinned (``--threads``, default 1).

    nice python benchmarks/speech.py                       # everything
    nice python benchmarks/speech.py --models baseline mamba --folds theo jackson
    python benchmarks/speech.py --render                   # rewrite the .md from the .json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

_THREADS = "1"
for _i, _a in enumerate(sys.argv):  # pin BLAS / OpenMP threads before numpy and torch load
    if _a == "--threads" and _i + 1 < len(sys.argv):
        _THREADS = sys.argv[_i + 1]
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = _THREADS

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
MODELS = {"mamba": ("loso", "log-mel + Mamba"), "raw": ("loso-raw", "raw waveform + S4D")}
SHIPPED = {"mamba": "speech/mamba-digits", "raw": "speech/s4d-raw-digits"}
BASELINES = {"baseline": "MFCC + SVM", "baseline-spk": "MFCC + SVM, per-speaker standardised"}
REFERENCES = [
    ("S4 (raw waveform, 16 kHz)", "Speech Commands SC10 (10 words), raw audio", "98.3%",
     "Gu, Goel, Re, Efficiently Modeling Long Sequences with Structured State Spaces, ICLR 2022"),
    ("SpeechBrain (Speech Commands recipe)", "Speech Commands v12 (12 classes)", "98.1%",
     "SpeechBrain, recipes/Google-speech-commands"),
    ("(none found)", "FSDD, state-space models", "-", "no published SSM number on FSDD was found; ours are the reference"),
]


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _save(res: dict, path: Path) -> None:
    from longstream.pipelines.common import dumps_strict

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps_strict(res, indent=2) + "\n")


def baseline(split: str, speaker_norm: bool = False) -> dict:
    from longstream.pipelines.speech import baselines as B
    from longstream.pipelines.speech import config as C
    from longstream.pipelines.speech import data as D

    cfg = C.DataConfig(split=split)
    t = time.time()
    tr, te = D.load_split(cfg, "train"), D.load_split(cfg, "test")
    spk = ([c.speaker for c in tr[2]], [c.speaker for c in te[2]]) if speaker_norm else None
    r = B.fit_score(tr[:2], te[:2], cfg.sample_rate, speakers=spk)
    r["seconds"] = round(time.time() - t, 1)
    return r


def train_fold(model: str, speaker: str, runs: Path, steps: int) -> dict:
    from longstream.pipelines.common import apply_overrides, quiet
    from longstream.pipelines.speech import config as C
    from longstream.pipelines.speech.train import train

    preset = MODELS[model][0]
    cfg = C.PRESETS[preset]()
    overrides = {"data.split": f"loso:{speaker}", "train.threads": int(_THREADS)}
    if steps:
        overrides["train.steps"] = steps
    cfg = apply_overrides(cfg, {k: str(v) for k, v in overrides.items()})
    t = time.time()
    with quiet(True):
        m = train(cfg, out_dir=runs / f"{model}-{speaker}", resume=(runs / f"{model}-{speaker}").exists(),
                  preset=preset)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": m["n"], "steps": m["steps"],
            "seconds": round(time.time() - t, 1)}


def evaluate_shipped(name: str) -> dict:
    from longstream.pipelines.speech.evaluate import evaluate

    t = time.time()
    m = evaluate(name)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": m["n"], "seconds": round(time.time() - t, 1)}


def render(res: dict) -> str:
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    L = ["# Speech benchmark: spoken digits (FSDD)", "",
         "Commands (each run adds the sections it ran to the JSON):", "",
         *[f"- `{c}`" for c in res.get("commands", [])], "", f"Machine: {res.get('machine', '')}.",
         *([f"Notes: {n}" for n in res.get("notes", [])]), "",
         "## Standard split (test = takes 0-4 of every speaker and digit, 300 clips)", "",
         "| model | accuracy | macro-F1 | n |", "|---|---|---|---|"]
    for key, label in [("baseline", "MFCC statistics + SVM (scikit-learn, trained in this run)"),
                       ("baseline-spk", "same, features standardised per speaker (no labels used)")] + \
            [(k, f"{MODELS[k][1]} (`{SHIPPED[k]}`)") for k in MODELS]:
        r = res.get("standard", {}).get(key)
        if r:
            L.append(f"| {label} | {pct(r.get('accuracy'))} | {pct(r.get('macro_f1'))} | {r.get('n', '-')} |")
    L += ["", "## Leave one speaker out (train on 5 speakers, test on all 500 clips of the 6th)", "",
          "| held-out speaker | " + " | ".join([*BASELINES.values()] + [MODELS[k][1] for k in MODELS]) + " |",
          "|---|" + "---|" * (len(BASELINES) + len(MODELS))]
    loso = res.get("loso", {})
    for spk in SPEAKERS:
        row = loso.get(spk, {})
        L.append(f"| {spk} | " + " | ".join(pct(row.get(k, {}).get("accuracy")) for k in [*BASELINES, *MODELS]) + " |")
    means = []
    for k in [*BASELINES, *MODELS]:
        accs = [loso[s][k]["accuracy"] for s in SPEAKERS if k in loso.get(s, {})]
        means.append(f"{pct(statistics.mean(accs))}" + ("" if len(accs) == 6 else f" ({len(accs)}/6 folds)")
                     if accs else "-")
    L.append("| **mean** | " + " | ".join(f"**{m}**" for m in means) + " |")
    L += ["", "## Published reference points (other data, for context)", "",
          "| model | data | accuracy | source |", "|---|---|---|---|"]
    L += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in REFERENCES]
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=[*BASELINES, *MODELS], choices=[*BASELINES, *MODELS])
    ap.add_argument("--folds", nargs="+", default=list(SPEAKERS), choices=SPEAKERS)
    ap.add_argument("--sections", nargs="+", default=["standard", "loso"], choices=["standard", "loso"])
    ap.add_argument("--steps", type=int, default=0, help="override train.steps of the fold trainings (0 = preset)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", default=str(REPO / "runs" / "speech-bench"), help="fold training dirs (resumable)")
    ap.add_argument("--out", default=str(RESULTS / "speech.json"))
    ap.add_argument("--fresh", action="store_true", help="ignore results already in --out")
    ap.add_argument("--render", action="store_true", help="only rewrite the .md from the .json")
    ap.add_argument("--merge", nargs="+", default=[], help="fold results of other --out files (runs of other "
                    "sections / models in parallel) into --out, then render")
    a = ap.parse_args(argv)
    out = Path(a.out)
    if a.merge:
        res = _load(out)
        for f in a.merge:
            other = _load(Path(f))
            for sec in ("standard", "loso"):
                for k, v in other.get(sec, {}).items():
                    if sec == "loso":
                        res.setdefault(sec, {}).setdefault(k, {}).update(v)
                    else:
                        res.setdefault(sec, {}).setdefault(k, v)
            for c in other.get("commands", []) + ([other["command"]] if "command" in other else []):
                if c not in res.setdefault("commands", []):
                    res["commands"].append(c)
        _save(res, out)
        a.render = True
    if a.render:
        out.with_suffix(".md").write_text(render(_load(out)))
        return 0
    torch.set_num_threads(a.threads)
    res = {} if a.fresh else _load(out)
    cmd = "python benchmarks/speech.py " + " ".join(argv if argv is not None else sys.argv[1:])
    res.setdefault("commands", [])
    if cmd not in res["commands"]:
        res["commands"].append(cmd)
    res["machine"] = f"{os.cpu_count()} CPUs, torch {torch.__version__}, {a.threads} thread(s)"
    if "standard" in a.sections:
        std = res.setdefault("standard", {})
        for k in a.models:
            if k in std:
                continue
            print(f"standard: {k}", flush=True)
            try:
                std[k] = (baseline("standard", k == "baseline-spk") if k in BASELINES
                          else evaluate_shipped(SHIPPED[k]))
            except Exception as e:  # a missing checkpoint is recorded, the rest still runs
                std[k] = {"skipped": f"{type(e).__name__}: {e}"}
            _save(res, out)
    if "loso" in a.sections:
        loso = res.setdefault("loso", {})
        for spk in a.folds:
            for k in a.models:
                if k in loso.get(spk, {}):
                    continue
                print(f"loso {spk}: {k}", flush=True)
                r = (baseline(f"loso:{spk}", k == "baseline-spk") if k in BASELINES
                     else train_fold(k, spk, Path(a.runs), a.steps))
                loso.setdefault(spk, {})[k] = r
                print(f"  accuracy {r['accuracy']:.4f} ({r['seconds']} s)", flush=True)
                _save(res, out)
    out.with_suffix(".md").write_text(render(res))
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
