"""The on-disk broker (core/broker.py): a message is seen whole or not at all, and taken once."""

import os
import threading
from pathlib import Path
from queue import Empty

import pytest
from kombu import Connection
from kombu.transport import filesystem

from core import broker


@pytest.fixture
def channel(tmp_path: Path):
    folders = {
        "data_folder_in": tmp_path / "queue",
        "data_folder_out": tmp_path / "queue",
        "processed_folder": tmp_path / "processed",
        "control_folder": tmp_path / "control",
    }
    for folder in folders.values():
        folder.mkdir(exist_ok=True)
    options = {key: str(value) for key, value in folders.items()}
    with Connection("filesystem://", transport=broker.Transport, transport_options=options) as c:
        yield c.default_channel


def test_a_message_being_written_is_not_taken(channel, monkeypatch):
    """A reader polling while the message is written finds nothing; after, the whole message."""
    seen_midway = []
    replace = os.replace

    def read_then_replace(src: str, dst: str) -> None:
        try:
            seen_midway.append(channel._get("default"))
        except Empty:
            seen_midway.append("empty")
        replace(src, dst)

    monkeypatch.setattr(broker.os, "replace", read_then_replace)
    channel._put("default", {"body": "whole"})
    assert seen_midway == ["empty"]
    assert channel._get("default") == {"body": "whole"}
    with pytest.raises(Empty):
        channel._get("default")
    assert os.listdir(channel.processed_folder) == []


def test_the_stock_transport_hands_a_reader_the_empty_file(tmp_path, channel, monkeypatch):
    """Why core/broker.py exists: kombu's own transport creates the file before writing it."""
    stock = filesystem.Channel._get
    taken = []
    real_open = open

    def open_then_read(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if "w" in mode and str(path).endswith(".default.msg"):
            try:
                taken.append(stock(channel, "default"))
            except ValueError as exc:  # the JSON decoder on an empty file
                taken.append(type(exc).__name__)
        return f

    monkeypatch.setattr("builtins.open", open_then_read)
    filesystem.Channel._put(channel, "default", {"body": "whole"})
    monkeypatch.undo()
    assert taken == ["JSONDecodeError"]


def test_racing_readers_take_each_message_once(channel):
    for n in range(200):
        channel._put("default", {"n": n})
    taken: list[int] = []
    lock = threading.Lock()

    def drain() -> None:
        while True:
            try:
                message = channel._get("default")
            except Empty:
                return
            with lock:
                taken.append(message["n"])

    readers = [threading.Thread(target=drain) for _ in range(4)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    assert sorted(taken) == list(range(200))
