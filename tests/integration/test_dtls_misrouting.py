"""Real OpenSSL DTLS through the shared port's demultiplexer, the relay as DTLS server of every call, all
remotes behind ONE address (an anycast SFU): what a turn that ends at both Finished messages must get
right (relay/media/demux.py, issue 17).

Each relay call is an OpenSSL DTLS server (the options aiortc uses: DTLS_METHOD, mutual certificates,
ECDHE-ECDSA, use_srtp) registered with a real ``Demux``; each remote is an OpenSSL DTLS client whose
datagrams all come from the SFU's one address. Nothing is mocked but the wire, which can lose or delay a
datagram. Checks: every handshake ends with the right peer certificate on both sides and the same SRTP
keying material; the relay's ChangeCipherSpec+Finished lost while the next call's set-up already has the
address is recovered (the client's retransmitted final flight reaches the call it belongs to); and the
hazard the routing avoids is real: another handshake's flight handed to one in progress breaks it.
"""

from __future__ import annotations

import asyncio
import datetime
import os
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL

from splitrelay.relay.media.demux import Demux, DemuxLimits, _Call, is_client_hello
from tests.unit.test_demux import PASSWORD, binding_request, check_from

pytestmark = pytest.mark.integration

Address = tuple[str, int]
SFU: Address = ("192.0.2.80", 3478)
SRTP_LABEL = b"EXTRACTOR-dtls_srtp"


class Identity:
    """A self-signed ECDSA P-256 certificate, as aiortc makes one per peer connection."""

    def __init__(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, os.urandom(8).hex())])
        now = datetime.datetime.now(tz=datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        self.key = key
        self.cert = cert
        self.fingerprint = cert.fingerprint(hashes.SHA256())

    def connection(self, *, server: bool) -> SSL.Connection:
        """An OpenSSL DTLS endpoint with aiortc's context options (rtcdtlstransport.py, 1.16)."""
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.set_options(SSL.OP_NO_TICKET)
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *args: True)
        ctx.use_certificate(self.cert)
        ctx.use_privatekey(self.key)
        ctx.set_cipher_list(
            b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:"
            b"ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA"
        )
        ctx.set_tlsext_use_srtp(b"SRTP_AES128_CM_SHA1_80")
        conn = SSL.Connection(ctx)
        if server:
            conn.set_accept_state()
        else:
            conn.set_connect_state()
        return conn


class Endpoint(asyncio.DatagramProtocol):
    """One side of one DTLS association: feeds what it gets to OpenSSL and hands out what OpenSSL sends."""

    def __init__(self, identity: Identity, *, server: bool, send: Callable[[bytes], None]) -> None:
        self.identity = identity
        self.conn = identity.connection(server=server)
        self.send = send
        self.done = False
        self.error: str | None = None

    def start(self) -> None:
        self.step()

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.conn.bio_write(data)
        self.step()

    def step(self) -> None:
        """Drive OpenSSL as aiortc does: the handshake until it ends, then ``recv`` (which answers a
        retransmitted final flight by sending the last flight again); then flush what it wrote."""
        if self.error is None:
            try:
                if self.done:
                    self.conn.recv(1500)
                else:
                    self.conn.do_handshake()
                    self.done = True
            except SSL.WantReadError:
                pass
            except SSL.Error as exc:
                self.error = str(exc) or "DTLS error"
        self.flush()

    def timeout(self) -> None:
        """What aiortc does when OpenSSL's retransmission timer fires."""
        self.conn.DTLSv1_handle_timeout()
        self.flush()

    def flush(self) -> None:
        while True:
            try:
                data = self.conn.bio_read(1500)
            except SSL.Error:
                return
            if not data:
                return
            self.send(data)

    def keys(self) -> bytes:
        return self.conn.export_keying_material(SRTP_LABEL, 60)

    def peer_fingerprint(self) -> bytes:
        peer = self.conn.get_peer_certificate(as_cryptography=True)
        assert peer is not None
        return peer.fingerprint(hashes.SHA256())


