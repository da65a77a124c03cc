"""HS256 client tokens: minted and checked like any JWT library does."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.token import TokenError, check_user, mint, verify

SECRET = b"s3cret"
NOW = 1_800_000_000.0


def test_a_minted_token_names_its_user_and_expiry() -> None:
    token = mint(SECRET, "alice", NOW, ttl=60)
    claims = verify(SECRET, token, NOW + 10)
    assert claims.user == "alice" and claims.expires == NOW + 60 and claims.issued == NOW


def test_the_rfc_7519_style_example_from_jwt_io_verifies() -> None:
    # the HS256 example every JWT library documents (secret "your-256-bit-secret")
    token = (
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9l"
        "IiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
    )
    # it has no exp: taken only by a node that allows tokens without one
    assert verify(b"your-256-bit-secret", token, NOW, without_exp=True).user == "1234567890"
    with pytest.raises(TokenError, match="no exp"):
        verify(b"your-256-bit-secret", token, NOW)


def forge(header: dict, payload: dict, signature: bytes = b"x") -> str:
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    return f"{part(header)}.{part(payload)}.{base64.urlsafe_b64encode(signature).decode()}"


@pytest.mark.parametrize(("token", "reason"), [
    (mint(b"other", "alice", NOW), "signature"),
    (mint(SECRET, "alice", NOW - 7200, ttl=60), "expired"),
    (forge({"alg": "none"}, {"sub": "alice"}, b""), "algorithm"),
    (forge({"alg": "HS512"}, {"sub": "alice"}), "algorithm"),
    ("only.two", "not a JWT"),
    ("", "missing"),
    (None, "missing"),
    ("a" * 5000, "longer"),
    ("!!!.@@@.###", "base64"),
])
def test_bad_tokens_are_refused_with_a_reason(token: object, reason: str) -> None:
    with pytest.raises(TokenError, match=reason):
        verify(SECRET, token, NOW)


def test_a_tampered_subject_breaks_the_signature() -> None:
    header, _payload, signature = mint(SECRET, "alice", NOW).split(".")
    evil = base64.urlsafe_b64encode(b'{"sub":"mallory"}').rstrip(b"=").decode()
    with pytest.raises(TokenError, match="signature"):
        verify(SECRET, f"{header}.{evil}.{signature}", NOW)


def signed(payload: dict | str) -> str:
    """A token of ``payload`` (a dict, or JSON text as it is) signed with SECRET."""
    text = payload if isinstance(payload, str) else json.dumps(payload)
    body = base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()
    unsigned = forge({"alg": "HS256", "typ": "JWT"}, {}).split(".")[0] + "." + body
    mac = hmac.new(SECRET, unsigned.encode(), hashlib.sha256).digest()
    return unsigned + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def test_a_token_without_exp_is_refused_unless_the_node_allows_it() -> None:
    with pytest.raises(TokenError, match=r"no exp claim.*--allow-tokens-without-exp"):
        verify(SECRET, signed({"sub": "bob"}), NOW)
    with pytest.raises(TokenError, match="no exp"):
        verify(SECRET, mint(SECRET, "bob", NOW, ttl=None), NOW)
    assert verify(SECRET, signed({"sub": "bob"}), NOW, without_exp=True).expires is None


@pytest.mark.parametrize("exp", ["NaN", "Infinity", "-Infinity", "1e400", "1" + "0" * 400])
def test_an_exp_that_is_no_time_is_refused(exp: str) -> None:
    """Python's JSON reads NaN and Infinity: a NaN exp compared false, so never expired."""
    with pytest.raises(TokenError, match="exp"):
        verify(SECRET, signed(f'{{"sub": "bob", "exp": {exp}}}'), NOW)
    with pytest.raises(TokenError, match="exp"):
        verify(SECRET, signed(f'{{"sub": "bob", "exp": {exp}}}'), NOW, without_exp=True)


def test_claims_are_checked() -> None:
    assert verify(SECRET, signed({"sub": "bob", "exp": NOW + 60}), NOW).expires == NOW + 60
    for payload, reason in [
        ({"sub": "bob", "exp": NOW + 60, "nbf": NOW + 600}, "not valid yet"),
        ({"sub": "bob", "exp": "soon"}, "not a number"),
        ({"sub": "", "exp": NOW + 60}, "subject"),
        ({"sub": 42, "exp": NOW + 60}, "subject"),
        ({"exp": NOW + 60}, "subject"),
    ]:
        with pytest.raises(TokenError, match=reason):
            verify(SECRET, signed(payload), NOW)


def test_minting_refuses_nonsense() -> None:
    for args in [(b"", "u", NOW), (SECRET, "", NOW), (SECRET, "a\nb", NOW)]:
        with pytest.raises(ValueError):
            mint(*args)
    with pytest.raises(ValueError):
        mint(SECRET, "u", NOW, ttl=0)


@given(st.one_of(st.text(max_size=300), st.binary(max_size=300), st.integers()))
def test_random_input_only_ever_raises_token_error(token: object) -> None:
    with pytest.raises(TokenError):
        verify(SECRET, token, NOW)


#: what no name may hold (``node/names.py``): C0, DEL, C1, line and paragraph
#: separators, bidirectional controls, the byte order mark
_REFUSED = {*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F),
            *range(0x2066, 0x206A), 0xFEFF}


def _user_id_allowed(text: str) -> bool:
    """What a user id may be, said without check_user's shortcuts: 1-256 bytes of UTF-8,
    none of the characters that break or disguise a log line."""
    try:
        size = len(text.encode())
    except UnicodeEncodeError:  # half a surrogate pair
        return False
    return 0 < size <= 256 and not any(ord(c) in _REFUSED for c in text)


@given(st.one_of(
    st.text(st.characters(blacklist_categories=()), max_size=300),  # surrogates included
    st.text(st.characters(max_codepoint=0x7F), min_size=250, max_size=260),  # ASCII at the limit
    st.text(st.sampled_from("ab\x00\x1f\x7f\x85\x9f\xa0 é\u2028\u2029\u202e\u2066\ufeff"),
            max_size=8),
))
def test_check_user_accepts_exactly_the_ids_a_token_could_name(text: str) -> None:
    if _user_id_allowed(text):
        assert check_user(text) == text
    else:
        with pytest.raises(ValueError):
            check_user(text)
