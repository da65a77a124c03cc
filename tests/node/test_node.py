"""Whole nodes in one trio process on 127.0.0.1: gossip, leave, the HTTP API, metrics."""

from __future__ import annotations

import gc
import random

import pytest
import trio

from cli.main import main as cli_main
from gossip.codec import Envelope
from gossip.keyring import Keyring, format_key
from gossip.stream import StreamReader
from gossip.wire import Err
from membership.member import MemberState

from .helpers import http, local_config, start_node, states, wait_until

A, L = MemberState.ALIVE, MemberState.LEFT


async def test_three_nodes_converge_and_a_graceful_leave_is_seen_as_left() -> None:
    async with trio.open_nursery() as nursery:
        first = await start_node(nursery, local_config("a"))
        seed = "{}:{}".format(*first.membership.address)
        others = [await start_node(nursery, local_config(n, join=(seed,))) for n in ("b", "c")]
        nodes = [first, *others]
        with trio.fail_after(10):
            await wait_until(nodes, lambda: all(
                states(n) == {"a": A, "b": A, "c": A} for n in nodes
            ))
        others[1].request_stop()
        with trio.fail_after(10):
            await wait_until(nodes[:2], lambda: all(states(n)["c"] is L for n in nodes[:2]))
        nursery.cancel_scope.cancel()


async def test_encrypted_nodes_talk_and_a_wrong_key_cannot_join() -> None:
    key, wrong = b"k" * 32, b"w" * 32
    async with trio.open_nursery() as nursery:
        first = await start_node(nursery, local_config("a"), keyring=Keyring([key]))
        seed = "{}:{}".format(*first.membership.address)
        second = await start_node(nursery, local_config("b", join=(seed,)), keyring=Keyring([key]))
        outsider = await start_node(
            nursery, local_config("x", join=(seed,)), keyring=Keyring([wrong])
        )
        with trio.fail_after(10):
            await wait_until([first, second], lambda: states(first).get("b") is A)
            # the outsider's join stream is refused, and it retries with backoff
            await wait_until([outsider], lambda: outsider.membership.statistics().counters.get(
                "streams_failed_join", 0) >= 1)
        assert "x" not in states(first)
        assert not outsider.membership.statistics().joined
        nursery.cancel_scope.cancel()


async def test_http_api_members_status_and_errors() -> None:
    async with trio.open_nursery() as nursery:
        node = await start_node(nursery, local_config("api-node", tags=(("zone", "z1"),)))
        api = node.api_address
        status, body = await http(api, "GET", "/v1/members")
        assert status == 200
        [member] = body["members"]
        assert member["name"] == "api-node" and member["state"] == "alive"
        assert member["tags"] == {"zone": "z1", "role": "grapevine",
                                  "peer": "{}:{}".format(*node.peer_address)}
        assert member["protocol"] == [1, 5, 2]
        status, body = await http(api, "GET", "/v1/status")
        assert status == 200 and body["name"] == "api-node" and body["members"]["alive"] == 1
        assert (await http(api, "GET", "/healthz"))[0] == 200
        assert (await http(api, "GET", "/nope"))[0] == 404
        assert (await http(api, "DELETE", "/v1/members"))[0] == 405
        status, body = await http(api, "POST", "/v1/join", b"{not json")
        assert status == 400 and "JSON" in body["error"]
        status, body = await http(api, "POST", "/v1/join", {"addresses": []})
        assert status == 400 and "addresses" in body["error"]
        status, body = await http(api, "POST", "/v1/join", {"addresses": ["nonsense"]})
        assert status == 400
        status, body = await http(api, "POST", "/v1/keyring", {"install": format_key(b"k" * 16)})
        assert status == 409
        status, body = await http(api, "POST", "/v1/join", b"x" * 70000)
        assert status == 413
        nursery.cancel_scope.cancel()


async def test_api_key_is_required_when_configured() -> None:
    async with trio.open_nursery() as nursery:
        node = await start_node(nursery, local_config("secure", api_key="s3cret"))
        api = node.api_address
        assert (await http(api, "GET", "/v1/members"))[0] == 401
        wrong = {"Authorization": "Bearer nope"}
        assert (await http(api, "GET", "/v1/members", headers=wrong))[0] == 401
        right = {"Authorization": "Bearer s3cret"}
        assert (await http(api, "GET", "/v1/members", headers=right))[0] == 200
        assert (await http(api, "GET", "/healthz"))[0] == 200
        nursery.cancel_scope.cancel()


async def test_keyring_rotation_through_the_api() -> None:
    first_key, second_key = b"1" * 32, b"2" * 32
    async with trio.open_nursery() as nursery:
        node = await start_node(nursery, local_config("k"), keyring=Keyring([first_key]))
        api = node.api_address
        status, body = await http(api, "POST", "/v1/keyring", {"install": format_key(second_key)})
        assert status == 200 and body["keys"] == [format_key(first_key), format_key(second_key)]
        status, body = await http(api, "POST", "/v1/keyring", {"remove": format_key(first_key)})
        assert status == 400 and "primary" in body["error"]
        status, body = await http(api, "POST", "/v1/keyring", {"use": format_key(second_key)})
        assert body["primary"] == format_key(second_key)
        status, body = await http(api, "POST", "/v1/keyring", {"remove": format_key(first_key)})
        assert status == 200 and body["keys"] == [format_key(second_key)]
        status, body = await http(api, "POST", "/v1/keyring", {"use": "bad"})
        assert status == 400
        nursery.cancel_scope.cancel()


