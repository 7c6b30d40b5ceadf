"""Deploy: environments (OS images) and putting them on nodes' SD cards.

``images``/``partitions``/``fat``/``ext4`` (reading disk images) · ``bmap`` (block maps) ·
``sources`` (importing .img/.xz/.gz/.zst/.tar.gz/rootfs tarballs) · ``environments`` ·
``customise`` (pure renderers) · ``machine`` (transition table, pure) · ``engine`` ·
``nodeapi`` (the ``/boot/v1`` protocol, see docs/boot-protocol.md) · ``installer/`` (the
netboot installer and its builder) · ``service`` (what the manager builds).
"""
