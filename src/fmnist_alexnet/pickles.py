"""What a pickle would import or call, read without running it (``pickletools`` only
parses opcodes). Used to explain why a checkpoint was refused: torch's safe unpickler
refuses some pickles (protocol 4 and 5) before it reaches their imports."""

from __future__ import annotations

import pickletools
import zipfile
from pathlib import Path

MAX_PICKLE_BYTES = 64 * 2**20  # a checkpoint's pickle holds structure; tensors are apart
# What torch.save itself writes into a checkpoint's pickle.
_TORCH_OWN = ("torch.", "collections.OrderedDict", "_codecs.encode", "builtins.set")
_STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8", "SHORT_BINSTRING"}


def foreign_imports(path: str | Path) -> list[str]:
    """``module.name`` of every import in the file's pickle that torch.save would not
    write (``posix.system``, ``builtins.eval``, a class); [] when none or unreadable."""
    try:
        data = _pickle_bytes(Path(path))
    except (OSError, zipfile.BadZipFile, KeyError):
        return []
    found: list[str] = []
    strings: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in _STRINGS:
                strings = [*strings[-1:], str(arg)]
            elif opcode.name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) == 2:
                found.append(".".join(strings))
    except Exception:  # noqa: BLE001 (damaged data: what was read so far is the answer)
        pass
    return [name for name in found if not name.startswith(_TORCH_OWN)]


def _pickle_bytes(path: Path) -> bytes:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
            if archive.getinfo(name).file_size > MAX_PICKLE_BYTES:
                return b""
            return archive.read(name)
    with open(path, "rb") as handle:
        return handle.read(MAX_PICKLE_BYTES)
