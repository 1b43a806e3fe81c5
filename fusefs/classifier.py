"""The access classifier: is this read part of a stream, or a random read?

This module owns the per-request access label that the tiering policy acts on. Every read
request (file id, pid, offset, size) is matched against the streams open on that file, and
labelled ``sequential``, ``random`` or ``unknown`` together with its evidence: the stream it
belongs to and the bytes that stream has covered.

Why streams and not files: one shard is often read by several loader workers at once, each
at its own position, so a file carries several interleaved streams. Each stream is keyed by
the offset it is expected to read next. The kernel splits read-ahead into several requests
and may deliver them out of order, so a request that lands a little after the expected
offset, or a little before it, still continues the stream (the *reorder allowance*, a few
times the stream's largest request, capped).

Why processes: a training loader that streamed its last shard will stream the next one. A
running average of run lengths per process lets its first request on a new file be labelled
``sequential`` instead of waiting for the run to build up. Only runs of two requests or
more count as runs there (a lone read-around window is evidence of nothing), and it is not
presumed where it searches: a process that lands elsewhere in a file where it has a run
still short of confirmed (below) is searching it.

Why jumps matter (random access through ``mmap``): each page fault becomes one read-around
window centred on the fault, trimmed by the kernel to the pages it does not hold yet. Once
part of the file is cached, a fault between two cached windows sends exactly the gap, so it
starts where an earlier window ended: contiguous with a run, though the process has been
reading all over the file since. So when a process starts a new run far from one of its
own runs on the same file (farther than twice that run's reorder allowance), that run is
*interrupted*; a request that then lands at its end restarts the run there (labelled
``random``) instead of lengthening it. A stream that advanced ``_CONFIRMED`` times without
an interruption is confirmed and no longer interrupted: a reader that scans a file and
looks something up elsewhere in it between two reads still streams. And a run that a
process starts (or restarts) by such a jump needs three requests, not two, to be a
stream: two windows back to back, the second for a fault that landed just past the first,
happen at random; three seldom do.

The labels:

* ``sequential``: the request continues a stream whose run covers at least
  ``sequential_cutoff`` bytes, or it comes from a process recognised as a streamer. Once
  sequential, a stream stays so until an interruption restarts it (above). One request,
  however large, is not a stream: random page faults on an ``mmap``-ed file (a FAISS
  index, an embedding table) arrive as the kernel's read-around windows, one large request
  each (up to the mount's read-ahead, 1 MiB) at a random place, and continued by nothing.
* ``unknown``: too few requests yet: the first request on a file nobody has read yet, or a
  stream still growing below the cutoff.
* ``random``: a request that continues no stream of a file already being read, that lands
  at the end of an interrupted run, or that re-reads bytes its stream has covered (a
  re-read never lengthens a run, so a hot page read over and over does not turn into a
  "stream").

Cost: O(1) per request (a bounded scan of at most ``max_streams_per_file`` streams) and
bounded memory: files, streams per file and processes are capped and the least recently
used is dropped. Time comes from an injected clock, so idle expiry is testable without
sleeping.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

from .access import Label

__all__ = ["Access", "Classifier", "Label"]

# Advances after which a run is a confirmed stream: a far jump of its process on the same
# file no longer restarts it (a reader that scans and looks things up elsewhere in the
# file between two requests still streams). Below it, a jump does: two random windows
# that happen to touch are a run of two.
_CONFIRMED = 4


class Access(NamedTuple):
    """The classifier's verdict on one request, with its evidence.

    Attributes:
        label: The access class.
        stream_id: The stream the request was attributed to (unique per classifier).
        run_length: Bytes the stream has covered so far, this request included.
    """

    label: Label
    stream_id: int
    run_length: int


class _Stream:
    """One run of contiguous reads on one file."""

    __slots__ = ("id", "pid", "start", "next", "max_size", "last", "sequential", "sampled",
                 "advances", "holes", "jumped", "searched")

    def __init__(self, stream_id: int, pid: int, offset: int, size: int, now: float) -> None:
        self.id = stream_id
        self.pid = pid
        self.start = offset
        self.next = offset + size
        self.max_size = size
        self.last = now
        self.sequential = False
        # Set once the run has been reported to its process's average at the cutoff.
        self.sampled = False
        # Later requests that advanced it: one or more is a run, not one lone request;
        # `_CONFIRMED` or more is a stream no jump of its process interrupts any more.
        self.advances = 0
        # Gaps [start, end) skipped ahead and not yet filled by the late piece that
        # starts exactly there: a stream with a gap is not (yet) sequential; random windows
        # that happen to land ahead leave gaps that nothing fills.
        self.holes: list[list[int]] = []
        # Its process jumped far away on this file since the stream's last request: a
        # request that lands at ``next`` now is a random fault's window that happens to
        # touch this run (the kernel trims read-around to the pages it lacks), not a
        # continuation.
        self.jumped = False
        # Started by a jump of its process within a file it was already reading (or
        # restarted by one): it takes a third request to call it a stream, as two windows
        # of random faults may happen to lie back to back.
        self.searched = False


def _starts_a_gap(holes: list[list[int]], offset: int) -> bool:
    for gap in holes:
        if gap[0] == offset:
            return True
    return False


class _PidStats:
    """Running average of the run lengths one process produced."""

    __slots__ = ("avg", "long", "runs")

    def __init__(self) -> None:
        self.avg = 0.0
        # Running share of its runs that reached the cutoff: one lucky long run among
        # many lone requests (random mmap faults) does not make a streamer.
        self.long = 0.0
        self.runs = 0

    def streams(self, cutoff: int) -> bool:
        # Two runs at least: one long run may be the kernel reading ahead of a random
        # reader's mmap fault; a loader's second shard is where the saving starts anyway.
        return self.runs > 1 and self.avg >= cutoff and self.long >= 0.5


class Classifier:
    """Labels read requests per stream, with per-process memory.

    Args:
        sequential_cutoff: A stream is ``sequential`` once it has covered this many bytes,
            or from its first request if its process is a known streamer (its average run
            length is at least this).
        max_streams_per_file: Streams tracked per file; beyond it the least recently used
            (non-sequential first) is dropped.
        stream_idle: Seconds after which a stream that saw no request is forgotten.
        reorder_factor: The reorder allowance is this many times the stream's largest
            request, before and after the expected offset.
        reorder_max: Upper bound of the reorder allowance in bytes.
        max_files: Files tracked; the least recently read is dropped beyond it.
        max_pids: Processes tracked; the least recently seen is dropped beyond it.
        pid_alpha: Weight of a new run in the per-process exponential average.
        clock: Monotonic time source in seconds (injected for tests and replay).
    """

    def __init__(
        self,
        *,
        sequential_cutoff: int = 256 * 1024,
        max_streams_per_file: int = 8,
        stream_idle: float = 5.0,
        reorder_factor: int = 4,
        reorder_max: int = 1024 * 1024,
        max_files: int = 4096,
        max_pids: int = 1024,
        pid_alpha: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if sequential_cutoff <= 0:
            raise ValueError("sequential_cutoff must be positive")
        if max_streams_per_file < 1 or max_files < 1 or max_pids < 1:
            raise ValueError("max_streams_per_file, max_files and max_pids must be at least 1")
        if not 0.0 < pid_alpha <= 1.0:
            raise ValueError("pid_alpha must be in (0, 1]")
        self._cutoff = sequential_cutoff
        self._max_streams = max_streams_per_file
        self._idle = stream_idle
        self._reorder_factor = reorder_factor
        self._reorder_max = reorder_max
        self._max_files = max_files
        self._max_pids = max_pids
        self._alpha = pid_alpha
        self._clock = clock
        self._files: OrderedDict[int, list[_Stream]] = OrderedDict()
        self._pids: OrderedDict[int, _PidStats] = OrderedDict()
        self._next_stream_id = 1
        self._n_streams = 0
        self._requests = {Label.SEQUENTIAL: 0, Label.RANDOM: 0, Label.UNKNOWN: 0}
        self._bytes = {Label.SEQUENTIAL: 0, Label.RANDOM: 0, Label.UNKNOWN: 0}
        self._streams_created = 0
        self._streams_expired = 0
        self._streams_dropped = 0
        self._pid_recognised = 0

    @property
    def sequential_cutoff(self) -> int:
        """Bytes a stream must cover to be labelled sequential."""
        return self._cutoff

    def classify(self, file_id: int, pid: int, offset: int, size: int) -> Access:
        """Observe one read request and label it.

        Args:
            file_id: The file (inode or catalog id) being read.
            pid: The process that issued the request (FUSE passes it with every request).
            offset: Byte offset of the request.
            size: Bytes requested.

        Returns:
            The label, the stream the request belongs to and that stream's run length.
        """
        now = self._clock()
        files = self._files
        streams = files.get(file_id)
        if streams is None:
            new_file = True
            streams = []
            files[file_id] = streams
            if len(files) > self._max_files:
                _, dropped = files.popitem(last=False)
                for s in dropped:
                    self._end_stream(s, expired=False)
        else:
            new_file = False
            files.move_to_end(file_id)

        pstats = self._pids.get(pid)
        if pstats is None:
            pstats = _PidStats()
            self._pids[pid] = pstats
            if len(self._pids) > self._max_pids:
                self._pids.popitem(last=False)
        else:
            self._pids.move_to_end(pid)
        streamer = pstats.streams(self._cutoff)

        # One pass over the (few) streams: drop the idle ones, find the closest match.
        best: _Stream | None = None
        best_dist = 0
        idle_seen = False
        # This process's unconfirmed runs here, and those of them far from this request:
        # interrupted if it continues none (found in the same pass, to keep it cheap).
        own = False
        far_own: list[_Stream] | None = None
        for s in streams:
            if now - s.last > self._idle:
                idle_seen = True
                continue
            delta = offset - s.next
            allowance = s.max_size * self._reorder_factor
            if allowance > self._reorder_max:
                allowance = self._reorder_max
            # Ahead: at most one request may be missing (delivered late). Behind: a late
            # piece lies wholly behind; one that overlaps the covered bytes and runs past
            # them is how the kernel's read-around windows of random mmap faults look. The
            # piece that starts exactly where a gap does is late, however far behind.
            if (0 <= delta <= min(allowance, s.max_size)
                    or (-allowance <= delta < 0 and offset + size <= s.next)
                    or (delta < 0 and s.holes and _starts_a_gap(s.holes, offset))):
                dist = delta if delta >= 0 else -delta
                if best is None or dist < best_dist:
                    best = s
                    best_dist = dist
            elif s.pid == pid and s.advances < _CONFIRMED:
                own = True
                if delta > 2 * allowance or delta < -2 * allowance:
                    if far_own is None:
                        far_own = [s]
                    else:
                        far_own.append(s)
        if idle_seen:
            keep = []
            for s in streams:
                if now - s.last > self._idle:
                    self._end_stream(s, expired=True)
                else:
                    keep.append(s)
            streams[:] = keep

        if best is not None and best.jumped:
            # Adjacent by chance, after the process read far away: the run starts again here.
            s = best
            owner = self._pids.get(s.pid)
            if owner is not None:
                self._add_sample(owner, s.next - s.start if s.advances and not s.holes else 0)
            s.jumped = False
            s.searched = True
            s.sequential = False
            s.start = offset
            s.next = offset + size
            s.holes.clear()
            s.advances = 0
            if size > s.max_size:
                s.max_size = size
            s.last = now
            run = size
            label = Label.RANDOM
        elif best is not None:
            s = best
            end = offset + size
            advanced = end > s.next
            if offset > s.next:
                s.holes.append([s.next, offset])
            elif s.holes and end <= s.next:
                for gap in s.holes:
                    if gap[0] == offset:  # the late piece: it starts where the gap does
                        gap[0] = end
                        if end >= gap[1]:
                            s.holes.remove(gap)
                        break
            if advanced:
                s.next = end
                s.advances += 1
            if size > s.max_size:
                s.max_size = size
            s.last = now
            run = s.next - s.start
            if s.sequential:
                label = Label.SEQUENTIAL
            elif ((run >= self._cutoff and not s.holes and (s.advances > 1 or not s.searched))
                  or (streamer and not s.searched)):
                s.sequential = True
                label = Label.SEQUENTIAL
                self._sample_crossing(s, run)
                if streamer and run < self._cutoff:
                    self._pid_recognised += 1
            elif advanced:
                # Growing but still short: it may become a stream.
                label = Label.UNKNOWN
            else:
                # Re-reading what the stream already covered: a random pattern.
                label = Label.RANDOM
        else:
            # A jump: this process's other runs on the file are interrupted if it landed
            # far from them (a late piece of reordered read-ahead lands near). A process
            # with such a run on this file that lands elsewhere is not presumed to stream
            # there: a streamer that turns to searching an index does exactly that (one
            # that finished a stream here and starts over is on its next epoch).
            if far_own is not None:
                for o in far_own:
                    o.jumped = True
            if len(streams) >= self._max_streams:
                self._drop_one(streams)
            s = _Stream(self._next_stream_id, pid, offset, size, now)
            self._next_stream_id += 1
            self._n_streams += 1
            self._streams_created += 1
            streams.append(s)
            s.searched = own
            run = size
            if streamer and not own:
                s.sequential = True
                label = Label.SEQUENTIAL
                self._pid_recognised += 1
            elif new_file:
                label = Label.UNKNOWN
            else:
                # The file is being read and this request continues none of its streams.
                label = Label.RANDOM

        self._requests[label] += 1
        self._bytes[label] += size
        return Access(label, s.id, run)

    def forget_file(self, file_id: int) -> None:
        """Drop all streams of a file (closed for good, invalidated, or unlinked).

        Their runs still count towards their processes' averages.
        """
        streams = self._files.pop(file_id, None)
        if streams:
            for s in streams:
                self._end_stream(s, expired=False)

    def is_streamer(self, pid: int) -> bool:
        """Whether a process is currently recognised as streaming (for stats and tests)."""
        pstats = self._pids.get(pid)
        return pstats is not None and pstats.streams(self._cutoff)

    def stats(self) -> dict[str, int]:
        """Counters by label and the sizes of the tracked state.

        Returns:
            ``requests_<label>`` and ``bytes_<label>`` for each label, the stream counters
            (``streams_created``, ``streams_expired``, ``streams_dropped``), how many
            first requests were labelled sequential thanks to their process
            (``pid_recognised``), and the current ``files_tracked``, ``streams_tracked``
            and ``pids_tracked``.
        """
        out: dict[str, int] = {}
        for label in Label:
            out[f"requests_{label.value}"] = self._requests[label]
            out[f"bytes_{label.value}"] = self._bytes[label]
        out["streams_created"] = self._streams_created
        out["streams_expired"] = self._streams_expired
        out["streams_dropped"] = self._streams_dropped
        out["pid_recognised"] = self._pid_recognised
        out["files_tracked"] = len(self._files)
        out["streams_tracked"] = self._n_streams
        out["pids_tracked"] = len(self._pids)
        return out

    # -- internals -------------------------------------------------------------------------

    def _drop_one(self, streams: list[_Stream]) -> None:
        # A stream that is already sequential is worth more than a one-request "stream" of a
        # random reader, so random ones go first; among equals the least recently used.
        victim_idx = -1
        victim_seq = True
        victim_last = 0.0
        for i, s in enumerate(streams):
            better = (
                victim_idx < 0
                or (victim_seq and not s.sequential)
                or (victim_seq == s.sequential and s.last < victim_last)
            )
            if better:
                victim_idx, victim_seq, victim_last = i, s.sequential, s.last
        victim = streams.pop(victim_idx)
        self._end_stream(victim, expired=False)

    def _end_stream(self, s: _Stream, *, expired: bool) -> None:
        self._n_streams -= 1
        if expired:
            self._streams_expired += 1
        else:
            self._streams_dropped += 1
        pstats = self._pids.get(s.pid)
        if pstats is not None:
            self._add_sample(pstats, s.next - s.start if s.advances and not s.holes else 0)

    def _sample_crossing(self, s: _Stream, run: int) -> None:
        # A long run is reported when it becomes sequential, so its process is recognised
        # as a streamer before the stream ends (a loader moves on to the next shard at once,
        # long before the idle expiry); it is counted again with its final length at the end.
        if not s.sampled:
            s.sampled = True
            pstats = self._pids.get(s.pid)
            if pstats is not None:
                self._add_sample(pstats, run)

    def _add_sample(self, pstats: _PidStats, run: int) -> None:
        is_long = 1.0 if run >= self._cutoff else 0.0
        if pstats.runs == 0:
            pstats.avg = float(run)
            pstats.long = is_long
        else:
            pstats.avg += self._alpha * (run - pstats.avg)
            pstats.long += self._alpha * (is_long - pstats.long)
        pstats.runs += 1
