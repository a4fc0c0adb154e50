"""The private aiortc names the media node relies on. aiortc is pinned exactly; if an upgrade renames any of
these, this test fails loudly instead of the archive silently receiving nothing."""

from __future__ import annotations

import inspect
import queue

import aiortc
from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame

from media_server.stream import RTX_SSRC_ATTR
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
    assert inspect.iscoroutinefunction(receiver._send_rtcp_pli)


def test_handle_rtp_packet_feeds_the_decoder_queue_with_jitter_frames() -> None:
    source = inspect.getsource(RTCRtpReceiver._handle_rtp_packet)
    assert "self.__decoder_queue.put((codec, encoded_frame))" in source
    assert "self.__jitter_buffer.add(packet)" in source
    assert {"data", "timestamp"} <= set(inspect.signature(JitterFrame.__init__).parameters)
    assert "self.smart_remove(" in inspect.getsource(JitterBuffer.add)
