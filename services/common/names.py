"""Resource names: `workspaces/{id}`, `managers/{id}`, `images/{id}`.

Their longest forms (characters), checked before anything else so that a huge name is refused
with a short answer: a workspace name 42 (`workspaces/` and an id of 4 to 31), a manager name
41 (`managers/` and an id of 2 to 32), an image name 70 (`images/` and an id of 2 to 63)."""
from __future__ import annotations

import re
import secrets

from .errors import InvalidArgument

_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
WORKSPACE_ID = re.compile(r"^[a-z][a-z0-9]{3,30}$")
MANAGER_ID = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
IMAGE_ID = re.compile(r"^[a-z][a-z0-9-]{0,61}[a-z0-9]$")
WORKSPACE_NAME_MAX = len("workspaces/") + 31
MANAGER_NAME_MAX = len("managers/") + 32
IMAGE_NAME_MAX = len("images/") + 63
# Environment variable names a workspace may not use: the manager's exec path carries the
# user's variables in these (VWSENV_<i>=NAME=value, decoded by a shell using __vws_*).
RESERVED_ENV_PREFIXES = ("VWSENV_", "__vws_")
# The most labels a workspace has, and so the most a listing may filter on.
MAX_LABELS = 64
# The longest label key and value (characters); a longer key is refused by its length alone.
MAX_LABEL_KEY = 63
MAX_LABEL_VALUE = 63


def _check_length(name: str, most: int, noun: str, field: str) -> None:
    if len(name) > most:
        raise InvalidArgument(f"is {len(name)} characters long; a {noun} name is at most {most}", field)


def new_workspace_id() -> str:
    # 12 characters: short enough for account names, 62 bits of randomness.
    return "w" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(11))


def workspace_name(workspace_id: str) -> str:
    return f"workspaces/{workspace_id}"


def parse_workspace_name(name: str, field: str = "name") -> str:
    """Returns the id of `workspaces/{id}`; INVALID_ARGUMENT naming the field otherwise."""
    prefix = "workspaces/"
    _check_length(name, WORKSPACE_NAME_MAX, "workspace", field)
    if not name:
        raise InvalidArgument(f"is empty; give a workspace name like workspaces/wabc123def456", field)
    if not name.startswith(prefix) or not WORKSPACE_ID.match(name[len(prefix):]):
        raise InvalidArgument(
            f"{name!r} is not a workspace name; it must look like workspaces/wabc123def456", field)
    return name[len(prefix):]


def manager_name(manager_id: str) -> str:
    return f"managers/{manager_id}"


def parse_manager_name(name: str, field: str = "name") -> str:
    prefix = "managers/"
    _check_length(name, MANAGER_NAME_MAX, "manager", field)
    if not name.startswith(prefix) or not MANAGER_ID.match(name[len(prefix):]):
        raise InvalidArgument(
            f"{name!r} is not a manager name; it must look like managers/host-1 "
            "(lower case letters, digits and '-', at most 32)", field)
    return name[len(prefix):]


def normalise_workspace_name(text: str) -> str:
    """CLI convenience: accepts `wabc...` or `workspaces/wabc...`."""
    return text if text.startswith("workspaces/") else f"workspaces/{text}"


def image_name(image_id: str) -> str:
    return f"images/{image_id}"


def parse_image_name(name: str, field: str = "name") -> str:
    """Returns the id of `images/{id}`; a bare id is accepted too (`busybox`)."""
    _check_length(name, IMAGE_NAME_MAX, "image", field)
    image_id = name[len("images/"):] if name.startswith("images/") else name
    if not image_id:
        raise InvalidArgument("is empty; give an image name like images/busybox (`vws image list` shows them)",
                              field)
    if not IMAGE_ID.match(image_id):
        raise InvalidArgument(
            f"{name!r} is not an image name; use images/{{id}} with an id of lower case letters, digits and "
            "'-' (2 to 63, starting with a letter), e.g. images/busybox", field)
    return image_id
