"""`run_attack` on tiny runs: attack.json's keys, caching, determinism, shards, npz input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from privaudit.attacks import AttackInputs, evaluate_attacks, roc_curve, run_attack
from privaudit.attacks._shadow_cache import ShadowCache
from privaudit.training._job import TrainSettings, train_job

TINY = dict(data="digits", model="logreg", epochs=2, batch_size=128, lr=0.5, test_fraction=0.5, device="cpu")
ATTACKS = ["loss", "lira_online", "lira_offline", "rmia_online", "rmia_offline"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    train_job(TrainSettings(out=str(out), name="nodp", no_dp=True, **TINY))
    train_job(TrainSettings(out=str(out), name="dp", noise_multiplier=1.0, max_grad_norm=1.0, **TINY))
    return out


@pytest.fixture()
def nodp(runs, tmp_path):
    """A fresh copy of the non-private run (no shadows cached yet)."""
    return shutil.copytree(runs / "nodp", tmp_path / "nodp")


def test_attack_json_has_the_documented_keys(nodp):
    report = run_attack(nodp, shadows=4, seed=0, device="cpu")
    data = json.loads((nodp / "attack.json").read_text())
    assert data["format"] == "privaudit.attack/1"
    assert list(data["attacks"]) == ATTACKS == list(report.results)
    assert data["population"] == {"size": 1797, "members": 898, "non_members": 899}
    assert data["delta"] == 1e-5 and "not private" in data["delta_source"]
    assert data["shadows"]["count"] == 4 and data["shadows"]["in_per_example"] == [2]
    assert data["shadows"]["training"]["no_dp"] is True and len(data["shadows"]["model_seeds"]) == 4
    for name, entry in data["attacks"].items():
        assert set(entry) >= {"auc", "tpr_at_fpr", "tpr_at_fpr_unreported", "balanced_accuracy", "advantage",
                              "epsilon_lower_bound", "settings", "seed"}
        assert set(entry["tpr_at_fpr"]) == {"0.001", "0.01", "0.1"}
        # 899 negatives: 0.1% and 1% FPR would rest on fewer than 10 false positives.
        assert entry["tpr_at_fpr"]["0.001"] is None and entry["tpr_at_fpr"]["0.01"] is None
        assert "negatives" in entry["tpr_at_fpr_unreported"]["0.001"]
        assert 0 <= entry["tpr_at_fpr"]["0.1"] <= 1 and 0 <= entry["auc"] <= 1
        bound = entry["epsilon_lower_bound"]
        assert set(bound) >= {"value", "alpha", "delta", "method"} and bound["value"] >= 0
        assert entry["auc"] == pytest.approx(report.results[name].metrics.auc)
        _check_stored_roc(entry, report.results[name].roc)
    assert (nodp / "attack_roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert data["plot"] == "attack_roc.png"


def _trapezoid(fpr, tpr):
    fpr, tpr = np.asarray(fpr), np.asarray(tpr)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2)


def _check_stored_roc(entry, full, *, exact=False):
    """attack.json's ROC: at most 500 of the curve's own points, monotone, (0, 0) to (1, 1), area = AUC."""
    fpr, tpr = entry["roc"]["fpr"], entry["roc"]["tpr"]
    assert len(fpr) == len(tpr) <= 500 and entry["roc"]["points_total"] == len(full.fpr)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    own = set(zip(full.fpr.tolist(), full.tpr.tolist()))
    assert all(point in own for point in zip(fpr, tpr))  # nothing interpolated
    assert _trapezoid(fpr, tpr) == pytest.approx(entry["auc"], abs=1e-12 if exact else 2e-3)


def test_shadows_are_cached_and_reused(nodp):
    first = run_attack(nodp, attacks="lira", shadows=4, seed=0, device="cpu", write=False)
    folder = nodp / "shadows" / first.shadows["cache_key"]
    weights = folder / "weights.safetensors"
    stamp = weights.stat().st_mtime_ns
    second = run_attack(nodp, attacks="lira", shadows=4, seed=0, device="cpu", write=False)
    assert not first.shadows["from_cache"] and second.shadows["from_cache"]
    assert weights.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(first.results["lira_online"].scores, second.results["lira_online"].scores)
    other = run_attack(nodp, attacks="lira", shadows=4, seed=1, device="cpu", write=False)
    assert other.shadows["cache_key"] != first.shadows["cache_key"] and not other.shadows["from_cache"]
    assert sorted(p.name for p in (nodp / "shadows").iterdir()) == sorted(
        [first.shadows["cache_key"], other.shadows["cache_key"]])


def test_same_seed_gives_the_same_scores_after_retraining(nodp):
    first = run_attack(nodp, shadows=4, seed=3, device="cpu", write=False)
    shutil.rmtree(nodp / "shadows")
    again = run_attack(nodp, shadows=4, seed=3, device="cpu", write=False)
    assert not again.shadows["from_cache"]
    for name in ATTACKS:
        np.testing.assert_allclose(first.results[name].scores, again.results[name].scores, rtol=1e-6, atol=1e-6)


def test_shards_merge_into_the_unsharded_set(nodp, tmp_path):
    whole = shutil.copytree(nodp, tmp_path / "whole")
    full = run_attack(whole, attacks="lira", shadows=5, seed=0, device="cpu", write=False)
    for i in (1, 2):
        part = run_attack(nodp, shadows=5, seed=0, shard=f"{i}/2", device="cpu")
        assert part.results == {} and part.shard == (i, 2)
    assert not (nodp / "attack.json").exists()
    merged = run_attack(nodp, attacks="lira", shadows=5, seed=0, merge=True, device="cpu", write=False)
    key = full.shadows["cache_key"]
    assert merged.shadows["cache_key"] == key and merged.shadows["models"] == [0, 1, 2, 3, 4]
    w_full = ShadowCache(whole / "shadows").load(_spec_of(whole, key)).params
    w_merged = ShadowCache(nodp / "shadows").load(_spec_of(nodp, key)).params
    for n in w_full:
        torch.testing.assert_close(w_merged[n], w_full[n], atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(merged.results["lira_online"].scores, full.results["lira_online"].scores,
                               rtol=1e-5, atol=1e-5)


def _spec_of(run, key):
    from privaudit.attacks._shadow_cache import ShadowSpec

    meta = json.loads((run / "shadows" / key / "shadows.json").read_text())
    return ShadowSpec(**meta["spec"])


def test_merge_names_the_missing_shards(nodp):
    run_attack(nodp, shadows=4, seed=0, shard="2/3", device="cpu")
    with pytest.raises(ValueError, match=r"shard\(s\) 1/3, 3/3"):
        run_attack(nodp, shadows=4, seed=0, merge=True, device="cpu")


def test_loss_alone_trains_no_shadows(nodp):
    report = run_attack(nodp, attacks="loss", shadows=4, device="cpu")
    assert list(report.results) == ["loss"] and report.shadows is None
    assert not (nodp / "shadows").exists()


def test_dp_run_uses_its_own_delta_and_dp_shadows(runs, tmp_path):
    dp = shutil.copytree(runs / "dp", tmp_path / "dp")
    report = run_attack(dp, attacks=["loss", "rmia_offline"], shadows=2, seed=0, device="cpu")
    assert report.delta == 1e-5 and report.delta_source == "the run's delta"
    training = report.shadows["training"]
    assert training["no_dp"] is False and training["noise_multiplier"] == 1.0 and training["max_grad_norm"] == 1.0
    assert report.source["private"] is True


def test_bad_runs_are_rejected_by_name(tmp_path, nodp):
    with pytest.raises(ValueError, match="not a run directory"):
        run_attack(tmp_path / "missing")
    (nodp / "split.json").unlink()
    with pytest.raises(ValueError, match="no split.json"):
        run_attack(nodp, attacks="loss")
    with pytest.raises(ValueError, match="shadows=1"):
        run_attack(nodp, shadows=1)
    with pytest.raises(ValueError, match="shard"):
        run_attack(nodp, shard="3/2")


def _logits(rng, member, labels, classes=3):
    """Random logits whose true-class entry is larger, by 2 on average, where `member` is True."""
    z = rng.normal(size=(*member.shape, classes))
    margin = 2.0 * member + rng.normal(size=member.shape)
    np.put_along_axis(z, np.broadcast_to(labels, member.shape)[..., None], margin[..., None], axis=-1)
    return z


def _npz_arrays(rng, n=400, k=4):
    labels = rng.integers(0, 3, n)
    member = rng.random(n) < 0.5
    shadow_member = rng.random((k, n)) < 0.5
    return dict(logits=_logits(rng, member, labels), labels=labels, membership=member,
                shadow_logits=_logits(rng, shadow_member, labels), shadow_membership=shadow_member)


def test_npz_input(tmp_path):
    arrays = _npz_arrays(np.random.default_rng(0))
    path = tmp_path / "logits.npz"
    np.savez(path, **arrays)
    report = run_attack(tmp_path / "out", npz=path, seed=0)
    data = json.loads((tmp_path / "out" / "attack.json").read_text())
    assert data["source"]["kind"] == "npz" and data["shadows"] == {"count": 4, "source": "npz"}
    assert list(data["attacks"]) == ATTACKS
    assert report.results["lira_online"].metrics.auc > 0.75
    direct = evaluate_attacks(AttackInputs(target_logits=arrays["logits"], labels=arrays["labels"],
                                           membership=arrays["membership"], shadow_logits=arrays["shadow_logits"],
                                           shadow_membership=arrays["shadow_membership"]), seed=0)
    for name in ATTACKS:
        np.testing.assert_array_equal(direct[name].scores, report.results[name].scores)
        # 400 examples: at most 401 distinct thresholds, so the whole curve is stored and its area is the AUC.
        full = roc_curve(scores=report.results[name].scores, membership=arrays["membership"])
        assert len(data["attacks"][name]["roc"]["fpr"]) == len(full.fpr)
        _check_stored_roc(data["attacks"][name], full, exact=True)


def test_npz_without_shadows_runs_loss_only(tmp_path):
    arrays = _npz_arrays(np.random.default_rng(1))
    path = tmp_path / "target.npz"
    np.savez(path, logits=arrays["logits"], labels=arrays["labels"], membership=arrays["membership"])
    assert list(run_attack(tmp_path, npz=path, attacks="loss").results) == ["loss"]
    with pytest.raises(ValueError, match="need shadow models"):
        run_attack(tmp_path, npz=path, attacks="lira")


@pytest.mark.parametrize(("change", "match"), [
    (dict(labels=np.zeros(5, dtype=np.int64)), "labels"),
    (dict(membership=np.ones(400, dtype=bool)), "both members"),
    (dict(shadow_logits=np.zeros((4, 399, 3))), "shadow_logits"),
    (dict(shadow_membership=np.zeros((3, 400), dtype=bool)), "shadow_membership"),
    (dict(logits=np.full((400, 3), np.nan)), "finite"),
])
def test_npz_with_mismatched_shapes_is_rejected(tmp_path, change, match):
    arrays = {**_npz_arrays(np.random.default_rng(2)), **change}
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=match):
        run_attack(tmp_path, npz=path)
