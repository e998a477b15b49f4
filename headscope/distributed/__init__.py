"""Sharded runs: split a long job over processes (``torchrun``), one machine or many.

>>> from headscope.distributed import sharded_map
>>> sharded_map(len, ["a", "bb"], progress=False)  # one process: a plain loop
[1, 2]

Under ``torchrun --nproc-per-node N -m headscope CMD ...`` every command joins the group
(:func:`init_world`), takes its share of the work items (:func:`balance`), and merges the
results in item order, so the files rank 0 writes equal a one-process run's. The Python API has
the same switch: ``detect_retrieval_heads(..., distributed=True)``, ``knockout_curve``,
``compare_patching`` and ``run_pipeline`` too, for notebooks started under a distributed runner.
"""

from headscope.distributed._balance import balance as balance
from headscope.distributed._balance import token_cost as token_cost
from headscope.distributed._fingerprint import model_fingerprint as model_fingerprint
from headscope.distributed._map import abort as abort
from headscope.distributed._map import finish as finish
from headscope.distributed._map import item_key as item_key
from headscope.distributed._map import sharded_map as sharded_map
from headscope.distributed._world import World as World
from headscope.distributed._world import current_world as current_world
from headscope.distributed._world import init_world as init_world
from headscope.distributed._world import rank_device as rank_device

__all__ = [
    "World",
    "abort",
    "balance",
    "current_world",
    "finish",
    "init_world",
    "item_key",
    "model_fingerprint",
    "rank_device",
    "sharded_map",
    "token_cost",
]
