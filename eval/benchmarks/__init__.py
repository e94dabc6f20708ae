"""Benchmarks behind `facepriv bench <name>`.

Each module here exposes ``add_arguments(parser)`` and ``run(args) -> dict``; the dict is
printed and written as JSON. Speed and memory targets live here, measured side by side in
one run, never in timed unit tests.
"""
