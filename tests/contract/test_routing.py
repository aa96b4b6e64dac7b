"""Contract: exchanges and bindings route the same on memory:// and on RabbitMQ."""

from __future__ import annotations

from typing import Any

import pytest

import hutch
from tests.contract.conftest import CloseWatch, Env, drain


async def test_default_exchange_routes_by_queue_name(env: Env) -> None:
    """The default exchange delivers to the queue named by the routing key, and nowhere else."""
    channel = await env.channel()
    first, second = env.queue("a"), env.queue("b")
    await channel.queue_declare(first)
    await channel.queue_declare(second)
    await channel.publish(b"to-a", first)
    assert await drain(channel, first) == [b"to-a"]
    assert await drain(channel, second) == []


async def test_direct_exchange_routes_by_exact_binding_key(env: Env) -> None:
    """A direct exchange delivers to the queues bound with exactly the routing key."""
    channel = await env.channel()
    exchange = env.exchange()
    red, blue = env.queue("red"), env.queue("blue")
    await channel.exchange_declare(exchange, "direct")
    for queue in (red, blue):
        await channel.queue_declare(queue)
    await channel.queue_bind(red, exchange, "red")
    await channel.queue_bind(blue, exchange, "blue")
    await channel.queue_bind(blue, exchange, "both")
    await channel.queue_bind(red, exchange, "both")
    for key in ("red", "blue", "both", "green"):
        await channel.publish(key.encode(), key, exchange=exchange)
    assert await drain(channel, red) == [b"red", b"both"]
    assert await drain(channel, blue) == [b"blue", b"both"]


async def test_fanout_exchange_copies_to_every_bound_queue(env: Env) -> None:
    """A fanout exchange ignores the routing key and gives each bound queue one copy."""
    channel = await env.channel()
    exchange = env.exchange()
    queues = [env.queue(f"f{i}") for i in range(3)]
    await channel.exchange_declare(exchange, "fanout")
    for queue in queues:
        await channel.queue_declare(queue)
        await channel.queue_bind(queue, exchange, "ignored")
    await channel.queue_bind(queues[0], exchange, "twice")  # still one copy
    await channel.publish(b"all", "anything", exchange=exchange)
    for queue in queues:
        assert await drain(channel, queue) == [b"all"]


TOPIC_PATTERNS = ["a.*", "a.#", "#", "*", "a.*.c", "#.c", "a.#.c", "*.*", "", "a..c", "a.*.#"]
TOPIC_KEYS = ["a", "a.b", "a.b.c", "a.c", "c", "", "a..c", "b.c", "a.b.b.c"]
# What RabbitMQ 3.10 delivers (checked by this very test against it).
TOPIC_EXPECTED = {
    "a.*": ["a.b", "a.c"],
    "a.#": ["a", "a.b", "a.b.c", "a.c", "a..c", "a.b.b.c"],
    "#": ["a", "a.b", "a.b.c", "a.c", "c", "", "a..c", "b.c", "a.b.b.c"],
    "*": ["a", "c"],
    "a.*.c": ["a.b.c", "a..c"],
    "#.c": ["a.b.c", "a.c", "c", "a..c", "b.c", "a.b.b.c"],
    "a.#.c": ["a.b.c", "a.c", "a..c", "a.b.b.c"],
    "*.*": ["a.b", "a.c", "b.c"],
    "": [""],
    "a..c": ["a..c"],
    "a.*.#": ["a.b", "a.b.c", "a.c", "a..c", "a.b.b.c"],
}


async def test_topic_exchange_matches_star_and_hash_words(env: Env) -> None:
    """``*`` matches one word, ``#`` zero or more; an empty key has no words, ``a..c`` three."""
    channel = await env.channel()
    exchange = env.exchange()
    await channel.exchange_declare(exchange, "topic")
    queues = {}
    for index, pattern in enumerate(TOPIC_PATTERNS):
        queues[pattern] = env.queue(f"t{index}")
        await channel.queue_declare(queues[pattern])
        await channel.queue_bind(queues[pattern], exchange, pattern)
    for key in TOPIC_KEYS:
        await channel.publish(key.encode(), key, exchange=exchange)
    got = {
        pattern: [body.decode() for body in await drain(channel, queue)]
        for pattern, queue in queues.items()
    }
    assert got == TOPIC_EXPECTED


