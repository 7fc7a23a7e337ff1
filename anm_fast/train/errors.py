"""The errors `anm-train` reports as one line (`anm-train: error: ...`, exit status 2) instead of
a traceback: the ones a user can act on. Everything else is a bug and keeps its traceback.

- ValueError: bad settings, bad data or label files, damaged or foreign checkpoints
  (checkpoint.CheckpointError), a run folder in use (ownership.RunFolderBusy); every message
  names the file or flag.
- OSError: the file system refused (full disk, read-only or missing folder, a folder where a
  file should be, no permission); the message names the errno and the path.
- ImportError: an optional package (timm, torchvision) a setting needs is not installed.
"""
from __future__ import annotations

EXPECTED_ERRORS = (ValueError, OSError, ImportError)


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
