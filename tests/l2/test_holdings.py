"""Holdings over the gossip (l2/holdings.py): packed, chunked under the datagram limit,
assembled only when whole; and between two real Members on loopback, thousands of addresses
arrive without one oversized datagram, while a forged or garbled chunk changes nothing."""

from __future__ import annotations

import ipaddress
import time

import pytest

from controlplane.l2.holdings import CHUNK, MAX_CHUNKS, Assembler, chunks, pack, unpack
from controlplane.l2.members import MAX_DATAGRAM, Members, MembersConfig, seal
from tests.l2.test_members import KEY, free_ports


def v4(n: int) -> set[str]:
    return {str(ipaddress.ip_address(0x0A000000 + i)) for i in range(n)}


def v6(n: int) -> set[str]:
    return {str(ipaddress.ip_address((0xFD00 << 112) + i)) for i in range(n)}


def test_pack_round_trips_both_families_and_refuses_garbage():
    ips = v4(3) | v6(3)
    assert unpack(pack(ips)) == ips
    assert pack(["10.0.0.2", "10.0.0.1"]) == pack({"10.0.0.1", "10.0.0.2"})  # canonical
    for bad in (b"\x05abcde", b"\x04abc", b"\x10" + b"x" * 15):
        with pytest.raises(ValueError):
            unpack(bad)


@pytest.mark.parametrize("ips", [set(), v4(1), v4(500), v6(300), v4(700) | v6(700)])
def test_chunks_end_on_addresses_and_reassemble_in_any_order(ips):
    version, parts = chunks(ips)
    assert all(len(p) <= CHUNK for p in parts) and len(parts) <= MAX_CHUNKS
    assert all(unpack(p) <= ips for p in parts)  # each chunk whole addresses
    a = Assembler()
    done = [a.add(version, i, len(parts), p) for i, p in reversed(list(enumerate(parts)))]
    assert done[-1] and not any(done[:-1]) and a.ips == ips and a.version == version
    assert a.add(version, 0, len(parts), parts[0]) is False  # heard again: nothing new


def test_a_half_heard_change_never_counts_and_a_wrong_hash_is_refused():
    a = Assembler()
    old_v, old = chunks(v4(300))
    for i, p in enumerate(old):
        a.add(old_v, i, len(old), p)
    new_v, new = chunks(v4(400))
    assert len(new) > 1
    a.add(new_v, 0, len(new), new[0])
    assert a.ips == v4(300)  # the new version is not whole yet
    with pytest.raises(ValueError):  # the last chunk of another set: the hash does not hold
        fake = [new[0]] + [b"\x04\x01\x02\x03\x04"] * (len(new) - 1)
        for i in range(1, len(new)):
            a.add(new_v, i, len(new), fake[i])
    assert a.ips == v4(300)
    for bad in ((new_v, 0, 0, b""), (new_v, 5, 3, b""), (new_v, 0, MAX_CHUNKS + 1, b"")):
        with pytest.raises(ValueError):
            a.add(*bad)
    with pytest.raises(ValueError):
        a.add(new_v, 0, 1, b"x" * (CHUNK + 1))


def pair():
    p1, p2 = free_ports(2)
    one = Members(
        MembersConfig("node-1", "127.0.0.1", p1, KEY, peers={"node-2": ("127.0.0.2", p2)})
    )
    two = Members(
        MembersConfig("node-2", "127.0.0.2", p2, KEY, peers={"node-1": ("127.0.0.1", p1)})
    )
    return one, two


def test_thousands_of_addresses_cross_the_gossip_under_the_datagram_limit(monkeypatch):
    import controlplane.l2.members as members_module

    sizes = []
    real_seal = members_module.seal

    def measured(*args, **kw):
        data = real_seal(*args, **kw)
        sizes.append(len(data))
        return data

    monkeypatch.setattr(members_module, "seal", measured)
    one, two = pair()
    ips = v4(1500) | v6(500)
    for m in (one, two):
        m.start()
    try:
        start = time.monotonic()
        one.set_holdings(ips)
        while two.holdings().get("node-1") != ips:
            assert time.monotonic() - start < 10, two.refused
            time.sleep(0.02)
        took = time.monotonic() - start
        one.set_holdings(ips - v4(10))
        while two.holdings().get("node-1") != ips - v4(10):
            assert time.monotonic() - start < 10, two.refused
            time.sleep(0.02)
        print(f"2000 addresses in {len(chunks(ips)[1])} chunks heard in {took:.2f}s; largest "
              f"datagram {max(sizes)} bytes")  # fmt: skip
        assert max(sizes) <= MAX_DATAGRAM and two.refused["oversized"] == 0
        assert two.refused["bad_holdings"] == 0
        assert "node-1" in two.alive()
    finally:
        for m in (one, two):
            m.stop()


def test_a_garbled_chunk_is_counted_and_the_member_stays_alive():
    one, two = pair()
    for m in (one, two):
        m.start()
    try:
        one.set_holdings(v4(3))
        deadline = time.monotonic() + 5
        while two.holdings().get("node-1") != v4(3):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        # node-1's key, node-1's address, a garbled chunk: counted, nothing else changes
        for chunk in ([1, 0, 1, "text"], [1, 9, 2, b""], "junk", [1, 0, 1, b"\x07zzzzzzz"]):
            # node-1's own counter, under its lock and sent before it may stamp another:
            # else its gossip thread could stamp the same number (or send a higher one
            # first) and this datagram be refused as replayed (seen under load)
            with one.lock:
                one.sent += 1
                msg = {"t": "news", "from": "node-1", "g": [], "b": one.boot, "c": one.sent,
                       "h": chunk}  # fmt: skip
                one.sock.sendto(seal(KEY, msg), ("127.0.0.2", two.cfg.port))
        deadline = time.monotonic() + 5
        while two.refused["bad_holdings"] < 4:
            assert time.monotonic() < deadline, two.refused
            time.sleep(0.02)
        assert two.holdings()["node-1"] == v4(3) and "node-1" in two.alive()
    finally:
        for m in (one, two):
            m.stop()
