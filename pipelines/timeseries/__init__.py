"""Time-series pipeline: long-term forecasting (TSLib protocol), user-CSV forecasting and backtests.

See ``README.md`` in this folder for the task, data, protocol, results and checkpoints.
"""
