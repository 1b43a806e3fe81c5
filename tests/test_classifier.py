"""The classifier on crafted request sequences: streams, interleaving, reorder, expiry, pids."""

from __future__ import annotations

import random

import pytest

from fusefs.classifier import Access, Classifier, Label

KiB = 1024
CUTOFF = 256 * KiB


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(**kw: object) -> tuple[Classifier, FakeClock]:
    clock = FakeClock()
    return Classifier(clock=clock, **kw), clock  # type: ignore[arg-type]


def stream(c: Classifier, file_id: int, pid: int, start: int, size: int, n: int) -> list[Access]:
    return [c.classify(file_id, pid, start + i * size, size) for i in range(n)]


def test_policies_take_a_label_or_its_string_value() -> None:
    """Traces store labels as strings; a policy given the string decides as for the label."""
    from fusefs.policies import AccessInfo, get_policy

    for name in ("lru", "workload_aware"):
        p = get_policy(name)(1 << 30, object_size=4096, max_readahead=4 << 20)
        for label, text in ((Label.SEQUENTIAL, "sequential"), (Label.RANDOM, "random"),
                            (Label.UNKNOWN, "unknown")):
            enum_info = AccessInfo(label=label, size=128 * KiB, run_length=1 << 20)
            str_info = AccessInfo(label=text, size=128 * KiB, run_length=1 << 20)
            assert p.readahead(str_info) == p.readahead(enum_info), (name, text)
        assert p.readahead(AccessInfo(label="sequential", size=128 * KiB, run_length=1 << 20)) > 0


def test_single_stream_becomes_sequential_at_the_cutoff() -> None:
    c, _ = make()
    out = stream(c, 1, 10, 0, 64 * KiB, 8)
    # 64 KiB requests: the run covers 256 KiB at the 4th request.
    assert [a.label for a in out[:3]] == [Label.UNKNOWN] * 3
    assert all(a.label is Label.SEQUENTIAL for a in out[3:])
    assert [a.run_length for a in out] == [64 * KiB * (i + 1) for i in range(8)]
    assert len({a.stream_id for a in out}) == 1


def test_configurable_cutoff() -> None:
    c, _ = make(sequential_cutoff=128 * KiB)
    out = stream(c, 1, 10, 0, 64 * KiB, 3)
    assert out[1].label is Label.SEQUENTIAL


def test_one_large_request_is_not_yet_a_stream_its_continuation_is() -> None:
    c, _ = make()
    assert c.classify(1, 10, 0, 1024 * KiB).label is Label.UNKNOWN
    assert c.classify(1, 10, 1024 * KiB, 1024 * KiB).label is Label.SEQUENTIAL


