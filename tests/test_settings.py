"""Settings: defaults, parsing, errors that name the variable, .env precedence, documentation coverage."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from proctor.settings import Settings, SettingsError, example_env

ROOT = Path(__file__).resolve().parents[1]


def test_defaults() -> None:
    s = Settings.from_env({}, env_file=None)
    assert s.segment_seconds == 20
    assert s.database_url == "" and s.redis_url == ""
    assert s.storage_backend == "local"
    assert s.data_dir == (Path.cwd() / ".data")
    assert s.local_storage_path == s.data_dir / "storage"
    assert s.base_url == "http://127.0.0.1:8080"
    assert s.retention_days == 90
    assert s.identity_model == "Dlib+FaceRes"


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"SEGMENT_SECONDS": "abc"}, "SEGMENT_SECONDS"),
        ({"SEGMENT_SECONDS": "0"}, "SEGMENT_SECONDS"),
        ({"HTTP_PORT": "70000"}, "HTTP_PORT"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL"),
        ({"STORAGE_BACKEND": "ftp"}, "STORAGE_BACKEND"),
        ({"STORAGE_BACKEND": "s3"}, "S3_BUCKET"),
        ({"ICE_SERVERS": "not json"}, "ICE_SERVERS"),
        ({"ICE_SERVERS": '[{"urls": "http://x"}]'}, "ICE_SERVERS"),
        ({"ICE_SERVERS": '[{"urls": "turn:t:3478"}]'}, "ICE_SERVERS"),
        ({"SECRET_KEY": "short"}, "SECRET_KEY"),
        ({"IDENTITY_MODEL": "Magic"}, "IDENTITY_MODEL"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"PUBLIC_BASE_URL": "example.com"}, "PUBLIC_BASE_URL"),
    ],
)
def test_wrong_value_names_the_setting(env: dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env, env_file=None)
    assert str(info.value).startswith(f"{name}:")


def test_values_parse() -> None:
    s = Settings.from_env({
        "SEGMENT_SECONDS": " 10 ",
        "ICE_SERVERS": '[{"urls": ["stun:s:3478"]}, {"urls": "turn:t:3478", "username": "u", "credential": "p"}]',
        "ICE_HOST_ADDRESSES": "127.0.0.1, 10.0.0.1,",
        "STORAGE_BACKEND": "s3", "S3_BUCKET": "b", "S3_ENDPOINT_URL": "https://acc.r2.cloudflarestorage.com/",
        "PUBLIC_BASE_URL": "https://proctor.example.edu/",
    }, env_file=None)
    assert s.segment_seconds == 10
    assert s.ice_servers[1]["username"] == "u"
    assert s.ice_host_addresses == ("127.0.0.1", "10.0.0.1")
    assert s.s3_endpoint_url == "https://acc.r2.cloudflarestorage.com"
    assert s.base_url == "https://proctor.example.edu"


def test_env_file_and_environment_precedence(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("SEGMENT_SECONDS=30\nRETENTION_DAYS=7\n")
    s = Settings.from_env({"SEGMENT_SECONDS": "12"}, env_file=env_file)
    assert s.segment_seconds == 12  # the process environment wins
    assert s.retention_days == 7  # .env fills the rest


def test_secrets_are_redacted() -> None:
    s = Settings.from_env({"SECRET_KEY": "x" * 40, "S3_SECRET_ACCESS_KEY": "hunter2"}, env_file=None)
    shown = s.redacted()
    assert shown["SECRET_KEY"] == "***" and shown["S3_SECRET_ACCESS_KEY"] == "***"
    assert "hunter2" not in repr(shown)


def test_generated_secret_key_persists(tmp_path: Path) -> None:
    s = Settings.from_env({"PROCTOR_DATA_DIR": str(tmp_path)}, env_file=None)
    key = s.signing_key()
    assert len(key) >= 32
    assert Settings.from_env({"PROCTOR_DATA_DIR": str(tmp_path)}, env_file=None).signing_key() == key
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


def test_env_example_documents_every_setting() -> None:
    text = (ROOT / ".env.example").read_text()
    assert text == example_env(), ".env.example is stale: run `proctor settings --example > .env.example`"
    for f in fields(Settings):
        assert f"\n{f.metadata['env']}={f.metadata['default']}\n" in text


def test_cli_reports_bad_setting_and_exits_2() -> None:
    result = subprocess.run([sys.executable, "-m", "proctor", "migrate"], capture_output=True, text=True,
                            env={"SEGMENT_SECONDS": "twenty", "PATH": "/usr/bin:/bin"}, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    assert "SEGMENT_SECONDS" in result.stderr


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [f.metadata["env"] for f in fields(Settings) if f"| `{f.metadata['env']}` |" not in readme]
    assert not missing, f"README configuration table lacks {missing}: paste `proctor settings --table`"


def test_a_base_layer_slower_than_the_detectors_is_refused() -> None:
    """VIDEO_FPS with temporal layers decodes VIDEO_FPS / 2 (L1T2) or / 4 (L1T3) frames a second: fewer than
    FACES_FPS would leave the faces detector short of frames without a word, so the settings say so."""
    assert Settings.from_env({}, env_file=None).decoded_fps == 7.5  # 15 fps, L1T2
    assert Settings.from_env({"VIDEO_FPS": "30", "VIDEO_SCALABILITY_MODE": "L1T3"}, env_file=None).decoded_fps == 7.5
    assert Settings.from_env({"VIDEO_FPS": "8", "VIDEO_SCALABILITY_MODE": "off"}, env_file=None).decoded_fps == 8
    with pytest.raises(SettingsError, match="VIDEO_FPS: 15 fps with VIDEO_SCALABILITY_MODE=L1T3 decodes 3.75"):
        Settings.from_env({"VIDEO_SCALABILITY_MODE": "L1T3"}, env_file=None)
    with pytest.raises(SettingsError, match="fewer than the 5 FACES_FPS"):
        Settings.from_env({"FACES_FPS": "5", "VIDEO_FPS": "8"}, env_file=None)
    # FACES_FPS lowered with it: fine
    assert Settings.from_env({"VIDEO_FPS": "8", "FACES_FPS": "2", "GAZE_FPS": "2"}, env_file=None).decoded_fps == 4
