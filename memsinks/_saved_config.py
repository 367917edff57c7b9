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
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike):
        """Read ``CONFIG_NAME`` from ``directory``."""
        path = os.path.join(directory, cls.CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(cls._missing_message(directory))
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    @classmethod
    def _missing_message(cls, directory) -> str:
        return f"No {cls.CONFIG_NAME} in {directory}."