class Wire:
    """The relay's demultiplexer on one side, N remote DTLS clients behind the SFU's one address on the
    other. The relay's sends go to the client of the call that sent them (what the SFU's own routing
    does); ``drop`` and ``delay`` decide each datagram's fate."""

    def __init__(self, count: int, *, shared_certificate: bool) -> None:
        self.demux = Demux(self._relay_sent, limits=DemuxLimits(turn_settle_s=4.0))
        sfu_identity = Identity()
        self.owner: dict[int, int] = {}
        """id() of each datagram a relay call sent (held ones too) -> its index."""
        self.keep: list[bytes] = []
        self.drop: Callable[[int, bytes], bool] = lambda index, data: False
        self.delay: Callable[[int, bytes], bool] = lambda index, data: False
        self.delayed: list[tuple[int, bytes]] = []
        self.checks: dict[int, int] = {}
        self.relays: list[Endpoint] = []
        self.clients: list[Endpoint] = []
        self.calls: list[_Call] = []
        for index in range(count):
            ufrag = self.demux.mint_ufrag(f"call{index}")
            relay = Endpoint(Identity(), server=True, send=self._relay_send(index))
            call = self.demux.register(ufrag, PASSWORD, relay)
            client_identity = sfu_identity if shared_certificate else Identity()
            client = Endpoint(client_identity, server=False, send=self._client_send(index))
            self.relays.append(relay)
            self.clients.append(client)
            self.calls.append(call)
            self.demux.datagram_received(binding_request(ufrag, PASSWORD), SFU)  # the SFU's check

    def check(self, index: int) -> None:
        """The relay call's ICE check toward the SFU: it goes out at the call's turn, and the SFU's
        session then starts its DTLS handshake (the SFU is the DTLS client)."""
        data = check_from(self.calls[index].ufrag)
        self.checks[id(data)] = index
        self.keep.append(data)
        self.demux.send_from(self.calls[index], data, SFU)

    def _relay_send(self, index: int) -> Callable[[bytes], None]:
        def send(data: bytes) -> None:
            self.owner[id(data)] = index
            self.keep.append(data)
            self.demux.send_from(self.calls[index], data, SFU)

        return send

    def _relay_sent(self, data: bytes, addr: Address) -> None:
        if id(data) in self.checks:
            self.clients[self.checks[id(data)]].start()
            return
        index = self.owner[id(data)]
        if self.drop(index, data):
            return
        if self.delay(index, data):
            self.delayed.append((index, data))
            return
        self.clients[index].datagram_received(data, SFU)

    def release(self) -> None:
        delayed, self.delayed = self.delayed, []
        for index, data in delayed:
            self.clients[index].datagram_received(data, SFU)

    def _client_send(self, index: int) -> Callable[[bytes], None]:
        def send(data: bytes) -> None:
            self.demux.datagram_received(data, SFU)  # every client comes from the SFU's one address

        return send

    def check_associations(self) -> None:
        """Each pair finished, each side saw the other's certificate, both derived the same SRTP keys."""
        for index, (relay, client) in enumerate(zip(self.relays, self.clients, strict=True)):
            assert relay.error is None and client.error is None, (index, relay.error, client.error)
            assert relay.done and client.done, index
            assert relay.peer_fingerprint() == client.identity.fingerprint, index
            assert client.peer_fingerprint() == relay.identity.fingerprint, index
            assert relay.keys() == client.keys(), index


def relay_finished(data: bytes) -> bool:
    """The relay's last flight: ChangeCipherSpec and the encrypted Finished (first record a CCS)."""
    return data[:1] == b"\x14"


class LoseFirstFinished:
    """A wire's ``drop``: loses call ``index``'s first CCS+Finished (and remembers it)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.lost: list[bytes] = []

    def __call__(self, sender: int, data: bytes) -> bool:
        if sender != self.index or self.lost or not relay_finished(data):
            return False
        self.lost.append(data)
        return True


async def wait_retransmission(client: Endpoint) -> None:
    """Until the client's retransmission timer (OpenSSL: 1 s first) fires, then fire it."""
    timeout = client.conn.DTLSv1_get_timeout()
    assert timeout is not None, "the client is not waiting for the relay's Finished"
    await asyncio.sleep(timeout + 0.05)
    client.timeout()


