import pytest
from hypothesis import given
from hypothesis import strategies as st

from eddy.models import checkpoint
from eddy.models.checkpoint import CheckpointError
from eddy.models.join import JoinBuffer, Joined, Pending, Unjoined


def p(i, t=0):
    return Pending(f"e{i}", f"payload{i}", (0, i), t)


def test_labels_before_or_after_their_sample_join_once():
    b = JoinBuffer(ttl_ms=100, max_pending=10)
    assert b.add_sample(p(1)) == []
    out = b.add_label(Pending("e1", "L1", (0, 9), 1))
    assert [type(o) for o in out] == [Joined] and out[0].label == "L1"
    assert b.add_label(Pending("e2", "L2", (0, 10), 1)) == []
    out = b.add_sample(p(2))
    assert out[0].label == "L2" and out[0].label_position == (0, 10)
    assert len(b) == 0


def test_inline_labels_join_immediately():
    b = JoinBuffer(ttl_ms=100, max_pending=10)
    out = b.add_sample(p(1), inline_label=True)
    assert out[0].label is True and out[0].label_position is None
    assert len(b) == 0


def test_expiry_runs_on_the_other_streams_clock():
    b = JoinBuffer(ttl_ms=100, max_pending=10)
    b.add_sample(p(1, t=0))
    b.add_label(Pending("x", "orphan", (0, 5), 50))
    assert b.expire(label_clock_ms=100, sample_clock_ms=100) == []
    out = b.expire(label_clock_ms=101, sample_clock_ms=100)
    assert [(u.kind, u.reason, u.entry.id) for u in out] == [("sample", "expired", "e1")]
    out = b.expire(label_clock_ms=101, sample_clock_ms=151)
    assert [(u.kind, u.entry.id) for u in out] == [("label", "x")]


def test_the_size_cap_evicts_the_oldest_and_says_so():
    b = JoinBuffer(ttl_ms=10**9, max_pending=3)
    out = [o for i in range(5) for o in b.add_sample(p(i))]
    assert [(o.reason, o.entry.id) for o in out] == [("evicted", "e0"), ("evicted", "e1")]
    assert all(isinstance(o, Unjoined) for o in out)
    assert len(b.samples) == 3


def test_pending_is_bounded_under_a_million_unmatched_samples():
    b = JoinBuffer(ttl_ms=10**12, max_pending=1000)
    evicted = sum(len(b.add_sample(p(i))) for i in range(1_000_000))
    assert len(b) == 1000
    assert evicted == 999_000


def test_duplicate_ids_are_reported():
    b = JoinBuffer(ttl_ms=100, max_pending=10)
    b.add_sample(p(1))
    out = b.add_sample(p(1))
    assert out[0].reason == "duplicate" and b.duplicates == 1


def test_checkpoint_round_trip_and_refusal_of_altered_files(tmp_path):
    path = tmp_path / "state.ckpt"
    checkpoint.save(path, {"offset": 41, "model": [1.0, 2.0]}, b"key")
    assert checkpoint.load(path, b"key") == {"offset": 41, "model": [1.0, 2.0]}
    with pytest.raises(CheckpointError, match="HMAC"):
        checkpoint.load(path, b"another key")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="HMAC"):
        checkpoint.load(path, b"key")
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not sealed by eddy"):
        checkpoint.load(path, b"key")
    assert [f.name for f in tmp_path.iterdir()] == ["state.ckpt"]  # no temp files left


def test_a_crafted_pickle_is_never_executed(tmp_path):
    """A checkpoint that would run code when unpickled is refused by its HMAC first."""
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (marker.write_text, ("ran",))

    payload = pickle.dumps(Evil())
    import zlib

    from eddy.models.sealed import MAGIC

    forged = MAGIC + b"0" * 64 + b"\n" + zlib.compress(payload)
    path = tmp_path / "p0.ckpt"
    path.write_bytes(forged)
    with pytest.raises(CheckpointError, match="HMAC"):
        checkpoint.load(path, b"key")
    assert not marker.exists()


