"""AMQP URLs: parsing, percent-decoding, options, several hosts, and the password kept secret."""

from __future__ import annotations

import pytest

from hutch.amqp.connection import _apply_options, _endpoints
from hutch.amqp.url import ConnectionParameters, parse_url

SECRET = "s3cr3t-P@ss"


def test_defaults_for_a_bare_url() -> None:
    """``amqp://host`` means guest/guest on port 5672, vhost ``/``, heartbeat 60, no TLS."""
    params = parse_url("amqp://example.org")
    assert (params.host, params.port, params.username, params.password) == (
        "example.org",
        5672,
        "guest",
        "guest",
    )
    assert params.virtual_host == "/"
    assert params.heartbeat == 60
    assert not params.tls


def test_amqps_means_tls_on_port_5671() -> None:
    """``amqps://`` turns TLS on and defaults to port 5671."""
    params = parse_url("amqps://u:p@broker")
    assert params.tls
    assert params.port == 5671


def test_user_password_and_vhost_are_percent_decoded() -> None:
    """Percent-escapes in user, password and vhost are decoded (``%2F`` is ``/``)."""
    params = parse_url("amqp://us%40er:p%3Aa%2Fss%40@h:1234/my%2Fvhost")
    assert params.username == "us@er"
    assert params.password == "p:a/ss@"
    assert params.port == 1234
    assert params.virtual_host == "my/vhost"
    assert parse_url("amqp://h/%2F").virtual_host == "/"
    assert parse_url("amqp://h/").virtual_host == "/"
    assert parse_url("amqp://h/prod").virtual_host == "prod"


def test_query_options_are_parsed_and_typed() -> None:
    """name, heartbeat, connection_timeout, channel_max and frame_max come from the query."""
    params = parse_url(
        "amqp://h/?name=my%20app&heartbeat=5&connection_timeout=2.5&channel_max=16&frame_max=8192"
    )
    assert params.name == "my app"
    assert params.heartbeat == 5
    assert params.connection_timeout == 2.5
    assert params.channel_max == 16
    assert params.frame_max == 8192


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("heartbeat=-1", "heartbeat"),
        ("heartbeat=70000", "65535"),
        ("heartbeat=abc", "heartbeat"),
        ("connection_timeout=0", "connection_timeout"),
        ("frame_max=100", "at least 4096"),
        ("channel_max=70000", "65535"),
        ("bogus=1", "unknown AMQP URL option 'bogus'"),
    ],
)
def test_bad_query_options_raise_value_error_naming_them(query: str, words: str) -> None:
    """A bad option value or an unknown option raises ``ValueError`` naming it."""
    with pytest.raises(ValueError, match=words):
        parse_url(f"amqp://h/?{query}")


def test_other_schemes_are_refused_without_echoing_the_password() -> None:
    """A URL that is not amqp/amqps raises ``ValueError`` that never shows its password."""
    with pytest.raises(ValueError, match="unsupported URL scheme") as caught:
        parse_url(f"http://user:{SECRET}@h/")
    assert SECRET not in str(caught.value)
    with pytest.raises(ValueError, match="unsupported URL scheme") as caught:
        parse_url(f"user:{SECRET}@host:5672/")
    assert SECRET not in str(caught.value)


def test_bad_port_error_does_not_show_the_password() -> None:
    """A port that is not a number is reported without the password."""
    with pytest.raises(ValueError, match="port") as caught:
        parse_url(f"amqp://user:{SECRET}@h:notaport/")
    assert SECRET not in str(caught.value)


def test_password_never_in_repr_or_str_or_safe_url() -> None:
    """repr(), str() and safe_url of the parameters mask the password."""
    params = parse_url(f"amqp://user:{SECRET.replace('@', '%40')}@h/")
    assert params.password == SECRET
    for text in (repr(params), str(params), params.safe_url):
        assert SECRET not in text
    assert "******" in params.safe_url


def test_several_hosts_in_one_url_give_one_endpoint_each() -> None:
    """``amqp://u:p@h1:1,h2:2/vh?heartbeat=3`` is two endpoints sharing credentials and options."""
    endpoints = _endpoints("amqp://u:p@h1:1111,h2:2222/vh?heartbeat=3")
    assert [(e.host, e.port) for e in endpoints] == [("h1", 1111), ("h2", 2222)]
    assert all(e.username == "u" and e.password == "p" for e in endpoints)
    assert all(e.virtual_host == "vh" and e.heartbeat == 3 for e in endpoints)
    no_path = _endpoints("amqp://u:p@h1,h2?heartbeat=4")
    assert [(e.host, e.heartbeat) for e in no_path] == [("h1", 4), ("h2", 4)]


def test_a_list_of_urls_and_parameters_is_kept_in_order() -> None:
    """A list mixing URLs and ConnectionParameters gives the endpoints in that order."""
    endpoints = _endpoints(["amqp://a", ConnectionParameters(host="b"), "amqps://c"])
    assert [e.host for e in endpoints] == ["a", "b", "c"]
    assert endpoints[2].tls


def test_keyword_options_override_the_url_and_are_validated() -> None:
    """``connect(url, heartbeat=2)`` overrides the URL; a bad keyword value raises ValueError."""
    options: dict[str, object] = {"heartbeat": 2, "name": "worker", "timeout": 3}
    [params] = _apply_options(_endpoints("amqp://h/?heartbeat=9"), options)
    assert (params.heartbeat, params.name, params.connection_timeout) == (2, "worker", 3.0)
    assert options == {}
    with pytest.raises(ValueError, match="heartbeat"):
        _apply_options(_endpoints("amqp://h/"), {"heartbeat": -5})
