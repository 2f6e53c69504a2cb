"""Label Studio client and settings without a server: one-line errors, tokens only from the environment."""
from __future__ import annotations

import socket

import pytest

from broaden.errors import ConfigError
from broaden.rounds.config import WorkspaceConfig
from broaden.rounds.labelstudio import Client, LabelStudioError, shown_url


def test_connection_refused_is_one_line():
    """No server needed: a closed port is one line, after a bounded number of quick retries."""

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = Client(f"http://user:pw@127.0.0.1:{port}/", "t0ken-value", sleep=lambda s: None)
    with pytest.raises(LabelStudioError) as exc:
        client.project(1)
    msg = str(exc.value)
    assert msg.startswith(f"Label Studio at http://127.0.0.1:{port}: cannot connect (connection refused)")
    assert "pw" not in msg and "t0ken" not in msg


def test_token_only_from_the_environment(monkeypatch):
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    with pytest.raises(LabelStudioError, match="LABEL_STUDIO_API_KEY is not set"):
        Client("http://127.0.0.1:1")
    with pytest.raises(ConfigError, match="'api_key' does not belong in the config file"):
        WorkspaceConfig(class_names=["a", "b"], label_studio={"url": "http://x", "api_key": "s3cret"})
    with pytest.raises(ConfigError, match="unknown key"):
        WorkspaceConfig(class_names=["a", "b"], label_studio={"url": "http://x", "workspace": 1})
    with pytest.raises(ConfigError, match="http"):
        WorkspaceConfig(class_names=["a", "b"], label_studio={"url": "localhost:8080"})
    assert WorkspaceConfig(class_names=["a", "b"], label_studio={"url": "http://x", "project": 3}).label_studio


def test_shown_url_drops_credentials():
    assert shown_url("https://me:pw@ls.example:8443/base/") == "https://ls.example:8443/base"
