"""An AMQP 0-9-1 connection: handshake, channels, closing, and (when robust) reconnection.

``connect()`` gives a plain connection: when it is lost, it stays lost and every waiter gets a
``ConnectionLost``. ``connect_robust()`` gives the same class with ``robust=True``: it reconnects
with capped, jittered exponential backoff (trying each broker URL in turn) and restores each of
its channels in place (see ``Channel._restore``); operations made meanwhile wait up to
``reconnect_timeout`` seconds. docs/reliability.md states the guarantees.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import random
import ssl as _ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pamqp import commands as spec

from hutch._listeners import ConnectionBase
from hutch.abc import ConnectionState
from hutch.amqp import frames
from hutch.amqp.channel import Channel
from hutch.amqp.link import Link, new_link
from hutch.amqp.url import _OPTIONS as URL_OPTIONS
from hutch.amqp.url import ConnectionParameters, parse_url
from hutch.exceptions import (
    AuthenticationError,
    ConnectError,
    ConnectionClosed,
    ConnectionLost,
    ConnectTimeout,
    HutchConnectionError,
    HutchError,
    NotFound,
    ProtocolError,
    VirtualHostError,
)

log = logging.getLogger("hutch")

# How long to wait for the broker's close-ok, then for the socket to close, when closing.
_CLOSE_TIMEOUT = 3.0
# The least time a restore retries a queue or consumer the old connection still holds
# exclusively (more with long heartbeats: the broker needs two of them to give up on it).
_LOCK_WAIT_MIN = 10.0
# A connection lost sooner than this after it was made counts as a failed attempt, so a broker
# that accepts and then drops every connection is retried with growing delays, not in a loop.
_STABLE_AFTER = 1.0


def _version() -> str:
    from hutch import __version__

    return __version__


class Connection(ConnectionBase):
    """A connection to a RabbitMQ broker. Use ``hutch.connect`` or ``hutch.connect_robust``."""

    def __init__(
        self,
        endpoints: Sequence[ConnectionParameters],
        *,
        robust: bool = False,
        client_properties: dict[str, Any] | None = None,
        ssl: _ssl.SSLContext | None = None,
        reconnect_delay: float = 0.5,
        reconnect_max_delay: float = 10.0,
        reconnect_timeout: float = 15.0,
        initial_connect_timeout: float = 15.0,
    ) -> None:
        super().__init__()
        if not endpoints:
            raise ValueError("connect_robust() needs at least one broker URL")
        for name, value in (
            ("reconnect_delay", reconnect_delay),
            ("reconnect_max_delay", reconnect_max_delay),
            ("reconnect_timeout", reconnect_timeout),
            ("initial_connect_timeout", initial_connect_timeout),
        ):
            if not value >= 0:
                raise ValueError(f"{name} must be 0 or more seconds, not {value!r}")
        self._endpoints = list(endpoints)
        self._endpoint_index = 0
        self.robust = robust
        self._client_properties = dict(client_properties or {})
        self._ssl = ssl
        self.reconnect_delay = reconnect_delay
        self.reconnect_max_delay = reconnect_max_delay
        self.reconnect_timeout = reconnect_timeout
        self.initial_connect_timeout = initial_connect_timeout
        self._state = ConnectionState.CONNECTING
        self._link: Link | None = None
        self._channels: dict[int, Channel] = {}
        self._channel_max = 2047
        self._frame_max = 131072
        self.heartbeat = 0
        self.server_properties: dict[str, Any] = {}
        self._ch0_waiter: tuple[Link, asyncio.Future[frames.Method]] | None = None
        self._close_waiter: asyncio.Future[None] | None = None
        self._handshaking: tuple[Link, ConnectionParameters] | None = None
        self._ready = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._close_task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        # Failed attempts in a row; kept across short-lived connections so a broker that
        # accepts and then drops us at once is not hammered.
        self._attempts = 0
        self._connected_at = 0.0

    def __repr__(self) -> str:
        return f"<hutch.Connection {self.url} {self._state.value}>"

    # -- public state -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The broker currently (or last) in use, password masked."""
        return self._endpoints[self._endpoint_index].safe_url

    # -- connecting -------------------------------------------------------------------------

    def _ssl_context(self, params: ConnectionParameters) -> _ssl.SSLContext | None:
        if not params.tls:
            return None
        if self._ssl is not None:
            return self._ssl
        context = _ssl.create_default_context(cafile=params.cafile)
        if params.certfile:
            context.load_cert_chain(params.certfile, params.keyfile)
        if params.no_verify_ssl:
            context.check_hostname = False
            context.verify_mode = _ssl.CERT_NONE
        return context

    def _properties(self, params: ConnectionParameters) -> dict[str, Any]:
        props: dict[str, Any] = {
            "product": "hutch",
            "version": _version(),
            "platform": f"Python {platform.python_version()}",
            "information": "https://pypi.org/project/hutch/",
            "capabilities": {
                "authentication_failure_close": True,
                "basic.nack": True,
                "connection.blocked": True,
                "consumer_cancel_notify": True,
                "exchange_exchange_bindings": True,
                "publisher_confirms": True,
                "per_consumer_qos": True,
            },
        }
        if params.name:
            props["connection_name"] = params.name
        props.update(self._client_properties)
        return props

    async def _connect_once(self, params: ConnectionParameters, timeout: float) -> Link:
        """Open a socket to ``params`` and run the AMQP handshake on it within ``timeout``.

        Whatever goes wrong, the socket is closed before this raises (a cancelled attempt
        included), so no transport is left behind.
        """
        loop = asyncio.get_running_loop()
        link = new_link(
            loop, self._channels, self._on_channel0, self._on_link_lost, params.frame_max
        )
        try:
            context = self._ssl_context(params)
        except (OSError, ValueError) as exc:
            raise ConnectError(
                f"could not set up TLS for {params.safe_url}: {exc}; check the cafile, "
                "certfile and keyfile options"
            ) from exc
        self._handshaking = (link, params)
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(
                    lambda: link,
                    params.host,
                    params.port,
                    ssl=context,
                    server_hostname=params.host if context is not None else None,
                )
                await self._handshake(link, params)
        except BaseException as exc:
            link.fail(ConnectionClosed("the connection attempt was abandoned"))
            error = _connect_error(exc, params, timeout)
            if error is exc:
                raise
            raise error from exc
        finally:
            if self._handshaking is not None and self._handshaking[0] is link:
                self._handshaking = None
            if self._ch0_waiter is not None and self._ch0_waiter[0] is link:
                self._ch0_waiter = None
        return link

    async def _expect(self, link: Link, *names: str) -> frames.Method:
        if link.error is not None:
            raise link.error
        future: asyncio.Future[frames.Method] = asyncio.get_running_loop().create_future()
        self._ch0_waiter = (link, future)
        method = await future
        if method.name not in names:
            raise ProtocolError(f"expected {' or '.join(names)} from the broker, got {method.name}")
        return method

    async def _handshake(self, link: Link, params: ConnectionParameters) -> None:
        link.write(frames.PROTOCOL_HEADER)
        start = await self._expect(link, "Connection.Start")
        assert isinstance(start, spec.Connection.Start)
        mechanisms = (start.mechanisms or "").split()
        if "PLAIN" not in mechanisms:
            raise ConnectError(
                f"the broker at {params.safe_url} does not offer PLAIN authentication "
                f"(it offers {start.mechanisms!r})"
            )
        self.server_properties = dict(start.server_properties or {})
        response = f"\0{params.username}\0{params.password}"
        link.write(
            frames.encode_method(
                0,
                spec.Connection.StartOk(
                    client_properties=self._properties(params),
                    mechanism="PLAIN",
                    response=response,
                    locale="en_US",
                ),
            )
        )
        tune = await self._expect(link, "Connection.Tune")
        assert isinstance(tune, spec.Connection.Tune)
        channel_max = _negotiate(params.channel_max, tune.channel_max)
        frame_max = _negotiate(params.frame_max, tune.frame_max)
        # heartbeat=0 in the URL turns heartbeats off whatever the broker proposes.
        heartbeat = 0 if params.heartbeat == 0 else _negotiate(params.heartbeat, tune.heartbeat)
        link.write(
            frames.encode_method(
                0,
                spec.Connection.TuneOk(
                    channel_max=channel_max, frame_max=frame_max, heartbeat=heartbeat
                ),
            )
        )
        link.write(frames.encode_method(0, spec.Connection.Open(virtual_host=params.virtual_host)))
        await self._expect(link, "Connection.OpenOk")
        self._channel_max = channel_max or 65535
        self._frame_max = frame_max
        link.frame_max = frame_max or (1 << 32)
        self.heartbeat = heartbeat
        link.start_heartbeat(heartbeat)

    def _on_channel0(self, link: Link, method: frames.Method) -> None:
        if isinstance(method, spec.Connection.Close):
            link.write(frames.encode_method(0, spec.Connection.CloseOk()))
            link.flush_now()
            link.fail(self._close_error(link, method))
            return
        if isinstance(method, spec.Connection.CloseOk):
            if self._close_waiter is not None and not self._close_waiter.done():
                self._close_waiter.set_result(None)
            return
        if isinstance(method, spec.Connection.Blocked):
            log.warning("the broker blocked publishing on this connection: %s", method.reason)
            link.set_blocked(method.reason or "blocked")
            return
        if isinstance(method, spec.Connection.Unblocked):
            log.info("the broker unblocked publishing on this connection")
            link.set_blocked(None)
            return
        waiter = self._ch0_waiter
        if waiter is not None and waiter[0] is link and not waiter[1].done():
            self._ch0_waiter = None
            waiter[1].set_result(method)
            return
        raise ProtocolError(f"the broker sent {method.name} on channel 0, which nothing asked for")

    def _close_error(self, link: Link, method: spec.Connection.Close) -> HutchConnectionError:
        code = method.reply_code or 0
        text = method.reply_text
        handshaking = self._handshaking
        if handshaking is not None and handshaking[0] is link:
            params = handshaking[1]
            if code == 403:
                return AuthenticationError(
                    f"the broker refused the login of user {params.username!r} at "
                    f"{params.safe_url} ({code} {text}); check the user name and password"
                )
            if code == 530:
                return VirtualHostError(
                    f"the broker refused virtual host {params.virtual_host!r} for user "
                    f"{params.username!r} ({code} {text}); check that the vhost exists "
                    "(rabbitmqctl list_vhosts) and that the user has permissions on it"
                )
            return ConnectError(
                f"the broker at {params.safe_url} refused the connection: {code} {text}"
            )
        return ConnectionLost(
            f"the broker closed the connection: {code} {text}", reply_code=code, reply_text=text
        )

    def _on_link_lost(self, link: Link, error: HutchConnectionError) -> None:
        waiter = self._ch0_waiter
        if waiter is not None and waiter[0] is link:
            self._ch0_waiter = None
            if not waiter[1].done():
                if isinstance(error, ConnectionLost) and error.reply_code is None:
                    error = ConnectError(
                        f"the broker closed the connection during the handshake ({error}); is "
                        "this an AMQP port, and are the credentials right?"
                    )
                waiter[1].set_exception(error)
        if link is not self._link:
            return
        self._link = None
        self._ready.clear()
        if self._close_waiter is not None and not self._close_waiter.done():
            self._close_waiter.set_result(None)
        for channel in list(self._channels.values()):
            channel._on_link_lost(error)
        if self._state in (ConnectionState.CLOSING, ConnectionState.CLOSED):
            return
        for callback in list(self._disconnect_callbacks):
            self._spawn(self._run_callback(callback, self, error), "disconnect-callback")
        if self.robust:
            if time.monotonic() - self._connected_at >= _STABLE_AFTER:
                self._attempts = 0
            log.warning("connection to %s lost (%s); reconnecting", self.url, error)
            self._state = ConnectionState.RECONNECTING
            self._spawn(self._reconnect(), "reconnect")
        else:
            self._error = error
            self._state = ConnectionState.CLOSED
            self._run_close_callbacks(error)

    async def _first_connect(self) -> None:
        """Connect for the first time; a robust connection retries within its bound."""
        # Without a bound (plain connect, or initial_connect_timeout=0): one try per broker.
        bound = self.initial_connect_timeout if self.robust else 0.0
        deadline = time.monotonic() + bound if bound > 0 else None
        while True:
            try:
                link = await self._connect_any(deadline)
            except (AuthenticationError, VirtualHostError):
                raise
            except HutchConnectionError as exc:
                if deadline is None:
                    raise
                delay = self._backoff(self._attempts)
                self._attempts += 1
                if time.monotonic() + delay >= deadline:
                    raise ConnectError(
                        f"{exc} (gave up after retrying for {bound:g} s; raise "
                        "initial_connect_timeout to wait longer for the broker)"
                    ) from exc
                log.warning("%s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                continue
            self._link = link
            self._attempts = 0
            self._connected_at = time.monotonic()
            self._state = ConnectionState.CONNECTED
            self._ready.set()
            return

    async def _connect_any(self, deadline: float | None) -> Link:
        """Try every endpoint once, starting with the current one.

        Raises the one endpoint's error as it is, or a ``ConnectError`` naming every failure.
        """
        errors: list[HutchConnectionError] = []
        count = len(self._endpoints)
        for step in range(count):
            index = (self._endpoint_index + step) % count
            params = self._endpoints[index]
            timeout = params.connection_timeout
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
                if timeout <= 0:
                    break
            try:
                link = await self._connect_once(params, timeout)
            except (AuthenticationError, VirtualHostError):
                raise
            except HutchConnectionError as exc:
                errors.append(exc)
                continue
            self._endpoint_index = index
            return link
        if len(errors) == 1 and count == 1:
            raise errors[0]
        if not errors:
            raise ConnectTimeout("no time was left to try a broker")
        raise ConnectError(
            f"could not connect to any of {count} brokers: " + "; ".join(map(str, errors))
        ) from errors[-1]

    def _backoff(self, attempt: int) -> float:
        delay = min(self.reconnect_max_delay, self.reconnect_delay * (2 ** min(attempt, 30)))
        return float(delay * random.uniform(0.5, 1.0))

    async def _reconnect(self) -> None:
        """Reconnect until it works or the connection is closed, then restore the channels."""
        # Exclusive queues and consumers of the old connection stay locked until the broker
        # notices it is gone: at once if the socket closed, else after two missed heartbeats.
        # Its check runs on a timer, so allow three intervals (seen: still locked at 2.4 of them).
        locked_until = time.monotonic() + max(_LOCK_WAIT_MIN, 3 * self.heartbeat + 5)
        if len(self._endpoints) > 1:
            # The broker we lost may be the one that went away: start with the next one.
            self._endpoint_index = (self._endpoint_index + 1) % len(self._endpoints)
        while self._state is ConnectionState.RECONNECTING:
            if self._attempts:
                await asyncio.sleep(self._backoff(self._attempts - 1))
            try:
                link = await self._connect_any(None)
            except HutchConnectionError as exc:
                self._attempts += 1
                level = logging.ERROR if isinstance(exc, AuthenticationError) else logging.WARNING
                log.log(level, "reconnecting failed (attempt %d): %s", self._attempts, exc)
                continue
            except Exception:
                # A bug must not end the reconnecting for good: report it and try again.
                self._attempts += 1
                log.exception("reconnecting failed unexpectedly (attempt %d)", self._attempts)
                continue
            self._attempts += 1
            self._link = link
            self._connected_at = time.monotonic()
            try:
                await self._restore_channels(link, locked_until)
            except Exception as exc:
                if isinstance(exc, HutchConnectionError):
                    log.warning("connection lost again while restoring channels: %s", exc)
                else:
                    log.exception("restoring the channels failed unexpectedly; reconnecting")
                if link.is_open:
                    link.fail(ConnectionLost(f"restoring the channels failed: {exc}"))
                # The link is dead: _on_link_lost starts the next attempt (unless closing).
                return
            if self._link is not link or self._state is not ConnectionState.RECONNECTING:
                return
            # (_attempts is reset only once this connection has lasted: see _on_link_lost.)
            self._state = ConnectionState.CONNECTED
            self._ready.set()
            log.info("reconnected to %s", self.url)
            for callback in list(self._reconnect_callbacks):
                await self._run_callback(callback, self)
            return

    async def _restore_channels(self, link: Link, locked_until: float) -> None:
        """Restore every channel on ``link``, in the order they were opened.

        A channel refused with NOT_FOUND may depend on an exchange or queue another channel
        declares; it is tried again after the others, as long as each pass makes progress.
        """
        pending = [channel for channel in self._channels.values() if not channel.is_closed]
        while pending:
            retry: list[tuple[Channel, HutchError]] = []
            for channel in pending:
                try:
                    await channel._restore(link, locked_until)
                except HutchConnectionError:
                    if _closed_for_good(channel):
                        continue  # closed by the user before or while it was being restored
                    raise
                except NotFound as error:
                    retry.append((channel, error))
                except HutchError as error:
                    self._give_up_channel(channel, error)
            if len(retry) == len(pending):
                for channel, refusal in retry:
                    self._give_up_channel(channel, refusal)
                return
            pending = [channel for channel, _ in retry]

    def _give_up_channel(self, channel: Channel, error: HutchError) -> None:
        log.error("channel %d could not be restored after reconnecting: %s", channel.number, error)
        channel._fail_inflight(error)
        channel._finish(error)

    async def _run_callback(self, callback: Callable[..., Any], *args: Any) -> None:
        try:
            result = callback(*args)
            if result is not None:
                await result
        except Exception:
            log.exception("a connection callback raised")

    def _run_close_callbacks(self, error: BaseException | None) -> None:
        for callback in list(self._close_callbacks):
            self._spawn(self._run_callback(callback, self, error), "close-callback")

    # -- tasks ------------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[Any], what: str) -> asyncio.Task[Any]:
        """Run ``coro`` as a task this connection owns (cancelled and awaited on close)."""
        task = asyncio.ensure_future(coro)
        task.set_name(f"hutch-{what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- channels ---------------------------------------------------------------------------

    async def _wait_ready(self) -> Link:
        """The open link, waiting (up to ``reconnect_timeout``) while reconnecting."""
        if self._state is ConnectionState.RECONNECTING:
            try:
                async with asyncio.timeout(self.reconnect_timeout):
                    while self._state is ConnectionState.RECONNECTING:
                        await self._ready.wait()
            except TimeoutError:
                raise ConnectionLost(
                    f"not reconnected to the broker within {self.reconnect_timeout:g} s; "
                    "it may be down or unreachable (reconnect_timeout sets this bound)"
                ) from None
        if self._state is ConnectionState.CONNECTED and self._link is not None:
            return self._link
        if self._state is ConnectionState.CLOSED and isinstance(self._error, HutchError):
            raise self._error
        raise ConnectionClosed("the connection is closed; open a new one with hutch.connect()")

    async def channel(self, *, publisher_confirms: bool = True, ack_delay: float = 0.0) -> Channel:
        """Open a new channel. With ``publisher_confirms`` (the default) ``publish`` waits for
        the broker to confirm each message. With ``ack_delay`` (seconds) consumer acks are held
        up to that long and sent together (at once when half the prefetch is held, and before
        the channel or the connection closes): fewer frames for the broker, at the price of
        redelivering the last acked messages if the connection is lost meanwhile.

        On a robust connection this waits for a reconnect in progress (up to
        ``reconnect_timeout``) and tries again if the connection drops while opening.
        """
        self._check_ack_delay(ack_delay)
        deadline = time.monotonic() + self.reconnect_timeout
        while True:
            link = await self._wait_ready()
            number = next(
                (n for n in range(1, self._channel_max + 1) if n not in self._channels), None
            )
            if number is None:
                raise HutchError(
                    f"all {self._channel_max} channels of this connection are in use; close "
                    "some, or open another connection"
                )
            channel = Channel(self, number, publisher_confirms, ack_delay)
            self._channels[number] = channel
            try:
                await channel._open(link)
            except HutchConnectionError as exc:
                self._forget_channel(channel)
                if (
                    not self.robust
                    or isinstance(exc, ConnectionClosed)
                    or time.monotonic() >= deadline
                ):
                    raise
                continue
            except BaseException:
                self._forget_channel(channel)
                raise
            return channel

    def _forget_channel(self, channel: Channel) -> None:
        if self._channels.get(channel.number) is channel:
            del self._channels[channel.number]

    # -- closing ----------------------------------------------------------------------------

    async def close(self, reason: str = "closed by the client") -> None:
        """Close the connection and every channel; stop reconnecting. Idempotent.

        Returns once every task hutch started for this connection has finished. May be called
        from a consumer or connection callback: that callback's own task is left to finish.
        """
        if self._close_task is None:
            closer = asyncio.current_task()
            self._close_task = asyncio.ensure_future(self._close(reason, closer))
            self._close_task.set_name("hutch-close")
        await asyncio.shield(self._close_task)

    async def _close(self, reason: str, closer: asyncio.Task[Any] | None) -> None:
        if self._state is ConnectionState.CLOSED:
            await self._drain_tasks(closer)
            return
        self._state = ConnectionState.CLOSING
        self._ready.set()
        for task in list(self._tasks):
            if task is not closer:
                task.cancel()
        error = ConnectionClosed("the connection was closed by this program")
        channels = list(self._channels.values())
        for channel in channels:
            await channel._cancel_tasks(closer)
        link = self._link
        if link is not None and link.is_open:
            self._close_waiter = asyncio.get_running_loop().create_future()
            link.write(
                frames.encode_method(
                    0,
                    spec.Connection.Close(
                        reply_code=200, class_id=0, method_id=0, reply_text=reason
                    ),
                )
            )
            try:
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await self._close_waiter
            except TimeoutError:
                log.warning("the broker did not answer connection.close; dropping the socket")
        # From here on the socket closing is not a loss to recover from.
        self._link = None
        if link is not None:
            if link.error is None:
                link.error = error
            link.close_transport()
            try:
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await asyncio.shield(link.closed)
            except TimeoutError:
                link.fail(error)
        for channel in channels:
            channel._fail_inflight(error)
            channel._finish(None)
        self._state = ConnectionState.CLOSED
        self._run_close_callbacks(None)
        await self._drain_tasks(closer)

    async def _drain_tasks(self, closer: asyncio.Task[Any] | None) -> None:
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current and t is not closer]
        if tasks:
            await asyncio.wait(tasks, timeout=5)


def _closed_for_good(channel: Channel) -> bool:
    return channel.is_closed


def _connect_error(
    exc: BaseException, params: ConnectionParameters, timeout: float
) -> BaseException:
    """The error a failed connection attempt raises (``exc`` itself when it is clear)."""
    if isinstance(exc, ConnectError):
        return exc
    if isinstance(exc, TimeoutError):
        return ConnectTimeout(
            f"no AMQP handshake with {params.safe_url} within {timeout:g} s; is the broker "
            "overloaded or unreachable, or is this port something else?"
        )
    if isinstance(exc, _ssl.SSLCertVerificationError):
        # 62/64: X509_V_ERR_HOSTNAME_MISMATCH / X509_V_ERR_IP_ADDRESS_MISMATCH
        hint = (
            "connect with a host name the certificate names"
            if exc.verify_code in (62, 64)
            else "pass ssl=<SSLContext> (or ?cafile=) with the CA that signed the broker's "
            "certificate"
        )
        return ConnectError(
            f"TLS certificate verification failed for {params.safe_url}: "
            f"{exc.verify_message}; {hint}"
        )
    if isinstance(exc, _ssl.SSLError):
        return ConnectError(
            f"TLS error talking to {params.safe_url}: {exc}; is this a TLS port, and does "
            "the broker accept this client's TLS settings?"
        )
    if isinstance(exc, ProtocolError):
        return ProtocolError(
            f"{exc} (during the handshake with {params.safe_url}: is this a RabbitMQ AMQP "
            "port? a TLS port needs amqps://)"
        )
    if isinstance(exc, HutchConnectionError):
        return ConnectError(
            f"the connection to {params.safe_url} failed during the handshake: {exc}"
        )
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc) or type(exc).__name__
        return ConnectError(
            f"could not connect to {params.safe_url}: {reason}; is RabbitMQ running "
            "and listening there?"
        )
    return exc


