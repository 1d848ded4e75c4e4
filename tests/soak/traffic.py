"""The soak's clients: threads that loop over the request mix, check every answer, and count what they saw."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.soak.probes import Disconnect, Probe, difference

WORKERS = 5  # plus the diffusion client: a moderate load for 2 cores, so no 503/504 comes from latency alone
PAUSE_S = (0.02, 0.15)  # between two requests of one client
DISCONNECT_SHARE = 0.05
BURST = 4  # concurrent DDPM requests of 8 images: past the model's capacity of 4 + 16 images (10 per front-end)


@dataclass
class Stats:
    """Every request by label and status (an HTTP status, or "closed", "timed out", an exception's name)."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    versions: Counter[tuple[str, int]] = field(default_factory=Counter)
    max_gap: float = 0.0  # the largest float difference from a solo answer
    window: Counter[tuple[str, str]] | None = None  # also counts here while open (the version swap)
    window_failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, label: str, status: int | str, problem: str | None = None, gap: float = 0.0,
               version: int | None = None) -> None:
        key = (label, str(status))
        with self.lock:
            self.counts[key] += 1
            self.max_gap = max(self.max_gap, gap)
            if version is not None:
                self.versions[(label, version)] += 1
            if problem:
                self.failures.append(f"{label} -> {status}: {problem}")
            if self.window is not None:
                self.window[key] += 1
                if problem:
                    self.window_failures.append(f"{label} -> {status}: {problem}")

    @contextmanager
    def counting_apart(self) -> Iterator[Counter[tuple[str, str]]]:
        """Count every answer that arrives inside the block apart as well."""
        window: Counter[tuple[str, str]] = Counter()
        with self.lock:
            self.window = window
        try:
            yield window
        finally:
            with self.lock:
                self.window = None


@dataclass
class Outcome:
    status: int
    value: Any = None  # what the probe reads, or the start of an unexpected answer's body
    version: int | None = None
    headers: httpx.Headers | None = None


def send(client: httpx.Client, probe: Probe) -> Outcome:
    with client.stream(probe.method, probe.path, timeout=probe.timeout, **probe.request) as response:
        if response.status_code != probe.status:
            response.read()
            return Outcome(response.status_code, response.text[:300], headers=response.headers)
        value = probe.read(response)
    version = value.pop("version", None) if isinstance(value, dict) else None  # tallied, not compared
    return Outcome(response.status_code, value, version, response.headers)


def check(client: httpx.Client, probe: Probe, solo: dict[Probe, Any], stats: Stats) -> Outcome | None:
    """Send ``probe`` and record its status, and whether the answer equals its solo answer."""
    try:
        outcome = send(client, probe)
    except Exception as exc:  # any surprise (a transport error, an answer of the wrong form) is a failure
        stats.record(probe.label, type(exc).__name__, repr(exc))
        return None
    judge(probe, outcome, solo, stats)
    return outcome


def judge(probe: Probe, outcome: Outcome, solo: dict[Probe, Any], stats: Stats) -> None:
    if outcome.status != probe.status:
        stats.record(probe.label, outcome.status, f"expected {probe.status}: {outcome.value}")
        return
    problem, gap = difference(outcome.value, solo[probe])
    stats.record(probe.label, outcome.status, problem and f"differs from the solo answer at {problem}", gap,
                 outcome.version)


def leave(client: httpx.Client, leaver: Disconnect, stats: Stats) -> None:
    """A client that goes away early; it may see its answer in time, never a 5xx or an error of its own."""
    try:
        if leaver.events is None:
            response = client.request(leaver.method, leaver.path, timeout=leaver.timeout, **leaver.request)
            stats.record(leaver.label, response.status_code, None if response.status_code == 200 else response.text)
            return
        with client.stream(leaver.method, leaver.path, timeout=leaver.timeout, **leaver.request) as response:
            if response.status_code != 200:
                response.read()
                stats.record(leaver.label, response.status_code, response.text[:300])
                return
            events = 0
            for line in response.iter_lines():
                events += line.startswith("data: ")
                if events >= leaver.events:
                    break
        stats.record(leaver.label, "closed")
    except httpx.TimeoutException:
        stats.record(leaver.label, "timed out")
    except httpx.HTTPError as exc:
        stats.record(leaver.label, type(exc).__name__, repr(exc))


def worker(base: str, probes: list[Probe], leavers: list[Disconnect], solo: dict[Probe, Any], stats: Stats,
           stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=base) as client:
        while not stop.is_set():
            if rng.random() < DISCONNECT_SHARE:
                leave(client, rng.choice(leavers), stats)
            else:
                check(client, rng.choice(probes), solo, stats)
            stop.wait(rng.uniform(*PAUSE_S))


def burst(base: str, probes: list[Probe], solo: dict[Probe, Any], stats: Stats) -> None:
    """DDPM requests at once past the model's capacity: the 503s (queue_full, Retry-After) provoked on purpose;
    the admitted ones are checked as any other answer."""
    start, refused = threading.Barrier(len(probes)), []

    def one(probe: Probe) -> None:
        with httpx.Client(base_url=base) as client:  # a connection each, as separate clients have
            start.wait()
            try:
                outcome = send(client, probe)
            except Exception as exc:  # any surprise (a transport error, an answer of the wrong form) is a failure
                stats.record(probe.label, type(exc).__name__, repr(exc))
                return
        if outcome.status != 503:
            judge(probe, outcome, solo, stats)
            return
        refused.append(probe)
        provoked = '"type":"queue_full"' in outcome.value and outcome.headers.get("retry-after", "").isdigit()
        stats.record(probe.label, 503, None if provoked else f"not a queue_full refusal: {outcome.value}")

    threads = [threading.Thread(target=one, args=(probe,)) for probe in probes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if not refused:
        stats.record("DDPM burst", "no 503", "a burst past the capacity was never refused")


def diffusion(base: str, probes: list[Probe], bursts: list[Probe], leaver: Disconnect, solo: dict[Probe, Any],
              stats: Stats, stop: threading.Event, burst_every: float) -> None:
    """The only client of mnist-ddpm, so that its bursts never refuse another client's request by accident."""
    rng, next_burst = random.Random(99), time.monotonic() + burst_every / 2
    with httpx.Client(base_url=base) as client:
        while not stop.is_set():
            if time.monotonic() >= next_burst:
                burst(base, bursts, solo, stats)
                next_burst += burst_every
            elif rng.random() < 0.1:
                leave(client, leaver, stats)
            else:
                check(client, rng.choice(probes), solo, stats)
            stop.wait(0.5)


@contextmanager
def traffic(base: str, mix: dict[str, Any], solo: dict[Probe, Any], stats: Stats,
            burst_every: float) -> Iterator[None]:
    """Every client running for the duration of the block; the block's end stops them and waits for them."""
    stop = threading.Event()
    threads = [threading.Thread(target=worker, args=(base, mix["probes"], mix["leavers"], solo, stats, stop, i))
               for i in range(WORKERS)]
    threads.append(threading.Thread(target=diffusion, args=(base, mix["diffusion"], mix["bursts"],
                                                           mix["diffusion_leaver"], solo, stats, stop, burst_every)))
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=180)
        assert not any(thread.is_alive() for thread in threads), "a client did not stop"

