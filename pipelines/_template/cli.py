"""``longstream template ...``: the uniform verbs, built by ``longstream.pipelines.common``."""

from __future__ import annotations

from longstream.pipelines.common import run_pipeline_cli

from . import DOMAIN, config, evaluate, train


def main(argv: list[str] | None = None) -> int:
    return run_pipeline_cli(
        argv,
        domain=DOMAIN,
        presets=config.PRESETS,
        train=train.train,
        evaluate=evaluate.evaluate,
        predict=evaluate.predict,
        description="Template pipeline: classify the frequency of noisy sine waves (generated data).",
    )


if __name__ == "__main__":
    raise SystemExit(main())
