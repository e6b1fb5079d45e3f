"""Optional llama.cpp baseline for ``benchmarks/decode.py``, measured on this machine.

Builds llama.cpp's ``llama-bench`` from the sources vendored in the PyPI sdist of
``llama-cpp-python`` 0.3.36 (``pip download --no-deps --no-binary :all:``; cmake + ninja,
``nice -n 15``, ``-j`` 2 by default: ~10+ minutes on a 2-core machine), exports the same
random-weights mamba-130m-shaped ``LanguageModel`` that ``decode.py`` builds (seed 0) in the
``mamba_ssm`` checkpoint layout, converts it to GGUF (float32 and bf16) with llama.cpp's own
``convert_hf_to_gguf.py``, and runs ``llama-bench -t 1,2 -p 512,2048 -n N``. Everything is
cached outside the repository (``$LONGSTREAM_CACHE``/llamacpp, default
``~/.cache/longstream/llamacpp``); nothing here runs in CI or tests.

Writes ``benchmarks/results/llamacpp.json`` (CPU name, the commands, load averages, tokens/s
per weight type, thread count and test), which ``decode.py`` reads for its comparison.
Usage::

    nice python benchmarks/llamacpp.py                 # build (once), convert, bench
    nice python benchmarks/llamacpp.py --jobs 1 --repetitions 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from timing import cpu_name  # noqa: E402  (benchmarks/timing.py)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VERSION = "0.3.36"
VOCAB = 50280
CACHE = Path(os.environ.get("LONGSTREAM_CACHE", Path.home() / ".cache" / "longstream")) / "llamacpp"
OUT = REPO / "benchmarks" / "results" / "llamacpp.json"


def _run(cmd: list[str], log: Path | None = None, **kw) -> str:
    print("+", " ".join(cmd), flush=True)
    if log is None:
        return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout
    with open(log, "a") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, **kw)
    return ""


def source_dir(cache: Path) -> Path:
    """The llama.cpp tree inside the llama-cpp-python sdist (downloaded and unpacked once)."""
    src = cache / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"
    if src.is_dir():
        return src
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / f"llama_cpp_python-{VERSION}.tar.gz"
    if not sdist.exists():
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
              f"llama-cpp-python=={VERSION}", "-d", str(cache)])
    with tarfile.open(sdist) as tf:
        tf.extractall(cache, filter="data")
    return src


def build(cache: Path, jobs: int) -> Path:
    """``llama-bench`` built once (Release, native CPU flags, OpenMP) under ``cache/build``."""
    exe = cache / "build" / "bin" / "llama-bench"
    if exe.exists():
        return exe
    src = source_dir(cache)
    log = cache / "build.log"
    nice = ["nice", "-n", "15"]
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    _run([*nice, "cmake", "-S", str(src), "-B", str(cache / "build"), *gen, "-DCMAKE_BUILD_TYPE=Release",
          "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
          "-DLLAMA_BUILD_SERVER=OFF", "-DGGML_OPENMP=ON"], log)
    _run([*nice, "cmake", "--build", str(cache / "build"), "--target", "llama-bench", f"-j{jobs}"], log)
    return exe


def export_model(out: Path) -> Path:
    """decode.py's model (seed 0) as a mamba_ssm-layout checkpoint (config.json + safetensors)."""
    if (out / "model.safetensors").exists():
        return out
    import torch
    from safetensors.torch import save_file

    from longstream.backbones.lm import LanguageModel
    from longstream.backbones.presets import mamba_130m

    torch.manual_seed(0)
    lm = LanguageModel(VOCAB, mamba_130m()).eval()
    cfg = lm.backbone.cfg
    sd = {}
    for k, v in lm.state_dict().items():
        if k == "lm_head.weight":
            continue  # tied: the converter reuses the embedding
        sd["backbone.embedding.weight" if k == "embedding.weight" else k] = v.detach().contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({
        "architectures": ["MambaForCausalLM"], "model_type": "mamba",
        "d_model": cfg.d_model, "n_layer": len(lm.backbone.layers), "vocab_size": VOCAB,
        "ssm_cfg": {}, "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
        "pad_vocab_size_multiple": 8, "tie_embeddings": True,
    }, indent=1))
    return out


def convert(src: Path, hf_dir: Path, outtype: str) -> Path:
    gguf = hf_dir.parent / f"mamba130m-random-{outtype}.gguf"
    if not gguf.exists():
        _run([sys.executable, str(src / "convert_hf_to_gguf.py"), str(hf_dir), "--outtype", outtype,
              "--outfile", str(gguf)], hf_dir.parent / "convert.log")
    return gguf


def bench(exe: Path, model: Path, threads: list[int], prompts: list[int], gen: int, reps: int) -> tuple[list, str]:
    cmd = [str(exe), "-m", str(model), "-t", ",".join(map(str, threads)), "-p", ",".join(map(str, prompts)),
           "-n", str(gen), "-r", str(reps), "-o", "json"]
    return json.loads(_run(cmd)), " ".join(cmd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default=str(CACHE))
    ap.add_argument("--jobs", type=int, default=2, help="parallel compile jobs (nice -n 15)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--prompts", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--gen", type=int, default=64, help="decoded tokens per llama-bench run")
    ap.add_argument("--repetitions", type=int, default=3)
    ap.add_argument("--types", nargs="+", default=["f32", "bf16"])
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()

    cache = Path(args.cache)
    exe = build(cache, args.jobs)
    src = source_dir(cache)
    hf_dir = export_model(cache / "mamba130m-random")
    res: dict = {"meta": {
        "what": "llama.cpp llama-bench on decode.py's random-weights mamba-130m-shaped model (seed 0)",
        "source": f"llama-cpp-python {VERSION} sdist (vendor/llama.cpp), cmake Release GGML_NATIVE OpenMP",
        "cpu": cpu_name(), "script": "python benchmarks/llamacpp.py " + " ".join(sys.argv[1:]),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3], "commands": {},
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }, "tok_s": {}}
    for t in args.types:
        model = convert(src, hf_dir, t)
        rows, cmd = bench(exe, model, args.threads, args.prompts, args.gen, args.repetitions)
        res["meta"]["commands"][t] = cmd
        out = res["tok_s"].setdefault({"f32": "fp32"}.get(t, t), {"decode": {}, "prefill": {}})
        for r in rows:
            nt, tps = str(r["n_threads"]), round(float(r["avg_ts"]), 2)
            if r.get("n_gen", 0) > 0:
                out["decode"][nt] = tps
            else:
                out["prefill"].setdefault(str(r["n_prompt"]), {})[nt] = tps
        print(t, json.dumps(out), flush=True)
    res["meta"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
