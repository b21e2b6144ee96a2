"""kombu's on-disk transport (the default broker on one machine), with messages that appear
whole or not at all.

The stock transport creates a message's file and writes it afterwards, and takes a message by
moving its file into the processed folder (by default in the system temp folder, often another
file system, where a move is a copy). A worker polling between the create and the write took an
empty file, died on it ("Expecting value: line 1 column 1") and the message was lost. Here a
message is written under a name no reader looks for and renamed into place, and taken by a
rename within the broker's own folder: both are atomic, so a message is read whole, once."""

import os
import uuid
from queue import Empty
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads


class Channel(filesystem.Channel):
    # kombu's own annotations disagree (AbstractChannel names the argument `message`, the
    # filesystem Channel `payload`); this keeps the filesystem Channel's.
    def _put(  # type: ignore[override]
        self, queue: str, payload: dict[str, Any], **kwargs: Any
    ) -> None:
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        # Starts with a dot: `_get` only takes names of the form "<stamp>_<id>.<queue>.msg".
        partial = os.path.join(self.data_folder_out, f".{uuid.uuid4()}.partial")
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, os.path.join(self.data_folder_out, name))
        except OSError as exc:
            raise ChannelError(f"Cannot add a message to {self.data_folder_out!r}") from exc

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        wanted = f"{queue}.msg"
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.startswith(".") or name.partition(".")[2] != wanted:
                continue
            taken = os.path.join(self.processed_folder, name)
            try:
                # Whoever renames it first has it; the others see it gone and look further.
                os.rename(os.path.join(self.data_folder_in, name), taken)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise ChannelError(f"Cannot take {name!r} from the queue") from exc
            with open(taken, "rb") as f:
                payload = f.read()
            if not self.store_processed:
                os.remove(taken)
            return loads(bytes_to_str(payload))
        raise Empty()


class Transport(filesystem.Transport):
    Channel = Channel