async def test_headers_exchange_matches_all_any_and_with_x(env: Env) -> None:
    """A headers exchange matches on header values (``x-match`` all by default, any,
    any-with-x), a void binding value on presence, and compares types (``"1"`` is not 1)."""
    channel = await env.channel()
    exchange = env.exchange()
    await channel.exchange_declare(exchange, "headers")
    bindings: dict[str, dict[str, Any]] = {
        "all_empty": {},
        "any_empty": {"x-match": "any"},
        "all_ab": {"a": 1, "b": "2"},
        "any_ab": {"x-match": "any", "a": 1, "b": "2"},
        "void": {"a": None},
        "any_with_x": {"x-match": "any-with-x", "x-foo": "1"},
    }
    queues = {}
    for label, arguments in bindings.items():
        queues[label] = env.queue(label)
        await channel.queue_declare(queues[label])
        await channel.queue_bind(queues[label], exchange, "", arguments=arguments)
    messages = {
        "none": None,
        "a1": {"a": 1},
        "a1b2": {"a": 1, "b": "2"},
        "a_big": {"a": 100000},
        "xfoo": {"x-foo": "1"},
        "a_str": {"a": "1"},
    }
    for body, headers in messages.items():
        await channel.publish(hutch.Message(body.encode(), headers=headers), "", exchange=exchange)
    got = {
        label: [body.decode() for body in await drain(channel, queue)]
        for label, queue in queues.items()
    }
    assert got == {
        "all_empty": ["none", "a1", "a1b2", "a_big", "xfoo", "a_str"],
        "any_empty": [],
        "all_ab": ["a1b2"],
        "any_ab": ["a1", "a1b2"],
        "void": ["a1", "a1b2", "a_big", "a_str"],
        "any_with_x": ["xfoo"],
    }


async def test_exchange_to_exchange_binding_routes_through(env: Env) -> None:
    """A message goes through an exchange bound to another (and a queue reached twice gets it
    once)."""
    channel = await env.channel()
    upstream, downstream = env.exchange("up"), env.exchange("down")
    queue = env.queue()
    await channel.exchange_declare(upstream, "topic")
    await channel.exchange_declare(downstream, "fanout")
    await channel.exchange_bind(downstream, upstream, "orders.*")
    await channel.queue_declare(queue)
    await channel.queue_bind(queue, downstream)
    await channel.queue_bind(queue, upstream, "orders.new")
    await channel.publish(b"new", "orders.new", exchange=upstream)
    await channel.publish(b"other", "users.new", exchange=upstream)
    assert await drain(channel, queue) == [b"new"]
    await channel.exchange_unbind(downstream, upstream, "orders.*")
    await channel.queue_unbind(queue, upstream, "orders.new")
    with pytest.raises(hutch.Unroutable):
        await channel.publish(b"gone", "orders.new", exchange=upstream, mandatory=True)


async def test_alternate_exchange_takes_what_its_exchange_cannot_route(env: Env) -> None:
    """A message its exchange routes nowhere goes to the ``alternate-exchange`` (and so is not
    returned as unroutable)."""
    channel = await env.channel()
    main, alternate = env.exchange("main"), env.exchange("ae")
    queue = env.queue()
    await channel.exchange_declare(alternate, "fanout")
    await channel.exchange_declare(main, "direct", arguments={"alternate-exchange": alternate})
    await channel.queue_declare(queue)
    await channel.queue_bind(queue, alternate)
    await channel.publish(b"lost", "no-binding", exchange=main, mandatory=True)
    message = await channel.get(queue, no_ack=True)
    assert message is not None
    assert (message.body, message.exchange, message.routing_key) == (b"lost", main, "no-binding")


async def test_unbinding_the_last_queue_deletes_an_auto_delete_exchange(env: Env) -> None:
    """An auto-delete exchange goes away when its last binding is removed."""
    channel = await env.channel()
    exchange = env.exchange()
    queue = env.queue()
    await channel.exchange_declare(exchange, "fanout", auto_delete=True)
    await channel.queue_declare(queue)
    await channel.queue_bind(queue, exchange)
    await channel.exchange_declare(exchange, passive=True)
    await channel.queue_unbind(queue, exchange)
    with pytest.raises(hutch.NotFound, match="no exchange"):
        await channel.exchange_declare(exchange, passive=True)


