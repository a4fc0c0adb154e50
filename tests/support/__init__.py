"""Helpers shared by the tests and the benchmarks (bench/ imports only this package from tests/).

    net          free loopback ports
    waiting      wait_for: poll an async predicate until it holds
    servers      RunningApp (a served aiohttp app), FrameLog (a media-node plugin that records frame times)
    paths        ARTIFACTS: where tests leave screenshots and logs
    browser      headless Chromium (Debian's package) with a fake camera: CHROMIUM, chromium_args, join_and_start
    media        fake camera clips built from an offline photo: face_canvas, face_clip, write_y4m
    seaweed      a real SeaweedFS S3 server: SeaweedS3, weed_binary
    phone_model  a tiny ONNX stand-in with YOLOv8's input/output layout
    accounts     staff users with a known password and their logins: make_user, logged_in, browser_login, page_csrf
    sessions     create_session: an exam session through the REST API
    webm         synthetic WebM media (numbered VP8 frames, an Opus tone): encode_video, read_number, write_segment
    archive      recorded_session, assert_one_exact_master, all_segments_stored
    s3_web       s3_web_app: the web app on SeaweedFS S3 storage; fetch: a plain GET
    review       the frame rate and size of the review-page tests' videos
    streams      FakeStream: a media_server.outlets.Stream without a peer connection (records notices)

Nothing here is a pytest fixture (those live in tests/conftest.py), and nothing here imports a test module
(tests/test_*.py). Only archive imports pytest (pytest.approx in an assertion helper).
"""
