"""Maps the fixed top-level folders onto one import package ``longstream``.

- ``backbones/`` -> ``longstream.backbones`` (likewise apps, encoders, memory, pipelines);
- ``apps/api/`` -> ``longstream`` itself: its ``__init__`` is the short Python API
  (``longstream.load``); it is left out of ``longstream.apps`` so it is not shipped twice;
- ``checkpoints/`` and ``demos/`` -> ``longstream/checkpoints`` and ``longstream/demos``,
  as data (every file: pyproject.toml's package-data), so an installed wheel finds the shipped models and demo inputs
  where ``pipelines/common/paths.py`` looks in a checkout: next to ``pipelines/``.

Everything else (metadata, dependencies, extras) is in pyproject.toml; this file only
computes the package list, so a new pipeline folder is picked up without editing it.
"""

from setuptools import find_namespace_packages, find_packages, setup

TOP_LEVEL = ("apps", "backbones", "encoders", "memory", "pipelines")
FACADE = "apps/api"  # the folder whose __init__.py is `longstream/__init__.py`
DATA_DIRS = ("checkpoints", "demos")

code = find_packages(include=[f"{t}*" for t in TOP_LEVEL], exclude=["apps.api", "apps.api.*"])
# data folders with importable names (checkpoints/recall, demos/timeseries) are listed too: setuptools
# warns about (and may one day drop) data under an importable folder that is not a listed package
data = [f"{d}.{p}" for d in DATA_DIRS for p in find_namespace_packages(where=d)
        if all(part.isidentifier() for part in p.split(".")) and "__pycache__" not in p]

setup(
    packages=["longstream", *(f"longstream.{p}" for p in (*code, *DATA_DIRS, *data))],
    package_dir={"longstream": FACADE, **{f"longstream.{t}": t for t in (*TOP_LEVEL, *DATA_DIRS)}},
)
