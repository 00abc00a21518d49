"""The kernel manager the runner gives papermill: Jupyter kernels on IPC sockets.

Over TCP, recent ipykernels warn in every run that the connection is not encrypted; the
notebooks of one run talk to their kernel on the same machine, so local IPC sockets (files
in a temporary directory) serve as well and say nothing.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager


class IPCKernelManager(AsyncKernelManager):
    """An :class:`AsyncKernelManager` whose kernel listens on IPC sockets."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.transport = "ipc"
        # short, unique socket paths (a UNIX socket path has ~100 characters at most)
        self.ip = str(Path(tempfile.gettempdir()) / f"mrlib-kernel-{uuid.uuid4().hex[:12]}")
