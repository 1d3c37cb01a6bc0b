"""The Flower backend in deployment mode: SuperLink + 3 SuperNodes on 127.0.0.1, one round.

Skipped unless flwr (the `privaudit[flower]` extra) and its command-line tools are installed.
Slow: every Flower process imports torch (about 1-3 minutes on a busy 2-core machine).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

pytest.importorskip("flwr")
if shutil.which("flower-superlink") is None or shutil.which("flwr") is None:  # pragma: no cover
    pytest.skip("Flower's command-line tools are not on PATH", allow_module_level=True)

from privaudit.training._fed_job import train_federated  # noqa: E402
from privaudit.training._fed_launch import LAST_PIDS, MAX_SUPERNODES  # noqa: E402
from privaudit.training._fed_settings import FederatedSettings  # noqa: E402
from privaudit.training._rundir import RunDir  # noqa: E402

pytestmark = pytest.mark.slow

SETTINGS = dict(model="logreg", clients=3, rounds=1, partition="dirichlet", alpha=1.0, dp="client",
                noise_multiplier=1.0, clip=0.5, local_steps=3, batch_size=16, lr=0.3, seed=7)


def test_one_round_on_three_supernodes_equals_the_embedded_simulator(tmp_path):
    flower = train_federated(FederatedSettings(out=str(tmp_path), name="flower", engine="flower", **SETTINGS))
    assert flower.rounds == 1 and not flower.interrupted
    # Every process the deployment started (superlink, 3 supernodes, flwr run) is gone.
    assert len(LAST_PIDS) == 5
    for pid in LAST_PIDS:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    runs = {"flower": RunDir.open(tmp_path / "flower")}
    for engine in ("sequential", "vectorised"):
        train_federated(FederatedSettings(out=str(tmp_path), name=engine, engine=engine, **SETTINGS))
        runs[engine] = RunDir.open(tmp_path / engine)
    w = {k: rd.load_weights() for k, rd in runs.items()}
    for name in w["flower"]:
        # Same batches (seed [seed, round, client]), same loop, same server noise: identical.
        assert torch.equal(w["flower"][name], w["sequential"][name])
        assert torch.allclose(w["flower"][name], w["vectorised"][name], atol=1e-6)
    ledgers = {k: rd.read_ledger() for k, rd in runs.items()}
    assert ledgers["flower"].entries[0].event == ledgers["vectorised"].entries[0].event
    assert ledgers["flower"].total_count() == 1
    fed = {k: json.loads((rd.path / "federation.json").read_text()) for k, rd in runs.items()}
    assert fed["flower"]["rounds"] == fed["vectorised"]["rounds"] == [{"round": 1, "clients": [0, 1, 2]}]
    assert runs["flower"].read_config()["settings"]["engine"] == "flower"


def test_too_many_clients_for_one_supernode_each(tmp_path):
    with pytest.raises(ValueError, match=f"at most {MAX_SUPERNODES} clients"):
        train_federated(FederatedSettings(out=str(tmp_path), engine="flower", **{**SETTINGS, "clients": 100}))
