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


# Recorded on a real mount: the read requests that 2,000 one-byte touches of random 4 KiB
# pages (seed 7) of a 64 MiB file mapped with mmap sent to the daemon, kernel read-ahead
# 1 MiB, in 4 KiB pages: (first page, pages). Each fault reads a window around it, trimmed
# to the pages the kernel lacks, so as the file fills most windows start where an earlier
# one ended.
MMAP_FAULTS = [
    (10483, 256), (4815, 256), (12809, 256), (1454, 256), (2245, 256), (2956, 256),
    (11854, 256), (1772, 256), (6907, 256), (1100, 256), (2688, 256), (14081, 256),
    (13574, 256), (7758, 256), (13830, 208), (3928, 256), (7187, 256), (4235, 256),
    (9361, 256), (4598, 217), (3731, 197), (9980, 256), (5794, 256), (3248, 256), (6050, 234),
    (12110, 220), (2028, 157), (6620, 256), (16138, 246), (10236, 185), (15128, 256),
    (14721, 256), (11720, 134), (9694, 256), (8014, 254), (2554, 134), (11127, 256),
    (14579, 142), (5277, 256), (15894, 244), (2501, 53), (11383, 219), (8717, 256),
    (15407, 256), (9197, 164), (12513, 256), (611, 256), (11602, 118), (13065, 224),
    (8976, 221), (12338, 175), (7443, 246), (5646, 148), (267, 256), (15763, 131), (8481, 236),
    (6, 256), (10421, 62), (1710, 62), (2185, 60), (14337, 229), (3504, 226), (15663, 100),
    (867, 147), (10739, 191), (6284, 238), (6522, 98), (15384, 23), (10938, 189), (5077, 200),
    (5533, 113), (4491, 107), (14977, 151), (1356, 98), (8268, 153), (523, 88), (9617, 77),
    (8421, 60), (13289, 141), (4184, 51), (9950, 30), (14038, 43), (1014, 86), (7689, 69),
    (6876, 31), (12769, 40), (13430, 144), (0, 6), (3730, 1), (3212, 36), (7163, 24),
    (10930, 8), (8973, 3), (2944, 12),
]


def test_recorded_mmap_fault_windows_are_random() -> None:
    c, _ = make()
    page = 4 * KiB
    ends: set[int] = set()
    touching = 0
    seq_bytes = total = 0
    for first, n in MMAP_FAULTS:
        a = c.classify(7, 42, first * page, n * page)
        total += n * page
        if a.label is Label.SEQUENTIAL:
            seq_bytes += n * page
        if first * page in ends:
            touching += 1
        ends.add((first + n) * page)
    assert touching >= 40, "the recording is not what the test is about"
    # Before interruptions: 16 of 94 windows, 12% of the bytes, were labelled sequential.
    assert seq_bytes <= total // 20, (seq_bytes, total)
    assert c.stats()["requests_random"] >= 85
    assert not c.is_streamer(42)
    # The same process then scans a file front to back through its mapping.
    out = stream(c, 8, 42, 0, 1024 * KiB, 8)
    assert all(a.label is Label.SEQUENTIAL for a in out[1:])


def test_a_window_touching_a_run_after_a_far_jump_restarts_it() -> None:
    c, _ = make()
    mib = 1024 * KiB
    first = c.classify(1, 5, 0, mib)
    c.classify(1, 5, 40 * mib, mib)  # the process faults far away
    gap = c.classify(1, 5, mib, mib // 2)  # the kernel sends the pages after the first window
    assert gap.stream_id == first.stream_id
    assert gap.label is Label.RANDOM and gap.run_length == mib // 2
    # Continued at once, with no jump between, it is a run again; begun by a jump, it takes
    # a third request to be a stream (two windows back to back happen at random).
    nxt = c.classify(1, 5, mib + mib // 2, mib)
    assert nxt.label is Label.UNKNOWN and nxt.run_length == mib + mib // 2
    third = c.classify(1, 5, 2 * mib + mib // 2, mib)
    assert third.label is Label.SEQUENTIAL and third.run_length == 2 * mib + mib // 2


def test_two_windows_back_to_back_in_a_searched_file_are_no_stream() -> None:
    c, _ = make()
    mib = 1024 * KiB
    c.classify(1, 5, 0, mib)
    far = c.classify(1, 5, 40 * mib, mib)  # a fault elsewhere in the file
    nxt = c.classify(1, 5, 41 * mib, mib // 2)  # and one just past its window
    assert far.label is Label.RANDOM and nxt.label is not Label.SEQUENTIAL


def test_a_near_request_does_not_interrupt() -> None:
    """A piece of reordered read-ahead that lands beyond the allowance but near the run
    (two requests ahead) is no jump: the run it belongs to goes on."""
    c, _ = make()
    size = 128 * KiB
    out = [c.classify(1, 5, i * size, size) for i in (0, 1, 4, 2, 3)]
    assert out[-1].stream_id == out[0].stream_id
    assert out[-1].label is not Label.RANDOM


def test_a_confirmed_stream_survives_its_process_looking_elsewhere() -> None:
    c, _ = make()
    size = 64 * KiB
    out = stream(c, 1, 5, 0, size, 6)
    c.classify(1, 5, 500 * 1024 * KiB, 4 * KiB)  # a look-up far away in the same file
    after = c.classify(1, 5, 6 * size, size)
    assert after.stream_id == out[0].stream_id
    assert after.label is Label.SEQUENTIAL and after.run_length == 7 * size


def test_another_process_jumping_does_not_interrupt_a_run() -> None:
    c, _ = make()
    mib = 1024 * KiB
    first = c.classify(1, 5, 0, mib)
    c.classify(1, 6, 40 * mib, mib)  # pid 6 reads elsewhere
    nxt = c.classify(1, 5, mib, mib)
    assert nxt.stream_id == first.stream_id and nxt.label is Label.SEQUENTIAL


def test_a_streamer_searching_a_file_it_reads_is_not_presumed_to_stream_there() -> None:
    c, _ = make()
    stream(c, 1, 42, 0, 64 * KiB, 8)
    stream(c, 2, 42, 0, 64 * KiB, 8)
    assert c.is_streamer(42)
    assert c.classify(3, 42, 0, 64 * KiB).label is Label.SEQUENTIAL  # its first request
    far = c.classify(3, 42, 300 * 1024 * KiB, 64 * KiB)  # then elsewhere in the same file
    assert far.label is not Label.SEQUENTIAL


def test_a_streamer_starting_over_on_a_file_it_streamed_is_presumed() -> None:
    """The next epoch: a loader that read a shard to its end reads it again from the start."""
    c, _ = make()
    stream(c, 1, 42, 0, 64 * KiB, 8)
    stream(c, 2, 42, 0, 64 * KiB, 8)
    assert c.is_streamer(42)
    assert c.classify(1, 42, 0, 64 * KiB).label is Label.SEQUENTIAL


def test_late_piece_far_behind_fills_its_gap() -> None:
    """1 MiB read-ahead delivered out of order: the piece after the gap arrives first and the
    late one is two requests behind the run's end, past the (capped) reorder allowance."""
    c, _ = make()
    mib = 1024 * KiB
    out = [c.classify(1, 5, i * mib, mib) for i in (0, 1, 3, 2, 4)]
    assert len({a.stream_id for a in out}) == 1
    assert all(a.label is Label.SEQUENTIAL for a in out[1:])
    assert out[-1].run_length == 5 * mib


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
