"""What ``SinksConfig`` and ``PrivacyConfig`` share: a dataclass saved as JSON beside the model, like peft's configs.

A subclass names its file (``CONFIG_NAME``) and says what a directory without it means
(``_missing_message``); this mixin gives it ``to_dict`` / ``from_dict`` (an unknown field is an
error that names the nearest known one, the way a typo should be caught) and
``save_pretrained`` / ``from_pretrained`` (written atomically, stamped with the memsinks version).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from typing import Any, ClassVar

from memsinks.atomic import write_atomically


class SavedConfig:
    """Mixin for a dataclass config that lives in ``CONFIG_NAME`` next to the weights."""

    CONFIG_NAME: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k != "memsinks_version"}
        unknown = sorted(set(data) - known)
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, known, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(f"Unknown {cls.__name__} field(s): {', '.join(hints)}.")
        return cls(**data)

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        """Write ``CONFIG_NAME`` into ``save_directory`` (atomically: a crash leaves the old file); returns its path."""
        from memsinks._version import __version__

        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, self.CONFIG_NAME)
        payload = {"memsinks_version": __version__, **self.to_dict()}
        write_atomically(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode("utf-8"))
        return path

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike):
        """Read ``CONFIG_NAME`` from ``directory``; a damaged file or a bad field is an error naming the file."""
        directory = os.fspath(directory)
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"{directory} does not exist or is not a directory; give the folder the model "
                                    "was saved to.")
        path = os.path.join(directory, cls.CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(cls._missing_message(directory))
        data = read_json_object(path, cls.__name__)
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{path}: {err}") from err

    @classmethod
    def _missing_message(cls, directory) -> str:
        return f"No {cls.CONFIG_NAME} in {directory}."


_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
               type(None): "null"}


def read_json_object(path: str, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; ValueError naming the file when it is empty, not JSON, truncated or not an object."""
    damaged = f"{path} is damaged"
    advice = "Restore it from the run that wrote these weights (or re-save the model)."
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.strip():
        raise ValueError(f"{damaged}: it is empty ({len(raw)} bytes), where {what} JSON was expected. {advice}")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{damaged}: it is not UTF-8 text (byte {err.start}); it is not a JSON file. {advice}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{damaged}: it is not valid JSON ({err.msg} at line {err.lineno} column {err.colno}; "
                         f"truncated?). {advice}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{damaged}: it holds {_JSON_KINDS.get(type(data), type(data).__name__)}, where a JSON "
                         f"object of {what} fields was expected. {advice}")
    return data
