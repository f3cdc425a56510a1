"""Archive of the original frames, on local disk.

A frame is stored at ``<root>/<arm_id>/<session_id>/<image_name>`` and named by a
``file://`` URI (:meth:`pathlib.Path.as_uri`). The key ``<arm_id>/<session_id>/<image_name>``
names it too. Ids and image names come from requests, so they are validated
(:data:`~sorterbot_cloud.structures.ID_PATTERN`,
:func:`~sorterbot_cloud.structures.pulse_width_of_image_name`, no ``.`` or ``..``), and
every resolved path must stay under the root: anything else raises
:class:`~sorterbot_cloud.errors.BadRequest` before the file system is touched.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlparse

from sorterbot_cloud.errors import BadRequest
from sorterbot_cloud.structures import ID_PATTERN, pulse_width_of_image_name


def _check_id(name: str, value: str) -> str:
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value) or value in (".", ".."):
        raise BadRequest(f"{name} must be 1 to 64 of letters, digits, '_', '-', '.' (not '.' or '..'), got {value!r}")
    return value


def _check_image_name(image_name: str) -> str:
    if not isinstance(image_name, str):
        raise BadRequest(f"image_name must be a string, got {type(image_name).__name__}")
    try:
        pulse_width_of_image_name(image_name)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return image_name


class DiskArchive:
    """Original frames on local disk.

    Parameters
    ----------
    root : path
        Folder of the archive (created on first write).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()

    @classmethod
    def from_settings(cls, settings) -> "DiskArchive":
        """The archive under ``settings.image_dir``."""
        return cls(settings.image_dir)

    @staticmethod
    def key_of(arm_id: str, session_id: str, image_name: str) -> str:
        """Return ``<arm_id>/<session_id>/<image_name>`` after validating each part.

        Raises
        ------
        BadRequest
            If an id or the image name is malformed.
        """
        return "/".join(
            (_check_id("arm_id", arm_id), _check_id("session_id", session_id), _check_image_name(image_name))
        )

    def path_of(self, arm_id: str, session_id: str, image_name: str) -> Path:
        """Return the file path of a frame (whether or not it exists).

        Raises
        ------
        BadRequest
            If an id or the image name is malformed, or the path would leave the root.
        """
        return self._inside(self.root / self.key_of(arm_id, session_id, image_name))

    def uri_of(self, arm_id: str, session_id: str, image_name: str) -> str:
        """Return the ``file://`` URI of a frame (whether or not it exists)."""
        return self.path_of(arm_id, session_id, image_name).as_uri()

    def put(self, arm_id: str, session_id: str, image_name: str, data: bytes) -> str:
        """Write a frame's bytes atomically and return its URI.

        The bytes go to a temporary file in the target folder, are flushed to disk, and
        the file is renamed over the target (:func:`os.replace`), so a reader sees the old
        file or the new one, never a partial one. Writing the same frame again replaces it.

        Parameters
        ----------
        data : bytes
            The encoded image, as received.

        Returns
        -------
        str
            ``file://`` URI.

        Raises
        ------
        BadRequest
            If an id or the image name is malformed.
        OSError
            If the file cannot be written.
        """
        with self.staged(arm_id, session_id, image_name, data) as uri:
            pass
        return uri

    @contextmanager
    def staged(self, arm_id: str, session_id: str, image_name: str, data: bytes) -> Iterator[str]:
        """Write a frame's bytes, and put them in place only if the ``with`` block succeeds.

        On entry the bytes go to a temporary file in the target folder, flushed to disk
        (so a full disk fails before the block runs); the block gets the frame's URI. On a
        clean exit the file is renamed over the target (:func:`os.replace`, atomic); when
        the block raises, the temporary file is removed and the archived frame, if any,
        is left as it was. Ingest stores the frame's row inside the block, so a frame the
        database refuses leaves no file, and a refused re-upload keeps the old one.

        Parameters
        ----------
        data : bytes
            The encoded image, as received.

        Yields
        ------
        str
            ``file://`` URI the frame will have.

        Raises
        ------
        BadRequest
            If an id or the image name is malformed (before anything is written).
        OSError
            If the file cannot be written.
        """
        path = self.path_of(arm_id, session_id, image_name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(bytes(data))
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp_name, 0o644)
            yield path.as_uri()
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def get(self, uri_or_key: str) -> bytes:
        """Read a frame by its ``file://`` URI or its key ``<arm_id>/<session_id>/<image_name>``.

        Raises
        ------
        BadRequest
            If the URI or key is malformed or points outside the archive.
        FileNotFoundError
            If no such frame was archived.
        """
        return self._path_of_ref(uri_or_key).read_bytes()

    def parts_of(self, uri_or_key: str) -> tuple[str, str, str]:
        """Return ``(arm_id, session_id, image_name)`` of a frame's URI or key (whether or not it exists).

        Raises
        ------
        BadRequest
            If the URI or key is malformed or points outside the archive.
        """
        arm_id, session_id, image_name = self._path_of_ref(uri_or_key).relative_to(self.root).parts
        return arm_id, session_id, image_name

    def exists(self, uri_or_key: str) -> bool:
        """Return True if the frame named by a URI or key is archived."""
        return self._path_of_ref(uri_or_key).is_file()

    def _path_of_ref(self, uri_or_key: str) -> Path:
        if not isinstance(uri_or_key, str) or not uri_or_key:
            raise BadRequest("an image URI or key is required")
        if uri_or_key.startswith("file:"):
            parsed = urlparse(uri_or_key)
            if parsed.netloc not in ("", "localhost"):
                raise BadRequest("image URI must name a local file")
            path = self._inside(Path(unquote(parsed.path)))
            try:
                parts = path.relative_to(self.root).parts
            except ValueError:  # pragma: no cover - _inside already checked
                raise BadRequest("image URI is outside the archive") from None
        else:
            parts = tuple(uri_or_key.split("/"))
        if len(parts) != 3:
            raise BadRequest(f"image key must be <arm_id>/<session_id>/<image_name>, got {uri_or_key!r}")
        return self.path_of(*parts)

    def _inside(self, path: Path) -> Path:
        resolved = path.resolve()
        if not resolved.is_relative_to(self.root):
            raise BadRequest("image path is outside the archive")
        return resolved