async def test_deleting_an_exchange_in_use_with_if_unused_is_refused(env: Env) -> None:
    """``exchange_delete(if_unused=True)`` of an exchange with bindings is PRECONDITION_FAILED;
    a plain delete removes it and its bindings."""
    channel = await env.channel()
    exchange = env.exchange()
    queue = env.queue()
    await channel.exchange_declare(exchange, "fanout")
    await channel.queue_declare(queue)
    await channel.queue_bind(queue, exchange)
    with pytest.raises(hutch.PreconditionFailed, match="in use"):
        await channel.exchange_delete(exchange, if_unused=True)
    channel = await env.channel()
    await channel.exchange_delete(exchange)
    await channel.exchange_delete(exchange)  # deleting a missing exchange is fine
    with pytest.raises(hutch.NotFound):
        await channel.publish(b"x", "", exchange=exchange)


async def test_default_and_system_exchanges_are_protected(env: Env) -> None:
    """The default exchange cannot be declared, bound or deleted; ``amq.*`` names are reserved
    for new exchanges and queues; ``amq.direct`` can be redeclared as it is."""
    channel = await env.channel()
    with pytest.raises(hutch.AccessRefused, match="default exchange"):
        await channel.exchange_declare("", "direct")
    channel = await env.channel()
    queue = env.queue()
    await channel.queue_declare(queue)
    with pytest.raises(hutch.AccessRefused, match="default exchange"):
        await channel.queue_bind(queue, "", "key")
    channel = await env.channel()
    with pytest.raises(hutch.AccessRefused, match="reserved prefix"):
        await channel.exchange_declare("amq.mine", "direct")
    channel = await env.channel()
    with pytest.raises(hutch.AccessRefused, match="reserved prefix"):
        await channel.queue_declare("amq.mine")
    channel = await env.channel()
    await channel.exchange_declare("amq.direct", "direct", durable=True)
    with pytest.raises(hutch.AccessRefused, match="system exchange"):
        await channel.exchange_delete("amq.direct")


async def test_publishing_to_an_internal_exchange_is_refused(env: Env) -> None:
    """An internal exchange only takes messages from other exchanges: publishing to it is
    ACCESS_REFUSED, and closes the channel."""
    channel = await env.channel()
    exchange = env.exchange()
    await channel.exchange_declare(exchange, "fanout", internal=True)
    watch = CloseWatch(channel)
    with pytest.raises(hutch.AccessRefused, match="internal exchange"):
        await channel.publish(b"x", "", exchange=exchange)
    assert isinstance(await watch.error(), hutch.AccessRefused)


async def test_binding_to_missing_exchange_or_queue_is_not_found(env: Env) -> None:
    """Binding names a missing exchange or queue: NOT_FOUND with RabbitMQ's text."""
    channel = await env.channel()
    queue = env.queue()
    await channel.queue_declare(queue)
    missing = env.exchange("missing")
    with pytest.raises(hutch.NotFound, match=f"no exchange '{missing}' in vhost '/'"):
        await channel.queue_bind(queue, missing, "k")
    channel = await env.channel()
    with pytest.raises(hutch.NotFound, match=f"no queue '{queue}.nope' in vhost '/'"):
        await channel.queue_bind(f"{queue}.nope", "amq.direct", "k")


async def test_an_unknown_exchange_type_is_command_invalid(env: Env) -> None:
    """Declaring an exchange of a type the broker does not know is refused with 503
    COMMAND_INVALID. RabbitMQ makes that a connection error and closes the connection; the
    memory broker deliberately closes only the channel: it has no plugins whose types a program
    might probe for, and losing the connection would only take the test's other channels down."""
    connection = await env.connect()
    channel = await connection.channel()
    if env.is_memory:
        with pytest.raises(hutch.ChannelClosed, match="unknown exchange type 'x-weird'"):
            await channel.exchange_declare(env.exchange(), "x-weird")
        assert not connection.is_closed
    else:
        with pytest.raises(hutch.ConnectionLost, match="unknown exchange type 'x-weird'"):
            await channel.exchange_declare(env.exchange(), "x-weird")
    assert channel.is_closed
