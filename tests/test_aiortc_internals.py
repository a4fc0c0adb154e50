"""The private aiortc names the media node relies on. aiortc is pinned exactly; if an upgrade renames any of
these, this test fails loudly instead of the archive silently receiving nothing."""

from __future__ import annotations

import inspect
import queue
import socket
from pathlib import Path

import aiortc
from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpreceiver import StreamStatistics

from media_server.stream import REMOTE_STREAMS_ATTR, RTX_SSRC_ATTR
from media_server.taps import DECODER_QUEUE_ATTR, JITTER_BUFFER_ATTR


class _Transport:
    _stats_id = "t"
    state = "new"


def test_pinned_version() -> None:
    assert aiortc.__version__ == "1.16.0"


def test_receiver_private_attributes_exist() -> None:
    receiver = RTCRtpReceiver("video", _Transport())  # type: ignore[arg-type]
    assert isinstance(getattr(receiver, DECODER_QUEUE_ATTR), queue.Queue)
    assert isinstance(getattr(receiver, JITTER_BUFFER_ATTR), JitterBuffer)
    assert isinstance(getattr(receiver, RTX_SSRC_ATTR), dict)
    assert isinstance(getattr(receiver, REMOTE_STREAMS_ATTR), dict)
    stream = StreamStatistics(90_000)
    assert (stream.packets_received, stream.jitter) == (0, 0)
    assert isinstance(StreamStatistics.packets_lost, property)
    assert inspect.iscoroutinefunction(receiver._send_rtcp_pli)


def test_handle_rtp_packet_feeds_the_decoder_queue_with_jitter_frames() -> None:
    source = inspect.getsource(RTCRtpReceiver._handle_rtp_packet)
    assert "self.__decoder_queue.put((codec, encoded_frame))" in source
    assert "self.__jitter_buffer.add(packet)" in source
    assert {"data", "timestamp"} <= set(inspect.signature(JitterFrame.__init__).parameters)
    assert "self.smart_remove(" in inspect.getsource(JitterBuffer.add)


async def test_receive_buffers_are_enlarged_on_the_gathered_sockets() -> None:
    """enlarge_receive_buffers reaches aioice's sockets through private names; a rename must fail here."""
    from aiortc import RTCPeerConnection

    from media_server.ice import RECEIVE_BUFFER_BYTES, enlarge_receive_buffers

    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("video", direction="recvonly")
        pc.createDataChannel("signals")
        await pc.setLocalDescription(await pc.createOffer())
        assert enlarge_receive_buffers(pc) >= 1
        for transceiver in pc.getTransceivers():
            connection = transceiver.receiver.transport.transport.iceGatherer._connection
            for protocol in connection._protocols:
                sock = protocol.transport.get_extra_info("socket")
                # Linux doubles the value asked for (bookkeeping), capped by net.core.rmem_max.
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= min(RECEIVE_BUFFER_BYTES, _rmem_max())
    finally:
        await pc.close()


def _rmem_max() -> int:
    return int(Path("/proc/sys/net/core/rmem_max").read_text())