async def test_metrics_and_status_expose_members_counters_and_stalls(
        capsys: pytest.CaptureFixture[str]) -> None:
    async with trio.open_nursery() as nursery:
        # probes time out after 0.4 s: a stall is 0.2 s or more (the local profile's 0.1 s
        # could count this test's own full collection of the process as one)
        node = await start_node(nursery, local_config("m", probe_timeout=0.4))
        status, text = await http(node.api_address, "GET", "/metrics")
        assert status == 200
        assert 'grapevine_members{state="alive"} 1.0' in text
        assert "grapevine_health_score 0.0" in text
        assert "grapevine_loop_lag_max_seconds " in text
        gc.collect()  # the node's watch times every collection of the process
        status, text = await http(node.api_address, "GET", "/metrics")
        collected = [line for line in text.splitlines()
                     if line.startswith('grapevine_gc_collections_total{generation="2"}')]
        assert collected and float(collected[0].split()[-1]) >= 1
        status, body = await http(node.api_address, "GET", "/v1/status")
        assert body["stalls"]["gc_collections"][2] >= 1
        assert body["stalls"]["loop_stalls"] == 0 and body["stalls"]["loop_stall_ms"] == 200.0
        api = "{}:{}".format(*node.api_address)
        code = await trio.to_thread.run_sync(cli_main, ["status", "--api", api])
        assert code == 0
        shown = capsys.readouterr().out.splitlines()
        assert shown[0].startswith("name:         m ")
        [stalls] = [line for line in shown if line.startswith("stalls:")]
        assert " 0 stalls (over 200 ms); gc " in stalls
        nursery.cancel_scope.cancel()


async def test_leave_through_the_api_stops_the_node() -> None:
    async with trio.open_nursery() as nursery:
        node = await start_node(nursery, local_config("bye"))
        status, body = await http(node.api_address, "POST", "/v1/leave", {})
        assert status == 202 and body == {"leaving": "bye"}
        with trio.fail_after(5):
            await node.wait_stop_requested()


async def test_garbage_on_the_gossip_ports_is_dropped_and_the_node_keeps_working() -> None:
    rng = random.Random(7)
    async with trio.open_nursery() as nursery:
        node = await start_node(nursery, local_config("sturdy"))
        host, port = node.membership.address
        # a TCP stream that is not memberlist gets an error reply, not a crash
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(b"\x63 definitely not memberlist")
            reply = b""
            with trio.fail_after(5):
                while chunk := await stream.receive_some(4096):
                    reply += chunk
        assert isinstance(StreamReader(Envelope()).feed(reply), Err)
        # random datagrams are dropped and counted
        udp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        with udp:
            for _ in range(50):
                await udp.sendto(rng.randbytes(rng.randrange(1, 1500)), (host, port))
        with trio.fail_after(5):
            await wait_until([node], lambda: node.membership.statistics().counters.get(
                "packets_received", 0) >= 50)
        counters = node.membership.statistics().counters
        assert sum(v for k, v in counters.items() if k.startswith("dropped_")) >= 45
        status, body = await http(node.api_address, "GET", "/v1/members")
        assert status == 200 and body["members"][0]["state"] == "alive"
        nursery.cancel_scope.cancel()


async def test_every_node_builds_the_same_ring_and_a_leaver_drops_out() -> None:
    async with trio.open_nursery() as nursery:
        first = await start_node(nursery, local_config("a", tags=(("weight", "2"),)))
        seed = "{}:{}".format(*first.membership.address)
        others = [await start_node(nursery, local_config(n, join=(seed,))) for n in ("b", "c")]
        nodes = [first, *others]
        with trio.fail_after(10):
            await wait_until(nodes, lambda: all(len(n.ring) == 3 for n in nodes))
        assert first.ring.nodes == {"a": 2.0, "b": 1.0, "c": 1.0}
        keys = [f"user-{i}" for i in range(500)]
        expected = [first.ring.replicas(key, 2) for key in keys]
        for node in others:
            assert [node.ring.replicas(key, 2) for key in keys] == expected
        status, body = await http(others[0].api_address, "GET", "/v1/ring?key=user-7")
        assert status == 200 and body == {"owner": expected[7][0], "replicas": expected[7]}
        status, body = await http(first.api_address, "GET", "/v1/ring")
        assert status == 200 and [n["name"] for n in body["nodes"]] == ["a", "b", "c"]
        assert body["nodes"][0]["share"] > body["nodes"][1]["share"]
        status, body = await http(first.api_address, "GET", "/v1/ring?key=")
        assert status == 400 and "key" in body["error"]
        others[1].request_stop()
        with trio.fail_after(10):
            await wait_until(nodes[:2], lambda: all(n.ring.nodes.keys() == {"a", "b"}
                                                    for n in nodes[:2]))
        nursery.cancel_scope.cancel()


def test_only_grapevine_may_claim_the_role_tag_and_weights_are_numbers() -> None:
    with pytest.raises(ValueError, match="reserved"):
        local_config("x", tags=(("role", "web"),))
    with pytest.raises(ValueError, match="weight"):
        local_config("x", tags=(("weight", "heavy"),))
    assert ("role", "grapevine") in local_config("x").with_node_tags().tags
