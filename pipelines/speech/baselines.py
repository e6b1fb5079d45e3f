"""A classical baseline: MFCC statistics + a scikit-learn classifier.

Each clip becomes one fixed-length vector — mean and standard deviation over time of 20
MFCCs (``torchaudio.transforms.MFCC``, 25 ms windows, 10 ms hop, 40 mel bands) and of their
first differences (deltas), plus the clip duration — scaled by ``StandardScaler`` and fed to
an RBF support-vector machine (``sklearn.svm.SVC``). This is the usual "MFCC + SVM"
reference for spoken-digit datasets; it is trained and scored in the same run as the neural
models (``benchmarks/speech.py``), with per-clip features as they are or standardised per speaker.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from longstream.pipelines.common import accuracy, macro_f1


def mfcc_stats(waves: list[torch.Tensor], sample_rate: int = 8000, n_mfcc: int = 20) -> np.ndarray:
    """``(N, 4 * n_mfcc + 1)`` features: mean / std of MFCCs and deltas, and log duration."""
    import torchaudio.transforms as AT

    win, hop = int(0.025 * sample_rate), int(0.010 * sample_rate)
    mfcc = AT.MFCC(sample_rate=sample_rate, n_mfcc=n_mfcc,
                   melkwargs={"n_fft": win, "win_length": win, "hop_length": hop, "n_mels": 40, "center": False,
                              "f_min": 20.0})
    deltas = AT.ComputeDeltas(win_length=5)
    rows = []
    with torch.no_grad():
        for w in waves:
            if len(w) < win:
                w = torch.cat([w, w.new_zeros(win - len(w))])
            c = mfcc(w.float())  # (n_mfcc, l)
            d = deltas(c[None])[0] if c.shape[1] > 1 else torch.zeros_like(c)
            rows.append(torch.cat([c.mean(1), c.std(1, unbiased=False), d.mean(1), d.std(1, unbiased=False),
                                   torch.tensor([np.log(len(w) / sample_rate)])]).numpy())
    return np.stack(rows).astype(np.float64)


def speaker_standardize(x: np.ndarray, speakers: list[str]) -> np.ndarray:
    """Each speaker's rows of ``x`` centred and scaled by that speaker's own mean and std
    (speaker-level normalisation of the clip statistics; no labels are used)."""
    out = np.empty_like(x)
    spk = np.asarray(speakers)
    for s in np.unique(spk):
        i = spk == s
        out[i] = (x[i] - x[i].mean(0)) / (x[i].std(0) + 1e-6)
    return out


def make_classifier(c: float = 10.0):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return make_pipeline(StandardScaler(), SVC(C=c, gamma="scale", kernel="rbf"))


def fit_score(train: tuple[list[torch.Tensor], torch.Tensor], test: tuple[list[torch.Tensor], torch.Tensor],
              sample_rate: int = 8000, c: float = 10.0,
              speakers: tuple[list[str], list[str]] | None = None) -> dict[str, Any]:
    """Train the MFCC + SVM baseline on ``train`` ``(waves, labels)`` and score it on ``test``.

    ``speakers`` (train speakers, test speakers): standardise the features per speaker first
    (:func:`speaker_standardize`), the baseline's counterpart of ``--model.norm speaker``."""
    clf = make_classifier(c)
    x_tr, x_te = mfcc_stats(train[0], sample_rate), mfcc_stats(test[0], sample_rate)
    if speakers is not None:
        x_tr, x_te = speaker_standardize(x_tr, speakers[0]), speaker_standardize(x_te, speakers[1])
    clf.fit(x_tr, train[1].numpy())
    pred = torch.as_tensor(clf.predict(x_te))
    return {"accuracy": accuracy(test[1], pred), "macro_f1": macro_f1(test[1], pred), "n": len(test[1])}