def test_random_faults_on_an_mmap_are_random() -> None:
    """What the kernel sends for random page faults on an mmap-ed index: one read-around
    window (the mount's read-ahead, 1 MiB) centred on each fault, at random places."""
    c, _ = make()
    rng = random.Random(3)
    size = 64 << 20
    window = 1024 * KiB
    labels = []
    for _ in range(500):
        fault = rng.randrange(size // 4096) * 4096
        start = max(0, min(size - window, fault - window // 2))
        labels.append(c.classify(7, 42, start, window).label)
    assert labels.count(Label.SEQUENTIAL) <= 10, labels.count(Label.SEQUENTIAL)
    assert labels.count(Label.RANDOM) >= 400  # the rest: unknown (a window that left a gap)
    assert not c.is_streamer(42), "lone windows are no evidence of streaming"
    # The same process then scans a file front to back through its mapping: the kernel's
    # read-around, then async read-ahead windows that continue each other.
    out = stream(c, 8, 42, 0, window, 6)
    assert out[0].label is not Label.SEQUENTIAL
    assert all(a.label is Label.SEQUENTIAL for a in out[1:])


def test_random_reads_on_a_file_are_random() -> None:
    c, _ = make()
    rng = random.Random(1)
    labels = [c.classify(1, 20, rng.randrange(100_000) * 4 * KiB, 4 * KiB).label for _ in range(2000)]
    assert labels[0] is Label.UNKNOWN  # first request of an unseen file by an unknown process
    assert labels.count(Label.SEQUENTIAL) == 0
    assert labels.count(Label.RANDOM) > 0.95 * len(labels)


def test_rereading_the_same_page_never_builds_a_run() -> None:
    c, _ = make()
    out = [c.classify(1, 20, 40 * KiB, 4 * KiB) for _ in range(500)]
    assert all(a.label is not Label.SEQUENTIAL for a in out)
    assert out[-1].run_length == 4 * KiB


def test_interleaved_streams_on_one_file() -> None:
    c, _ = make()
    size = 32 * KiB
    starts = [0, 100 * 1024 * KiB, 200 * 1024 * KiB, 300 * 1024 * KiB]  # four workers, one shard
    out: dict[int, list[Access]] = {w: [] for w in range(4)}
    for i in range(40):
        for w, start in enumerate(starts):
            out[w].append(c.classify(7, 100 + w, start + i * size, size))
    ids = {w: {a.stream_id for a in accs} for w, accs in out.items()}
    assert all(len(s) == 1 for s in ids.values())
    assert len(set().union(*ids.values())) == 4
    for accs in out.values():
        assert all(a.label is Label.SEQUENTIAL for a in accs[8:])
        assert accs[-1].run_length == 40 * size


def test_interleaved_streams_by_one_process() -> None:
    # One process (threads) reading two regions alternately: still two streams.
    c, _ = make()
    size = 64 * KiB
    a = [c.classify(3, 5, i * size, size) for i in range(10)]
    b = [c.classify(3, 5, 10**9 + i * size, size) for i in range(10)]
    assert a[-1].label is Label.SEQUENTIAL and b[-1].label is Label.SEQUENTIAL


def test_reordered_requests_continue_the_stream() -> None:
    c, _ = make()
    size = 128 * KiB
    order = [0, 2, 1, 3, 5, 4, 6, 7, 9, 8]  # the kernel delivers read-ahead out of order
    out = [c.classify(1, 10, i * size, size) for i in order]
    assert len({a.stream_id for a in out}) == 1
    assert all(a.label is Label.SEQUENTIAL for a in out[2:])
    assert out[-1].run_length == 10 * size


def test_far_jump_starts_a_new_stream() -> None:
    c, _ = make()
    first = stream(c, 1, 10, 0, 64 * KiB, 2)
    far = c.classify(1, 10, 500 * 1024 * KiB, 64 * KiB)
    assert far.stream_id != first[0].stream_id


def test_idle_streams_expire_with_the_clock() -> None:
    c, clock = make(stream_idle=5.0)
    size = 64 * KiB
    a = stream(c, 1, 10, 0, size, 3)
    clock.now = 4.9
    cont = c.classify(1, 10, 3 * size, size)
    assert cont.stream_id == a[0].stream_id
    clock.now = 4.9 + 5.1
    after = c.classify(1, 10, 4 * size, size)
    assert after.stream_id != a[0].stream_id
    assert after.run_length == size
    assert c.stats()["streams_expired"] == 1


def test_process_that_streams_is_recognised_on_a_new_file() -> None:
    c, _ = make()
    stream(c, 1, 42, 0, 64 * KiB, 8)  # pid 42 streams file 1
    assert not c.is_streamer(42), "one run may be the kernel reading ahead of an mmap fault"
    stream(c, 4, 42, 0, 64 * KiB, 8)  # and file 4
    assert c.is_streamer(42)
    first = c.classify(2, 42, 0, 64 * KiB)  # its first request on file 2
    assert first.label is Label.SEQUENTIAL
    assert c.stats()["pid_recognised"] >= 1
    # Another process starting the same way is not presumed a streamer.
    other = c.classify(3, 43, 0, 64 * KiB)
    assert other.label is Label.UNKNOWN


def test_random_reader_is_not_a_streamer() -> None:
    c, _ = make()
    rng = random.Random(2)
    for _ in range(300):
        c.classify(1, 50, rng.randrange(10**6) * 4 * KiB, 4 * KiB)
    assert not c.is_streamer(50)
    assert c.classify(9, 50, 0, 4 * KiB).label is Label.UNKNOWN


def test_streamer_that_turns_random_is_forgotten() -> None:
    c, _ = make()
    stream(c, 1, 42, 0, 64 * KiB, 8)
    stream(c, 3, 42, 0, 64 * KiB, 8)
    assert c.is_streamer(42)
    rng = random.Random(3)
    for _ in range(400):
        c.classify(2, 42, rng.randrange(10**6) * 4 * KiB, 4 * KiB)
    assert not c.is_streamer(42)


def test_random_reader_does_not_displace_a_stream_on_the_same_file() -> None:
    c, _ = make(max_streams_per_file=4)
    size = 64 * KiB
    rng = random.Random(4)
    seq = stream(c, 1, 10, 0, size, 5)
    for i in range(5, 30):
        for _ in range(10):  # many random reads between two stream requests
            c.classify(1, 20, 10**9 + rng.randrange(10**6) * 4 * KiB, 4 * KiB)
        a = c.classify(1, 10, i * size, size)
        assert a.stream_id == seq[0].stream_id and a.label is Label.SEQUENTIAL


def test_memory_is_bounded() -> None:
    c, clock = make(max_streams_per_file=4, max_files=16, max_pids=8)
    rng = random.Random(5)
    for i in range(20_000):
        clock.now = i * 1e-4
        c.classify(rng.randrange(1000), rng.randrange(100), rng.randrange(10**6) * 4 * KiB, 4 * KiB)
        if i % 1000 == 0:
            s = c.stats()
            assert s["files_tracked"] <= 16
            assert s["pids_tracked"] <= 8
            assert s["streams_tracked"] <= 16 * 4
    s = c.stats()
    assert s["streams_tracked"] == s["streams_created"] - s["streams_expired"] - s["streams_dropped"]


def test_forget_file() -> None:
    c, _ = make()
    a = stream(c, 1, 10, 0, 64 * KiB, 2)
    c.forget_file(1)
    c.forget_file(99)  # unknown file: nothing to do
    b = c.classify(1, 10, 2 * 64 * KiB, 64 * KiB)
    assert b.stream_id != a[0].stream_id
    assert c.stats()["streams_tracked"] == 1


def test_stats_count_requests_and_bytes_by_label() -> None:
    c, _ = make()
    out = stream(c, 1, 10, 0, 64 * KiB, 6)
    s = c.stats()
    assert s["requests_unknown"] == 3 and s["requests_sequential"] == 3 and s["requests_random"] == 0
    assert s["bytes_sequential"] == 3 * 64 * KiB
    assert sum(s[f"requests_{label.value}"] for label in Label) == len(out)


@pytest.mark.parametrize("bad", [{"sequential_cutoff": 0}, {"max_streams_per_file": 0}, {"pid_alpha": 0.0}])
def test_rejects_bad_options(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Classifier(**bad)  # type: ignore[arg-type]
