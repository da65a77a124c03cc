"""A client token without ``exp`` would never expire: a node refuses it in the hello
unless started with ``--allow-tokens-without-exp``; every token we mint has one."""

from __future__ import annotations

import json
import time

import pytest

from cli.main import build_parser
from cli.node import config_from_args
from node.token import mint, verify
from tests.cli.test_cli import grapevine
from tests.push.test_client_server import SECRET, client_node, closed_with, connect, receive


@pytest.mark.parametrize("allowed", [False, True])
async def test_a_hello_with_a_token_without_exp(allowed: bool) -> None:
    async with client_node(allow_tokens_without_exp=allowed) as node, connect(node) as ws:
        forever = mint(SECRET.encode(), "alice", time.time(), None)
        await ws.send_message(json.dumps({"t": "hello", "token": forever}))
        answer = await receive(ws)
        if allowed:
            assert answer["t"] == "welcome", answer
        else:
            assert answer["t"] == "error" and answer["code"] == "unauthorized", answer
            assert "--allow-tokens-without-exp" in answer["reason"]
            assert await closed_with(ws) is not None


def test_the_flag_reaches_the_config() -> None:
    parser = build_parser()
    args = ["node", "--name", "n", "--api", "off"]
    assert not config_from_args(parser.parse_args(args))[0].allow_tokens_without_exp
    allowed = parser.parse_args([*args, "--allow-tokens-without-exp"])
    assert config_from_args(allowed)[0].allow_tokens_without_exp


def test_grapevine_token_mints_with_exp_by_default_and_says_what_ttl_0_means() -> None:
    result = grapevine("token", "--secret", "s", "--user", "alice")
    assert result.returncode == 0, result.stderr
    claims = verify(b"s", result.stdout.strip(), time.time())
    assert claims.expires is not None and claims.expires > time.time() + 3000
    helped = grapevine("token", "--help")
    assert "--allow-tokens-without-exp" in " ".join(helped.stdout.split())
