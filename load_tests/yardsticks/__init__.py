"""Yardsticks for the end-to-end benchmark: small Faust apps that read the same topics as the engine.

``ceiling``: counts messages, batched with ``stream.take(2000, within=0.05)`` — what one Faust process
can consume here. ``naive``: orjson decode + one table update + one send per event — the pipeline one
would write first. Both run as ``python -m load_tests.yardsticks NAME`` with the engine's settings
(``cadence.settings.Settings`` from the same environment) and the engine's Faust options.
"""