def _negotiate(client: int, server: int) -> int:
    """AMQP tuning: the smaller of two limits where 0 means "no limit"."""
    if not client:
        return server
    if not server:
        return client
    return min(client, server)


def _endpoints(
    url: str | ConnectionParameters | Sequence[str | ConnectionParameters],
) -> list[ConnectionParameters]:
    items = [url] if isinstance(url, (str, ConnectionParameters)) else list(url)
    result: list[ConnectionParameters] = []
    for item in items:
        if isinstance(item, ConnectionParameters):
            result.append(item)
        else:
            result.extend(_split_hosts(item))
    return result


def _split_hosts(url: str) -> list[ConnectionParameters]:
    """``amqp://u:p@h1:5672,h2:5673/vh`` names several brokers; give one parameter set each."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return [parse_url(url)]
    auth, at, hosts_and_path = rest.rpartition("@")
    cut = min(
        (i for i in (hosts_and_path.find("/"), hosts_and_path.find("?")) if i >= 0),
        default=len(hosts_and_path),
    )
    hosts, path = hosts_and_path[:cut], hosts_and_path[cut:]
    if "," not in hosts:
        return [parse_url(url)]
    prefix = f"{scheme}://{auth}{at}"
    return [parse_url(f"{prefix}{host}{path}") for host in hosts.split(",") if host]


def _apply_options(
    endpoints: list[ConnectionParameters], options: dict[str, Any]
) -> list[ConnectionParameters]:
    """Apply keyword options named like the URL's query options (``heartbeat=5``, ...)."""
    overrides: dict[str, Any] = {}
    for key in [key for key in options if key in URL_OPTIONS]:
        value = options.pop(key)
        attr, convert = URL_OPTIONS[key]
        try:
            overrides[attr] = value if attr == "name" else convert(str(value))
        except ValueError as exc:
            raise ValueError(f"bad value {value!r} for option {key!r}: {exc}") from None
    if not overrides:
        return endpoints
    return [endpoint.with_options(**overrides) for endpoint in endpoints]


