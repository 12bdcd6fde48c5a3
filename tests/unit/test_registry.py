import itertools
import json

import pytest
import torch

from eddy.models.learners import TorchModel
from eddy.models.maintain.adoption import adopt
from eddy.models.maintain.batch import TrainParams, train, vectorize
from eddy.models.maintain.evaluation import compare, mcnemar_p
from eddy.models.maintain.registry import Registry, RegistryError
from eddy.models.torch_learner import TorchLearner
from eddy.streams.ops.sources import open_named


def test_versions_are_numbered_whole_and_hashed(tmp_path):
    r = Registry(tmp_path)
    v1 = r.register("m", {"metrics": {}}, {"model.pt": b"abc"})
    v2 = r.register("m", {"metrics": {}}, {"model.pt": b"def"})
    assert (v1.version, v2.version) == ("v0001", "v0002")
    assert r.verify("m", "v0002") == {"model.pt": True}
    assert v2.card["artifacts"]["model.pt"]["size_bytes"] == 3


def test_a_crash_mid_register_leaves_no_visible_version(tmp_path):
    r = Registry(tmp_path)
    r.register("m", {}, {"a": b"1"})
    (tmp_path / "m" / ".v0002.tmp-999").mkdir()  # what a crash before the rename leaves
    (tmp_path / "m" / ".v0002.tmp-999" / "a").write_bytes(b"half")
    assert r.versions("m") == ["v0001"]
    assert r.register("m", {}, {"a": b"2"}).version == "v0002"


def test_tampering_is_detected(tmp_path):
    r = Registry(tmp_path)
    v = r.register("m", {}, {"model.pt": b"weights"})
    (v.path / "model.pt").write_bytes(b"evil")
    assert r.verify("m", "v0001") == {"model.pt": False}


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "", "x" * 200])
def test_names_from_events_cannot_escape_the_registry(tmp_path, name):
    r = Registry(tmp_path)
    with pytest.raises(RegistryError, match="not a safe name"):
        r.register(name, {}, {})
    r.register("m", {}, {})
    with pytest.raises(RegistryError):
        r.register("m", {}, {name or "x/": b""})


def test_aliases_and_the_maintenance_log(tmp_path):
    r = Registry(tmp_path)
    r.register("m", {}, {})
    r.register("m", {}, {})
    assert r.set_alias("m", "champion", "v0001") is None
    assert r.set_alias("m", "champion", "v0002") == "v0001"
    assert r.get("m", "champion").version == "v0002"
    with pytest.raises(RegistryError, match="unknown alias"):
        r.set_alias("m", "prod", "v0001")
    with pytest.raises(RegistryError, match="no version v0009"):
        r.get("m", "v0009")
    r.log("promote", "m", "v0002", "test", "champion")
    lines = (tmp_path / "maintenance.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["action"] == "promote"
    assert r.history("m")[0]["version"] == "v0002"


def test_mcnemar_and_comparison():
    assert mcnemar_p([True] * 50, [True] * 50) == 1.0
    assert mcnemar_p([False] * 30 + [True] * 70, [True] * 100) < 1e-6
    c = compare("binary", [1, 0, 1, 1], [1, 0, 1, 1], [0, 0, 0, 1])
    assert c.better and c.candidate == 1.0 and c.champion == 0.5
    r = compare("regression", [1.0, 2.0, 3.0] * 50, [1.0, 2.0, 3.0] * 50, [2.0, 3.0, 4.0] * 50)
    assert r.better and r.significant and r.test == "paired bootstrap"


def test_the_online_torch_learner_adopts_a_matching_champion():
    data = list(itertools.islice(open_named("sea", seed=2), 2000))
    matrix, names = vectorize([x for x, _ in data])
    champion = train(
        matrix, [y for _, y in data], "binary", names, TrainParams(hidden=(32,), epochs=5)
    )
    online = TorchLearner("binary", TorchModel(hidden=32))
    assert adopt(online, champion)[0]
    xs = [x for x, _ in data[:300]]
    assert [p.value for p in online.predict_many(xs)] == champion.predict(xs)
    adopted, why = adopt(TorchLearner("binary", TorchModel(hidden=0)), champion)
    assert not adopted and "EDDY_RETRAIN_HIDDEN" in why


def test_training_stops_early_on_the_validation_tail_and_keeps_its_best_epoch():
    data = list(itertools.islice(open_named("sea", seed=4), 3000))
    matrix, names = vectorize([x for x, _ in data])
    targets = [y for _, y in data]
    full = train(matrix, targets, "binary", names, TrainParams(hidden=(16,), epochs=12, patience=0))
    assert full.epochs_run == 12
    # patience 1 with a huge learning rate: validation loss soon stops improving
    params = TrainParams(hidden=(16,), epochs=200, patience=1, lr=0.05)
    early = train(matrix, targets, "binary", names, params)
    assert 2 <= early.epochs_run < 200
    fit_rows = int(len(targets) * (1 - params.validation))
    y_tail = torch.tensor([early.classes.index(t) for t in targets[fit_rows:]])
    kept = float(torch.nn.functional.cross_entropy(early._logits(matrix[fit_rows:]), y_tail))
    losses = early.validation_losses
    assert len(losses) == early.epochs_run and losses[-1] > min(losses)
    assert kept == pytest.approx(min(losses), rel=1e-5)  # the best epoch's weights, not the last