@pytest.mark.parametrize("shared_certificate", [False, True], ids=["own-certificates", "one-sfu-certificate"])
async def test_a_lost_server_finished_is_recovered_while_the_next_set_up_holds_the_address(
    shared_certificate: bool,
) -> None:
    """Call 0's CCS+Finished is lost. Its turn has already passed (both Finished went by the relay), call
    1's handshake is running at the SFU's address (its ClientHello came, its answer is in flight). Call
    0's client retransmits its final flight: it reaches call 0 (whose OpenSSL sends its last flight again)
    and not call 1; call 1 then finishes untouched, and call 2 after it. With one certificate for every
    SFU session, call 1's own Certificate record equals call 0's and still reaches call 1."""
    wire = Wire(3, shared_certificate=shared_certificate)
    lose = LoseFirstFinished(0)
    wire.drop = lose
    wire.delay = lambda index, data: index == 1 and not wire.relays[1].done and not relay_finished(data)
    for index in range(3):
        wire.check(index)
    demux = wire.demux
    assert lose.lost and wire.relays[0].done and not wire.clients[0].done  # the client never got our Finished
    assert demux.turn_holder(SFU) == wire.calls[1].ufrag  # call 0's turn passed at both Finished
    assert wire.calls[1].hello and wire.delayed  # call 1's handshake is under way
    await wait_retransmission(wire.clients[0])
    assert wire.relays[1].error is None and not wire.relays[1].done  # not handed to call 1
    assert wire.clients[0].done and demux.dtls_retransmits == 1  # routed to call 0, which answered
    wire.release()  # call 1's handshake goes on, then call 2's turn
    wire.check_associations()
    assert demux.turn_holder(SFU) is None and demux.dtls_ambiguous == 0 and demux.delivery_errors == 0


async def foreign_final_flight() -> list[bytes]:
    """The final flight of another association, as its client retransmits it (its server's Finished was
    lost): real OpenSSL records no call of a fresh wire has seen."""
    other = Wire(1, shared_certificate=False)
    other.drop = LoseFirstFinished(0)
    other.check(0)
    flight: list[bytes] = []
    other.clients[0].send = flight.append
    await wait_retransmission(other.clients[0])
    assert flight and not is_client_hello(flight[0])
    return flight


async def test_a_flight_before_the_next_client_hello_reaches_only_the_finished_calls() -> None:
    """The next call holds the address but its remote has not begun (no ClientHello yet): a handshake
    flight that cannot begin a handshake is then not the holder's, whatever it is. It goes to the call
    that just finished (whose OpenSSL drops what is not its own), never to the holder, whose handshake
    then runs clean. (Handed to the holder, it is taken as the holder's own: the last test.)"""
    flight = await foreign_final_flight()
    wire = Wire(2, shared_certificate=False)
    begun: list[int] = []
    wire.clients[1].start = lambda: begun.append(1)  # type: ignore[method-assign]  # its ClientHello waits
    wire.check(0)
    wire.check(1)
    demux = wire.demux
    assert wire.relays[0].done and demux.turn_holder(SFU) == wire.calls[1].ufrag and begun
    assert not wire.calls[1].hello
    for data in flight:
        demux.datagram_received(data, SFU)
    Endpoint.start(wire.clients[1])  # call 1's remote begins now
    wire.check_associations()
    assert demux.dtls_retransmits == len(flight)
    assert demux.dtls_ambiguous == 0


async def test_another_handshakes_flight_breaks_one_in_progress_and_not_one_finished() -> None:
    """Why the demultiplexer never hands the holder a flight by guess: OpenSSL mid-handshake takes another
    association's final flight (same message numbers) as its own and fails, whereas a finished OpenSSL
    drops it and goes on. This is the check that the tests above can fail."""
    flight = await foreign_final_flight()
    in_progress = Wire(1, shared_certificate=False)
    in_progress.delay = lambda index, data: True  # the relay's answer to the ClientHello waits
    in_progress.check(0)
    relay = in_progress.relays[0]
    assert in_progress.calls[0].hello and not relay.done
    done = Wire(1, shared_certificate=False)
    done.check(0)
    done.check_associations()
    for data in flight:
        relay.datagram_received(data, SFU)  # misrouted straight to the holder, as a guess would
        done.relays[0].datagram_received(data, SFU)
    in_progress.release()
    assert relay.error is not None or not in_progress.clients[0].done  # the handshake in progress broke
    done.check_associations()  # the finished one dropped it