async def connect(
    url: str | ConnectionParameters | Sequence[str | ConnectionParameters] = (
        "amqp://guest:guest@localhost/"
    ),
    *,
    client_properties: dict[str, Any] | None = None,
    ssl: _ssl.SSLContext | None = None,
    **options: Any,
) -> Connection:
    """Open a connection to an AMQP broker (not robust: a lost connection stays lost, and
    every waiter gets ``ConnectionLost``).

    ``url`` may name several brokers (a list, or ``h1,h2``): the first that answers is used.
    ``options`` are the URL's query options as keywords (``heartbeat=5``, ``name="app"``,
    ``connection_timeout=3``, ...), overriding the URL's.
    """
    endpoints = _apply_options(_endpoints(url), options)
    if options:
        raise TypeError(f"connect() got unexpected keyword arguments: {', '.join(options)}")
    connection = Connection(endpoints, client_properties=client_properties, ssl=ssl)
    await connection._first_connect()
    return connection


async def connect_robust(
    url: str | ConnectionParameters | Sequence[str | ConnectionParameters] = (
        "amqp://guest:guest@localhost/"
    ),
    *,
    client_properties: dict[str, Any] | None = None,
    ssl: _ssl.SSLContext | None = None,
    reconnect_delay: float = 0.5,
    reconnect_max_delay: float = 10.0,
    reconnect_timeout: float = 15.0,
    initial_connect_timeout: float = 15.0,
    **options: Any,
) -> Connection:
    """Open a connection that reconnects by itself and restores its channels.

    docs/reliability.md states what is guaranteed under each fault.

    Args:
        url: one URL, a list of URLs, or one URL naming several hosts (``h1,h2``); they are
            tried in turn, and a reconnect starts with the next one.
        client_properties: sent to the broker (``connection_name`` names the connection).
        ssl: the TLS context for ``amqps://`` URLs (default: verify against the system CAs, or
            the URL's ``cafile``).
        reconnect_delay, reconnect_max_delay: the backoff between attempts starts at
            ``reconnect_delay`` seconds and doubles up to ``reconnect_max_delay`` (with jitter).
        reconnect_timeout: how long an operation (publish, declare, ...) waits for a reconnect
            before raising ``ConnectionLost``.
        initial_connect_timeout: how long the first connection keeps retrying (a service may
            start before its broker) before raising ``ConnectError``; a refused login or vhost
            is raised at once.
        options: URL query options as keywords (``heartbeat=5``, ``name="worker"``, ...); they
            override the URL's.
    """
    endpoints = _apply_options(_endpoints(url), options)
    if options:
        raise TypeError(f"connect_robust() got unexpected keyword arguments: {', '.join(options)}")
    connection = Connection(
        endpoints,
        robust=True,
        client_properties=client_properties,
        ssl=ssl,
        reconnect_delay=reconnect_delay,
        reconnect_max_delay=reconnect_max_delay,
        reconnect_timeout=reconnect_timeout,
        initial_connect_timeout=initial_connect_timeout,
    )
    await connection._first_connect()
    return connection
