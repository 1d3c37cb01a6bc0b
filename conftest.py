"""Test collection: skip doctest collection of modules whose optional extra is not installed."""

import importlib.util

collect_ignore = []
if importlib.util.find_spec("flwr") is None:  # privaudit[flower]
    collect_ignore.append("src/privaudit/training/_fed_flower.py")
