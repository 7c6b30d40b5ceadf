"""The one error of piman's disk-image library: :class:`ImageError`.

Its place in the tree drawn in :mod:`piman.errors`::

    PimanError
    └── ImageError                  a disk image, image source or block map is corrupt, truncated
                                    or not what it claims to be (piman.deploy.errors)

The image is input that our caller handed us (an upload, a file named on the command line): the
peer at fault is whoever made the file, and a retry will not help, so the CLI should treat it as
bad input (exit 2). The message is one line a user can act on and names the
file first, e.g. ``raspios.img.xz: the xz stream is truncated (ends at 123456789 bytes)``. The
parsers (:mod:`~piman.deploy.partitions`, :mod:`~piman.deploy.fat`, :mod:`~piman.deploy.ext4`)
raise it without the file name; :func:`piman.deploy.images.inspect` and the other entry points
add the name in front with :meth:`ImageError.within`.
"""

from __future__ import annotations

from piman.errors import PimanError

__all__ = ["ImageError"]


class ImageError(PimanError):
    """A disk image, image source or block map is corrupt, truncated or not what it claims."""

    def within(self, where: str) -> ImageError:
        """The same error with ``where`` (a file name, ``partition 2``) in front of the message."""
        return ImageError(f"{where}: {self}")
