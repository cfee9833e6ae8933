"""Models received from the host, stored by sha256 under the agent's cache folder, bounded in size."""

import hashlib
import os
import re

from .protocol import FrameError

_SHA256 = re.compile(r"[0-9a-f]{64}")  # fullmatch: "$" would also match before a trailing newline


class ModelChanged(FrameError):
    """A cached file whose bytes no longer hash to its name: another model's bytes under that name."""

    kind = "sha256_mismatch"


def check_sha256(value):
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise FrameError("sha256 must be 64 lowercase hex digits, got {!r}".format(value))
    return value


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelCache(object):
    """Content-addressed model files; uploads arrive in chunks and may resume after a dropped link."""

    def __init__(self, root, max_bytes=2 * 1024 ** 3):
        self.root = root
        self.max_bytes = int(max_bytes)
        if not os.path.isdir(root):
            os.makedirs(root)

    def path(self, sha256):
        return os.path.join(self.root, check_sha256(sha256) + ".model")

    def verified_path(self, sha256):
        """The cached file, after checking that its bytes still hash to ``sha256``; a changed file is removed."""
        path = self.path(sha256)
        actual = sha256_file(path)
        if actual != sha256:
            os.remove(path)
            raise ModelChanged("the cached model {} holds other bytes (they hash to {}); it was removed, so the "
                               "next put_model sends the model again".format(sha256[:12], actual[:12]))
        return path

    def _partial(self, sha256):
        return os.path.join(self.root, check_sha256(sha256) + ".part")

    def status(self, sha256):
        """(cached, bytes of a partial upload received so far)."""
        path = self.path(sha256)
        if os.path.exists(path):
            os.utime(path, None)
            return True, os.path.getsize(path)
        partial = self._partial(sha256)
        return False, os.path.getsize(partial) if os.path.exists(partial) else 0

    def write_chunk(self, sha256, size, offset, data):
        """Append one chunk; on the last one verify the sha256 and publish the file. Returns (complete, received)."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise FrameError("size must be a non-negative integer")
        if size > self.max_bytes:
            raise FrameError("model of {} bytes exceeds the cache bound of {} bytes".format(size, self.max_bytes))
        cached, received = self.status(sha256)
        if cached:
            return True, size
        if offset != received:
            raise FrameError("chunk at offset {} but {} bytes received so far; resend from there".format(offset, received))
        if received + len(data) > size:
            raise FrameError("chunk runs past the announced size of {} bytes".format(size))
        partial = self._partial(sha256)
        with open(partial, "ab") as handle:
            handle.write(data)
        received += len(data)
        if received < size:
            return False, received
        actual = sha256_file(partial)
        if actual != sha256:
            os.remove(partial)
            raise FrameError("sha256 mismatch: announced {}, received bytes hash to {}".format(sha256, actual))
        self._make_room()
        os.rename(partial, self.path(sha256))
        return True, received

    def _make_room(self):
        """Evict the least recently used models until the cache fits its bound, partial uploads counted: the one
        about to be published, and other hosts' (not evicted: their hosts are sending them)."""
        entries = []
        uploading = 0
        for name in os.listdir(self.root):
            full = os.path.join(self.root, name)
            try:
                stat = os.stat(full)
            except OSError:
                continue  # removed meanwhile
            if name.endswith(".model"):
                entries.append((stat.st_mtime, stat.st_size, full))
            elif name.endswith(".part"):
                uploading += stat.st_size
        total = sum(e[1] for e in entries) + uploading
        for _, size, full in sorted(entries):
            if total <= self.max_bytes:
                break
            os.remove(full)
            total -= size
