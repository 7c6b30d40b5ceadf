"""piman's read-only TFTP server (RFC 1350 with options: RFC 2347, 2348, 2349, 7440).

- :mod:`~piman.netboot.tftp.packets`: the wire format, bytes ⇄ frozen dataclasses;
- :mod:`~piman.netboot.tftp.session`: one transfer as a pure state machine (time passed in);
- :mod:`~piman.netboot.tftp.files`: byte sources, path safety, the file cache, the plain hook;
- :mod:`~piman.netboot.tftp.pump`: the data path of every transfer, in one thread;
- :mod:`~piman.netboot.tftp.ratelimit`: how many new requests the listener takes (pure);
- :mod:`~piman.netboot.tftp.fdlimit`: the open-file limit and the transfers it leaves room for;
- :mod:`~piman.netboot.tftp.server`: the asyncio shell (listener, limits, hook, metrics).

Which file a node gets is decided outside, by the hook (:mod:`piman.netboot.boottree`).
"""

__all__ = ["fdlimit", "files", "packets", "pump", "ratelimit", "server", "session"]
