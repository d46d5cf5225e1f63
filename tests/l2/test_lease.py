"""Leader election on a Lease through the real client: never two leaders, a clean stop hands
over at once, a crashed leader is replaced after the lease duration."""

from __future__ import annotations

import threading
import time

import pytest
from kubernetes import client

from controlplane.l2.lease import LeaseElector
from tests.helpers import wait_until
from tests.k8s.apiserver import ApiServer

# long enough that a generous bound on a clean handover (a busy 2-core machine) still tells
# it from a crash's takeover, which must wait out the duration
TIMINGS = {"duration": 3.0, "renew_deadline": 2.0, "retry": 0.1}


@pytest.fixture
def api():
    server = ApiServer()
    yield server
    server.close()


def electors(api, n):
    cfg = client.Configuration()
    cfg.host = api.url
    out = [LeaseElector(client.ApiClient(cfg), f"node-{i + 1}", **TIMINGS) for i in range(n)]
    for e in out:
        e.start()
    return out


class Watch(threading.Thread):
    """Samples who leads every 5 ms; remembers the largest number of leaders at once."""

    def __init__(self, electors):
        super().__init__(daemon=True)
        self.electors, self.most, self.stopping = electors, 0, threading.Event()

    def run(self):
        while not self.stopping.wait(0.005):
            self.most = max(self.most, sum(e.leading for e in self.electors))

    def leader(self):
        leaders = [e for e in self.electors if e.leading]
        return leaders[0] if len(leaders) == 1 else None


def test_one_leader_a_clean_stop_hands_over_at_once_a_crash_after_the_duration(api):
    trio = electors(api, 3)
    watch = Watch(trio)
    watch.start()
    try:
        wait_until(watch.leader)
        first = watch.leader()
        time.sleep(TIMINGS["duration"] + 0.5)
        assert watch.leader() is first  # renewals keep it past a duration; nobody takes it
        first.stop()  # clean: the Lease is given up
        took = wait_until(lambda: watch.leader() not in (None, first))
        print(f"clean handover after {took:.2f}s")
        assert took < TIMINGS["duration"] / 2  # at once, not after the duration
        second = watch.leader()
        second.stopping.set()  # a crash: no more renewals, nothing given up
        second.thread.join()
        took = wait_until(lambda: watch.leader() not in (None, second))
        print(f"takeover from a crashed leader after {took:.2f}s (duration 3.0 s)")
        assert TIMINGS["duration"] - 0.1 <= took < 2 * TIMINGS["duration"]
        lease = next(iter(api.objects["/apis/coordination.k8s.io/v1/leases"].values()))
        assert lease["spec"]["holderIdentity"] == watch.leader().identity
        assert lease["spec"]["leaseTransitions"] == 2
        assert watch.most == 1  # never two at once
    finally:
        watch.stopping.set()
        for e in trio:
            e.stop()


def test_an_unreachable_api_server_ends_leadership_before_anyone_may_take_over(api):
    (only,) = electors(api, 1)
    try:
        wait_until(lambda: only.leading)
        api.down = True
        lost = wait_until(lambda: not only.leading)
        print(f"leadership ended {lost:.2f}s after the server went (renew deadline 2.0 s)")
        assert lost < TIMINGS["duration"]  # before another may take over
        assert only.error  # and it says why
        api.down = False
        wait_until(lambda: only.leading)
    finally:
        only.stop()
