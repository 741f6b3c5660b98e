"""The lengths of an HDF5 attribute's variable-length strings, read from the
file's bytes without reading the strings.

HDF5 keeps a variable-length string attribute in two places: the attribute
message, in its object's header, holds for each value its length and where
the string lies in a global heap; the strings lie in the heap.  HDF5 offers
no call that returns the lengths alone: reading the attribute reads every
string, whatever its size (and a lying file can point every value at the same
16 MiB heap object), and the attribute's storage size counts only the 16
bytes of each reference.  So the attribute message is found here, in plain
Python, from the object header's bytes (the HDF5 file format specification,
sections IV.A "Data Object Headers" and IV.A.2.m "Attribute Message"):

  object header, version 1      version 1, reserved, number of messages (2),
                                reference count (4), header size (4), padding
                                to 16 bytes; then messages: type (2), size (2),
                                flags (1), reserved (3), data
  object header, version 2      'OHDR', version 2, flags, [times, 16 bytes if
                                flags & 0x20], [attribute phase change, 4 if
                                flags & 0x10], size of the first chunk (1, 2,
                                4 or 8 bytes: flags & 3); then messages: type
                                (1), size (2), flags (1), [creation order (2)
                                if flags & 0x04], data; the chunk's checksum
  continuation message (0x10)   address and length of another chunk of
                                messages ('OCHK', messages, checksum in v2)
  attribute message (0x0C)      version (1, 2, 3), flags or reserved, sizes of
                                the name, datatype and dataspace (2 each),
                                [encoding (1), version 3], name (NUL-ended),
                                datatype, dataspace (each padded to 8 bytes in
                                version 1), then the data: per value, for a
                                variable-length string, its length (4), the
                                heap collection's address and the object's
                                index (4)

Every chunk is visited once and at most MAX_MESSAGES messages are read.  An
attribute kept elsewhere (dense storage, past 8 attributes or 64 kB; a shared
message), which Keras never writes, cannot be found: HeaderError says so.
"""
MAX_MESSAGES = 1 << 16          # messages read in one object header (h5py writes a few)
_CONTINUATION, _ATTRIBUTE = 0x10, 0x0C
_SHARED = 0x02                  # message flag: the message lies elsewhere (shared)
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class HeaderError(ValueError):
    """An object header in which the attribute cannot be found, or does not fit."""


def base_address(data, offset_size):
    """The superblock's base address, which the file's addresses count from."""
    for at in [0] + [512 << k for k in range(20)]:          # where a superblock may start
        if at >= len(data):
            break
        if data[at:at + 8] == HDF5_SIGNATURE:
            version = data[at + 8]
            field = at + (24 if version == 0 else 28 if version == 1 else 12)
            return int.from_bytes(data[field:field + offset_size], "little")
    return 0


def vlen_string_lengths(data, address, name, count, offset_size, length_size):
    """The lengths, in bytes, of the ``count`` variable-length strings of the
    attribute ``name`` (bytes) of the object whose header is at ``address``
    (from the base address) in the file's bytes ``data``."""
    header = _Header(data, base_address(data, offset_size), offset_size, length_size)
    for kind, flags, body, size in header.messages(address):
        if kind != _ATTRIBUTE:
            continue
        if flags & _SHARED:
            raise HeaderError("its object header keeps attributes as shared messages, which "
                              "minires does not read")
        start = header.attribute_data(body, name)
        if start is not None:
            return header.lengths(start, body + size, count)
    raise HeaderError("its object header holds no such attribute message (the attribute is "
                      "stored densely, which minires does not read)")


class _Header:
    """The file's bytes and the sizes of its addresses and lengths."""

    def __init__(self, data, base, offset_size, length_size):
        self.data, self.base = data, base
        self.offset_size, self.length_size = offset_size, length_size

    def number(self, at, size):
        if at < 0 or at + size > len(self.data):
            raise HeaderError(f"it points past the end of the file (byte {at})")
        return int.from_bytes(self.data[at:at + size], "little")

    def messages(self, address):
        """Yield (type, flags, where its data starts, its size) of every message."""
        chunks, seen, read = [self._first_chunk(self.base + address)], set(), 0
        while chunks:
            at, end, version, ordered = chunks.pop()
            head = 8 if version == 1 else 6 if ordered else 4
            while at + head <= end:
                if version == 1:
                    kind, size, flags = self.number(at, 2), self.number(at + 2, 2), self.data[at + 4]
                else:
                    kind, size, flags = self.data[at], self.number(at + 1, 2), self.data[at + 3]
                body = at + head
                read += 1
                if body + size > end or read > MAX_MESSAGES:
                    raise HeaderError(f"its object header is damaged (message at byte {at})")
                if kind == _CONTINUATION:
                    chunks.append(self._next_chunk(body, version, ordered, seen))
                else:
                    yield kind, flags, body, size
                at = body + size

    def _first_chunk(self, at):
        """(first message, end, version, creation order stored) of the header at ``at``."""
        if self.data[at:at + 4] == b"OHDR" and self.number(at + 4, 1) == 2:
            flags = self.data[at + 5]
            size_at = at + 6 + (16 if flags & 0x20 else 0) + (4 if flags & 0x10 else 0)
            width = 1 << (flags & 3)
            start = size_at + width
            return start, start + self.number(size_at, width), 2, bool(flags & 0x04)
        if self.number(at, 1) == 1:
            return at + 16, at + 16 + self.number(at + 8, 4), 1, False
        raise HeaderError(f"no object header at byte {at}")

    def _next_chunk(self, body, version, ordered, seen):
        at = self.base + self.number(body, self.offset_size)
        length = self.number(body + self.offset_size, self.length_size)
        if at in seen:
            raise HeaderError(f"its object header continues twice at byte {at}")
        seen.add(at)
        if version == 1:
            return at, at + length, 1, False
        if self.data[at:at + 4] != b"OCHK":
            raise HeaderError(f"no continuation chunk at byte {at}")
        return at + 4, at + length - 4, 2, ordered          # the last 4 bytes: a checksum

    def attribute_data(self, body, name):
        """Where the data of the attribute message at ``body`` starts, if it is
        attribute ``name``; else None."""
        version = self.number(body, 1)
        if version not in (1, 2, 3):
            raise HeaderError(f"an attribute message of version {version}")
        sizes = [self.number(body + 2 + 2 * i, 2) for i in range(3)]   # name, datatype, dataspace
        at = body + (9 if version == 3 else 8)
        if bytes(self.data[at:at + sizes[0]]).rstrip(b"\0") != name:
            return None
        padded = [-(-n // 8) * 8 for n in sizes] if version == 1 else sizes
        return at + sum(padded)

    def lengths(self, start, end, count):
        """The length field of each of ``count`` variable-length references at ``start``."""
        step = 4 + self.offset_size + 4
        if start + count * step > end:
            raise HeaderError(f"its attribute message holds fewer than the {count} values its "
                              "dataspace declares")
        return [self.number(start + i * step, 4) for i in range(count)]