def test_recent_ids_survive_a_pickle_and_an_old_one_still_loads():
    import pickle

    from eddy.models.join import RecentIds

    ids = RecentIds(3)
    for i in "abcd":
        ids.add(i)
    back = pickle.loads(pickle.dumps(ids))
    assert "a" not in back and all(i in back for i in "bcd")
    back.add("e")
    assert "b" not in back and "e" in back
    old = RecentIds.__new__(RecentIds)
    old.__setstate__({"size": 3, "_order": ids._order, "_set": ids._set})
    assert "d" in old and "a" not in old
    listed = RecentIds.__new__(RecentIds)  # as checkpoints before the ids went as one string
    listed.__setstate__((3, ["b", "c", "d"]))
    assert list(listed._order) == ["b", "c", "d"] and "d" in listed


@pytest.mark.parametrize(
    "ids",
    [[], [""], ["", ""], ["a"], ["a\x1fb", "c"], ["\x1f"], ["x", "\x1f\x1f", ""], ["é", "日本"]],
)
def test_recent_ids_keep_every_id_through_a_pickle_whatever_it_holds(ids):
    import pickle

    from eddy.models.join import RecentIds

    recent = RecentIds(10)
    for i in ids:
        recent.add(i)
    back = pickle.loads(pickle.dumps(recent))
    distinct = list(dict.fromkeys(ids))
    assert list(back._order) == distinct and back._set == set(ids) and back.size == 10


@given(st.lists(st.text(alphabet=st.sampled_from("ab\x1f\n\x00é")), max_size=30), st.integers(1, 8))
def test_recent_ids_pickle_to_the_same_last_ids_for_any_ids(ids, size):
    import pickle

    from eddy.models.join import RecentIds

    recent = RecentIds(size)
    for i in ids:
        recent.add(i)
    back = pickle.loads(pickle.dumps(recent))
    assert list(back._order) == list(recent._order) and back._set == recent._set
    assert recent._set == set(recent._order) and len(recent._order) <= size


def test_a_crash_and_restore_from_the_state_store_gives_the_uncrashed_model():
    """eddy.testing's crash(): every partition loses its memory, restores from the last
    checkpoint in its state store (a MemoryStore) and reads its inputs again from the
    offsets it reflects; the model and every figure are the uncrashed run's, and each
    sample's prediction (at least once) is the one the uncrashed run served."""
    import itertools

    from river import linear_model, preprocessing
    from river import stream as river_stream
    from river.datasets import synth

    import eddy
    from eddy.testing import TestRun

    def run(crash_at: int | None) -> TestRun:
        app = eddy.App()
        app.stream(
            "default",
            model=preprocessing.StandardScaler() | linear_model.LogisticRegression(),
            feature_drift=False,
        )
        r = TestRun(app)
        data = itertools.islice(synth.SEA(variant=0, seed=3), 3000)
        for n, (i, x, y) in enumerate(river_stream.simulate_qa(data, None, 37)):
            features = {str(k): v for k, v in x.items()}
            if y is None:
                r.sample(str(i), features, ts=1_700_000_000_000 + n)
            else:
                r.label(str(i), y, ts=1_700_000_000_000 + n)
            if n % 500 == 499:
                r.process()
            if crash_at is not None and n == crash_at:
                r.checkpoint()
            if crash_at is not None and n == crash_at + 777:
                r.crash()
        r.process()
        return r

    calm, crashed = run(None), run(2000)
    ours, theirs = crashed.learner(), calm.learner()
    assert ours.learned == theirs.learned == 3000
    assert ours.learner.estimator.predict_proba_one({"0": 1.0, "1": 2.0, "2": 3.0}) == (
        theirs.learner.estimator.predict_proba_one({"0": 1.0, "1": 2.0, "2": 3.0})
    )
    assert ours.metrics.values() == theirs.metrics.values()
    served = {p["id"]: p["prediction"] for p in calm.predictions}
    assert {p["id"]: p["prediction"] for p in crashed.predictions} == served
    assert len(crashed.predictions) > len(calm.predictions)  # at least once: some again
