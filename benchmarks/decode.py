"""Decode benchmark: tokens/s of a mamba-130m-shaped LanguageModel on CPU against llama.cpp.

A ``LanguageModel`` of the state-spaces/mamba-130m shape (d_model 768, 24 Mamba layers,
vocab 50,280, random weights, float32) is built once; for each thread count (pinned with
``torch.set_num_threads``) it measures, interleaved in one process (min time over
``--repeats``; the machine is shared):

- decode tokens/s of ``generate`` after a short prompt (prefill excluded), for
  ``base`` (the pure-PyTorch ``step``: ~30 small ops per layer and torch's GEMVs), ``fp32``
  (``LanguageModel.step``: the compiled ``lm_step``, the whole layer stack in one call on the
  decode pool, then the pooled GEMV of the head), ``fp32-loop`` (the per-layer loop of compiled
  calls it replaced: one-row RMSNorm, pooled GEMVs for in_proj / out_proj, the one-call Mamba
  step), and the opt-in
  low-precision decode weights ``int8`` / ``bf16`` (:meth:`LanguageModel.quantize`); and two
  attributions: ``fp32-4k`` (the same weights left on 4 KB pages: a second model whose
  first decode step skips :func:`~longstream.backbones.hugepages.move_to_hugepages`) and
  ``int8-avx2`` (the int8 GEMV forced onto its AVX2 code, ``decode_isa(1)``);
- prefill tokens/s (one ``forward`` of the prompt, head on the last token) at 512 and 2,048;
- a streaming ``step`` with torch's default thread count against one thread (the 130m LM and
  a d_model 256 Mamba layer), which must not be slower;
- llama.cpp's own decode (``llama-bench -p 0 -n TOKENS -r 1``, f32 and bf16 GGUFs) inside the same
  interleaved loop when ``benchmarks/llamacpp.py`` has built it, since this machine's memory
  bandwidth drifts by 10-25% over minutes;
- the logit error of each low-precision mode against float32 (one step after a 64-token
  prefill: max |diff|, relative L2, and greedy-token agreement over a teacher-forced run).

llama.cpp's figures come from ``benchmarks/results/llamacpp.json`` when it exists, written by
``benchmarks/llamacpp.py`` (llama.cpp built from the sources of the ``llama-cpp-python`` 0.3.36
sdist, the same weights converted by its ``convert_hf_to_gguf.py``, ``llama-bench`` at 1 and 2
threads, on the CPU recorded there). Without it they are the figures of issue 12, measured on
a different machine (an Intel Xeon): float32 decode 21.8 tok/s at one thread, 39.3 at two; bf16
33.8 at one; prefill 196 tok/s at 512 and 2,048 tokens.

Writes ``benchmarks/results/decode.json`` and ``.md``. Benchmarks are not tests. Usage::

    nice python benchmarks/decode.py                      # ~3-5 min
    nice python benchmarks/decode.py --threads 1 --tokens 32 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from llamacpp import CACHE as LLAMA_CACHE  # noqa: E402  (benchmarks/llamacpp.py: where it builds llama-bench)
from timing import cpu_name, interleaved  # noqa: E402  (benchmarks/timing.py)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from longstream.backbones.hugepages import move_to_hugepages  # noqa: E402
from longstream.backbones.lm import LanguageModel  # noqa: E402
from longstream.backbones.mamba import Mamba  # noqa: E402
from longstream.backbones.ops import cpu_kernels  # noqa: E402
from longstream.backbones.presets import mamba_130m  # noqa: E402

LLAMA_CPP_JSON = REPO / "benchmarks" / "results" / "llamacpp.json"
LLAMA_CPP_ISSUE = {  # tok/s from issue 12, measured on a different machine (an Intel Xeon)
    "decode_fp32": {1: 21.8, 2: 39.3},
    "decode_bf16": {1: 33.8},
    "prefill": {512: 196.0, 2048: 196.0},
    "source": "cited from issue 12 (measured on an Intel Xeon, not on this machine)",
}


def load_llama_cpp(path: Path = LLAMA_CPP_JSON) -> dict:
    """llama.cpp's tok/s as ``{"decode_fp32": {threads: x}, "decode_bf16": {...}, "prefill": {L: x at
    1 thread}, "prefill_by_threads": {L: {threads: x}}, "source": ...}``: from ``benchmarks/llamacpp.py``'s
    JSON when it exists (measured with llama-bench on ``cpu``), else the issue-12 figures."""
    if not path.exists():
        return dict(LLAMA_CPP_ISSUE)
    r = json.loads(path.read_text())
    tok = r["tok_s"]

    def by_threads(d: dict) -> dict:
        return {int(k): float(v) for k, v in d.items()}

    out = {"decode_fp32": by_threads(tok.get("fp32", {}).get("decode", {})),
           "decode_bf16": by_threads(tok.get("bf16", {}).get("decode", {})),
           "prefill_by_threads": {int(L): by_threads(v) for L, v in tok.get("fp32", {}).get("prefill", {}).items()},
           "source": f"benchmarks/results/llamacpp.json (llama-bench on {r['meta']['cpu']}, {r['meta']['date']}, "
                     f"load {' '.join(r['meta']['loadavg_start'])})"}
    out["prefill"] = {L: v.get(1, max(v.values())) for L, v in out["prefill_by_threads"].items()}
    return out


LLAMA_CPP = load_llama_cpp()
VOCAB = 50280
MODES = ("base", "fp32-loop", "fp32", "fp32-4k", "int8", "int8-avx2", "bf16")
_FUSED_STEP = Mamba._step_fused
_ROWS_OP = cpu_kernels.has_op("rms_norm_rows")  # real availability, before set_mode toggles it
_GEMV_OP = cpu_kernels.has_op("decode_linear")
_LM_STEP_OP = cpu_kernels.has_op("lm_step")


def set_mode(lm: LanguageModel, mode: str) -> None:
    """``base``: the pure-PyTorch step (compiled step and row-norm kernels switched off);
    ``fp32-loop``: the per-layer loop of compiled calls (``lm_step`` switched off); ``fp32`` / ``int8`` /
    ``bf16``: the one-call ``lm_step`` with float32 / low-precision projection weights."""
    fused = mode != "base"
    cpu_kernels._STATE["op:lm_step"] = fused and mode != "fp32-loop" and _LM_STEP_OP
    Mamba._step_fused = _FUSED_STEP if fused else (lambda *a, **k: False)  # type: ignore[method-assign]
    cpu_kernels._STATE["op:rms_norm_rows"] = fused and _ROWS_OP
    cpu_kernels._STATE["op:decode_linear"] = fused and _GEMV_OP
    lm.quantize(mode if mode in ("int8", "bf16") else None)


def decode_fn(lm: LanguageModel, mode: str, prompt: torch.Tensor, n: int, isa: int = 2) -> Callable[[], float]:
    """Seconds for n greedy ``lm.step`` tokens after the prompt, in ``mode``, with the decode GEMV on
    ``isa`` (2: AVX-512 where the CPU has it, the default; 1: AVX2)."""
    def run() -> float:
        set_mode(lm, mode)
        ops = cpu_kernels.ops() if cpu_kernels.has_op("decode_isa") else None
        if ops is not None:
            ops.decode_isa(isa)
        try:
            with torch.inference_mode():
                _, st = lm.backbone(lm.embedding(prompt), None)
                tok = prompt[:, -1]
                t0 = time.perf_counter()
                for _ in range(n):
                    logits, st = lm.step(tok, st)
                    tok = logits.argmax(-1)
                return time.perf_counter() - t0
        finally:
            if ops is not None:
                ops.decode_isa(2)

    return run


def attribution_fn(lm: LanguageModel, lm_4k: LanguageModel, mode: str, prompt: torch.Tensor, n: int) -> Callable[[], float]:
    """``fp32-4k``: ``fp32`` on the model kept on 4 KB pages; ``int8-avx2``: ``int8`` on the AVX2 GEMV."""
    if mode == "fp32-4k":
        return decode_fn(lm_4k, "fp32", prompt, n)
    return decode_fn(lm, "int8", prompt, n, isa=1)


def llama_bench_fn(kind: str, threads: int, n: int) -> Callable[[], float] | None:
    """One ``llama-bench -p 0 -n n -r 1`` decode run of the ``kind`` (f32 / bf16) GGUF that
    ``benchmarks/llamacpp.py`` built, as a self-timed function (seconds for n tokens from its
    ``avg_ts``), so it can be interleaved with ours; None when the binary or model is missing."""
    import subprocess

    exe, model = LLAMA_CACHE / "build" / "bin" / "llama-bench", LLAMA_CACHE / f"mamba130m-random-{kind}.gguf"
    if not (exe.exists() and model.exists()):
        return None

    def run() -> float:
        out = subprocess.run([str(exe), "-m", str(model), "-t", str(threads), "-p", "0", "-n", str(n), "-r", "1",
                              "-o", "json"], capture_output=True, text=True, check=True).stdout
        return n / float(json.loads(out)[0]["avg_ts"])

    return run


def prefill_fn(lm: LanguageModel, ids: torch.Tensor) -> Callable[[], float]:
    def run() -> float:
        set_mode(lm, "fp32")
        with torch.inference_mode():
            t0 = time.perf_counter()
            h, _ = lm.backbone(lm.embedding(ids), None)
            lm._head_last(h[:, -1])
            return time.perf_counter() - t0

    return run


def layer_step_fn(m: Mamba, n: int) -> Callable[[], float]:
    x = torch.randn(1, m.d_model)

    def run() -> float:
        st = m.init_state(1)
        with torch.inference_mode():
            t0 = time.perf_counter()
            for _ in range(n):
                _, st = m.step(x, st)
            return time.perf_counter() - t0

    return run


def logit_error(lm: LanguageModel, prompt: torch.Tensor, n: int) -> dict[str, dict]:
    """Low-precision modes vs float32: one step after the prompt, and greedy agreement over a
    teacher-forced continuation (the float32 tokens fed to both)."""
    out: dict[str, dict] = {}
    with torch.inference_mode():
        set_mode(lm, "fp32")
        _, st0 = lm.backbone(lm.embedding(prompt), None)
        toks, ref_logits, st, tok = [], [], st0, prompt[:, -1]
        for _ in range(n):
            lg, st = lm.step(tok, st)
            ref_logits.append(lg)
            tok = lg.argmax(-1)
            toks.append(tok)
        for mode in ("int8", "bf16"):
            set_mode(lm, mode)
            st, tok, agree, first = st0, prompt[:, -1], 0, None
            maxabs = rel = 0.0
            for i in range(n):
                lg, st = lm.step(tok, st)
                ref = ref_logits[i]
                if first is None:
                    first = {"max_abs": float((lg - ref).abs().max()), "rel_l2": float((lg - ref).norm() / ref.norm())}
                maxabs = max(maxabs, float((lg - ref).abs().max()))
                rel = max(rel, float((lg - ref).norm() / ref.norm()))
                agree += int((lg.argmax(-1) == ref.argmax(-1)).all())
                tok = toks[i]
            out[mode] = {"first_step": first, "max_abs_over_run": maxabs, "max_rel_l2_over_run": rel,
                         "greedy_agreement": agree / n, "steps": n,
                         "logit_std": float(torch.stack(ref_logits).std())}
    set_mode(lm, "fp32")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tokens", type=int, default=48, help="decoded tokens per timing")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prefill", type=int, nargs="*", default=[512, 2048])
    ap.add_argument("--prefill-threads", type=int, nargs="*", default=[1, 2], help="thread counts timed for prefill")
    ap.add_argument("--error-steps", type=int, default=32)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "decode"))
    args = ap.parse_args()

    default_threads = torch.get_num_threads()
    torch.manual_seed(0)
    lm = LanguageModel(VOCAB, mamba_130m()).eval()
    moved = move_to_hugepages(lm)  # what its first compiled decode step does; done before any timing
    lm._hugepages_tried = True
    torch.manual_seed(0)
    lm_4k = LanguageModel(VOCAB, mamba_130m()).eval()  # the same weights, left on 4 KB pages
    lm_4k._hugepages_tried = True
    nparams = sum(p.numel() for p in lm.parameters())
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, VOCAB, (1, 16), generator=g)
    res: dict = {"meta": {
        "model": "LanguageModel(mamba_130m preset: d_model 768, 24 x Mamba, vocab 50280), random weights",
        "params": nparams, "cpu": cpu_name(), "torch": torch.__version__, "kernels": cpu_kernels.available(),
        "torch_default_threads": default_threads, "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
        "decode_tokens": args.tokens, "repeats": args.repeats, "llama_cpp": LLAMA_CPP,
        "hugepage_bytes": moved, "thp": _thp_setting(),
    }, "decode": {}, "prefill": {}, "default_threads": {}}

    for nt in args.threads:
        torch.set_num_threads(nt)
        fns = {m: attribution_fn(lm, lm_4k, m, prompt, args.tokens) if m in ("fp32-4k", "int8-avx2")
               else decode_fn(lm, m, prompt, args.tokens) for m in MODES}
        for kind in ("f32", "bf16"):  # llama.cpp in the same interleaved loop (the box's bandwidth drifts)
            f = llama_bench_fn(kind, nt, args.tokens)
            if f is not None:
                fns[f"llama.cpp-{kind}"] = f
        r = interleaved(fns, args.repeats, self_timed=True)
        row = {m: {"tok_s": round(args.tokens / v["time_s"], 2), "times_s": v["times_s"]} for m, v in r.items()}
        if "llama.cpp-f32" in row and "llama.cpp-bf16" in row:
            row["interleaved"] = {
                "fp32_vs_llama_f32": round(row["fp32"]["tok_s"] / row["llama.cpp-f32"]["tok_s"], 3),
                "int8_vs_llama_bf16": round(row["int8"]["tok_s"] / row["llama.cpp-bf16"]["tok_s"], 3),
                "bf16_vs_llama_bf16": round(row["bf16"]["tok_s"] / row["llama.cpp-bf16"]["tok_s"], 3)}
        for m in MODES:
            ref = LLAMA_CPP["decode_bf16" if m in ("int8", "bf16") else "decode_fp32"].get(nt)
            if ref:
                row[m]["vs_llama_cpp"] = round(row[m]["tok_s"] / ref, 3)
        row["fp32_vs_base"] = round(row["fp32"]["tok_s"] / row["base"]["tok_s"], 3)
        row["fp32_vs_loop"] = round(row["fp32"]["tok_s"] / row["fp32-loop"]["tok_s"], 3)
        row["fp32_vs_4k"] = round(row["fp32"]["tok_s"] / row["fp32-4k"]["tok_s"], 3)
        row["int8_vs_avx2"] = round(row["int8"]["tok_s"] / row["int8-avx2"]["tok_s"], 3)
        row["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
        res["decode"][str(nt)] = row
        print(f"threads {nt} decode tok/s", {m: v["tok_s"] for m, v in row.items() if isinstance(v, dict) and "tok_s" in v},
              row.get("interleaved"), row["loadavg"], flush=True)
        for L in args.prefill if nt in args.prefill_threads else []:
            ids = torch.randint(0, VOCAB, (1, L), generator=g)
            p = interleaved({"fp32": prefill_fn(lm, ids)}, max(1, args.repeats - 1), self_timed=True)["fp32"]
            tps = L / p["time_s"]
            ref = LLAMA_CPP.get("prefill_by_threads", {}).get(L, {}).get(nt) or LLAMA_CPP["prefill"].get(L)
            res["prefill"].setdefault(str(nt), {})[str(L)] = {
                "tok_s": round(tps, 1), "llama_cpp": ref, "vs_llama_cpp": round(tps / ref, 3) if ref else None,
                "times_s": p["times_s"]}
            print(f"threads {nt} prefill {L}: {tps:.1f} tok/s", flush=True)

    # default thread count vs one thread for a streaming step (the LM and one small layer)
    torch.manual_seed(0)
    small = Mamba(256).eval()
    for name, fn_of in (("lm_130m_decode", lambda: decode_fn(lm, "fp32", prompt, args.tokens)),
                        ("mamba_d256_step", lambda: layer_step_fn(small, 256))):
        fn = fn_of()

        def at(nt: int, f: Callable[[], float] = fn) -> Callable[[], float]:
            def run() -> float:
                torch.set_num_threads(nt)
                return f()
            return run

        r = interleaved({"one_thread": at(1), "default": at(default_threads)}, args.repeats, self_timed=True)
        times = {k: v["time_s"] for k, v in r.items()}
        n = args.tokens if name.startswith("lm") else 256
        res["default_threads"][name] = {
            "tok_s_one_thread": round(n / times["one_thread"], 1), "tok_s_default": round(n / times["default"], 1),
            "default_over_one": round(times["one_thread"] / times["default"], 3), "default_threads": default_threads}
        print("default threads", name, res["default_threads"][name], flush=True)
    torch.set_num_threads(1)
    res["logit_error"] = logit_error(lm, torch.randint(0, VOCAB, (1, 64), generator=g), args.error_steps)
    print("logit error", json.dumps(res["logit_error"]), flush=True)
    res["meta"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(res, indent=1))
    Path(args.out + ".md").write_text(render(res))
    print("wrote", args.out + ".{json,md}")


def _thp_setting() -> str:
    try:
        return Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    except OSError:
        return "n/a"


def render(res: dict) -> str:
    m = res["meta"]
    lines = [
        "# Decode benchmark (mamba-130m shape, CPU)", "",
        f"{m['model']}; {m['params'] / 1e6:.0f}M parameters; CPU {m['cpu']}; torch {m['torch']}; "
        f"compiled kernels {m['kernels']}; load average {' '.join(m['loadavg_start'])} -> "
        f"{' '.join(m['loadavg_end'])}. Interleaved timing, min of {m['repeats']} runs of "
        f"{m['decode_tokens']} tokens. llama.cpp figures: {LLAMA_CPP['source']}. Weights on transparent huge "
        f"pages: {m.get('hugepage_bytes', 0) / 2**20:.0f} MiB (THP setting `{m.get('thp', 'n/a')}`).", "",
        "## Decode tokens/s", "",
        "| threads | base (PyTorch step) | fp32 per-layer loop | fp32 (`lm_step`) | fp32 / base | fp32 / loop "
        "| llama.cpp fp32 | fp32 / llama.cpp | int8 | bf16 | llama.cpp bf16 | int8 / llama.cpp bf16 | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    attrib = ["", "## Attribution: huge pages and the AVX-512 GEMV", "",
              "| threads | fp32 (huge pages) | fp32 on 4 KB pages | ratio | int8 (AVX-512) | int8 on AVX2 | ratio |",
              "|---|---|---|---|---|---|---|"]
    for nt, r in res["decode"].items():
        lf = LLAMA_CPP["decode_fp32"].get(int(nt))
        lb = LLAMA_CPP["decode_bf16"].get(int(nt))
        lines.append(
            f"| {nt} | {r['base']['tok_s']:.1f} | {r['fp32-loop']['tok_s']:.1f} | {r['fp32']['tok_s']:.1f} | "
            f"{r['fp32_vs_base']:.2f}x | {r['fp32_vs_loop']:.2f}x | "
            f"{lf if lf else '—'} | {r['fp32'].get('vs_llama_cpp', float('nan')):.2f}x | {r['int8']['tok_s']:.1f} | "
            f"{r['bf16']['tok_s']:.1f} | {lb if lb else '—'} | "
            f"{(str(r['int8']['vs_llama_cpp']) + 'x') if 'vs_llama_cpp' in r['int8'] else '—'} | "
            f"{' '.join(r['loadavg'])} |")
        if "fp32-4k" in r:
            attrib.append(f"| {nt} | {r['fp32']['tok_s']:.1f} | {r['fp32-4k']['tok_s']:.1f} | {r['fp32_vs_4k']:.2f}x | "
                          f"{r['int8']['tok_s']:.1f} | {r['int8-avx2']['tok_s']:.1f} | {r['int8_vs_avx2']:.2f}x |")
    lines += attrib
    inter = [(nt, r) for nt, r in res["decode"].items() if "interleaved" in r]
    if inter:
        lines += ["", "## llama.cpp interleaved in the same loop (`llama-bench -p 0 -n TOKENS -r 1` per repeat)", "",
                  "| threads | ours fp32 | llama.cpp fp32 | ratio | ours int8 | ours bf16 | llama.cpp bf16 | int8 ratio | bf16 ratio |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for nt, r in inter:
            i = r["interleaved"]
            lines.append(f"| {nt} | {r['fp32']['tok_s']:.1f} | {r['llama.cpp-f32']['tok_s']:.1f} | {i['fp32_vs_llama_f32']:.2f}x | "
                         f"{r['int8']['tok_s']:.1f} | {r['bf16']['tok_s']:.1f} | {r['llama.cpp-bf16']['tok_s']:.1f} | "
                         f"{i['int8_vs_llama_bf16']:.2f}x | {i['bf16_vs_llama_bf16']:.2f}x |")
    pre = ", ".join(f"{L}: {v:.0f}" for L, v in LLAMA_CPP["prefill"].items())
    lines += ["", f"## Prefill tokens/s (llama.cpp at 1 thread {pre}; bar 2x)", "",
              "| threads | length | tok/s | llama.cpp (same threads) | / llama.cpp |", "|---|---|---|---|---|"]
    for nt, rows in res["prefill"].items():
        for L, r in rows.items():
            v = r.get("vs_llama_cpp")
            lines.append(f"| {nt} | {L} | {r['tok_s']:.0f} | {r.get('llama_cpp') or '—'} | "
                         f"{f'{v:.2f}x' if v else '—'} |")
    lines += ["", f"## torch default threads ({m['torch_default_threads']}) vs one thread, streaming step", "",
              "| workload | tok/s 1 thread | tok/s default | default / one |", "|---|---|---|---|"]
    for name, r in res["default_threads"].items():
        lines.append(f"| {name} | {r['tok_s_one_thread']} | {r['tok_s_default']} | {r['default_over_one']:.2f}x |")
    lines += ["", "## Low-precision logit error against float32", "",
              "| mode | first step max abs | first step rel L2 | max rel L2 over run | greedy agreement | logit std |",
              "|---|---|---|---|---|---|"]
    for mode, r in res["logit_error"].items():
        lines.append(f"| {mode} | {r['first_step']['max_abs']:.4f} | {r['first_step']['rel_l2']:.4f} | "
                     f"{r['max_rel_l2_over_run']:.4f} | {r['greedy_agreement']:.2f} ({r['steps']} steps) | "
                     f"{r['logit_std']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("LONGSTREAM_OFFLINE", "1")
    main()
