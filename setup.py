"""Maps the top-level folders onto one import namespace: ``backbones/`` -> ``longstream.backbones``.

Everything else (metadata, dependencies, extras) is in pyproject.toml; this file only
computes the package list, so a new pipeline folder is picked up without editing it.
"""

from setuptools import find_packages, setup

TOP_LEVEL = ("apps", "backbones", "encoders", "memory", "pipelines")

setup(
    packages=[f"longstream.{p}" for p in find_packages(include=[f"{t}*" for t in TOP_LEVEL])],
    package_dir={f"longstream.{t}": t for t in TOP_LEVEL},
)
