"""Real OpenSSH servers for tests: started on 127.0.0.1 on free ports with throwaway keys, stopped afterwards.

Each server has its own host key and ``authorized_keys``; the client side is one ssh config file
(passed with ``-F``) naming every server as a Host alias, with its own known_hosts (strict host
key checking on), its own identity and no agent, so the user's ~/.ssh is never read or written.
"""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.tools import SSHD

# scp (OpenSSH >= 9) speaks SFTP: the server needs its sftp subsystem, as Debian's default sshd_config has.
SFTP = next(
    (p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/libexec/sftp-server") if Path(p).exists()),
    "internal-sftp",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path) -> str:
    """A new ed25519 key pair without passphrase at ``path``; returns the public key line."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rescompile-test", "-f", str(path)], check=True, timeout=30)
    return Path(f"{path}.pub").read_text().strip()


@dataclass
class Server:
    alias: str
    port: int
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class SshLab:
    """Some sshd servers and the client config that reaches them."""

    root: Path
    servers: list[Server] = field(default_factory=list)
    config: Path | None = None

    def add_host(self, alias: str, port: int, identity: Path | None = None) -> None:
        """Another Host alias on 127.0.0.1 (e.g. a port nobody listens on, or a key the servers refuse)."""
        assert self.config is not None
        key = f"  IdentityFile {identity}\n" if identity is not None else ""
        with open(self.config, "a") as fh:
            fh.write(f"Host {alias}\n  HostName 127.0.0.1\n  Port {port}\n{key}")

    def port(self, alias: str) -> int:
        return next(s.port for s in self.servers if s.alias == alias)

    def stop(self) -> None:
        for s in self.servers:
            if s.proc is not None and s.proc.poll() is None:
                s.proc.terminate()
                try:
                    s.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    s.proc.kill()


def start_lab(root: Path, aliases: list[str], *, remote_path: str = "/usr/bin:/bin") -> SshLab:
    """Start one sshd per alias on 127.0.0.1 (free ports) and write the client config ``root/ssh_config``.

    The remote session's PATH is ``remote_path`` (sshd's SetEnv), so a host "without rescompile" is real.
    """
    assert SSHD is not None
    root.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation folder
    client_pub = keygen(root / "client_key")
    (root / "authorized_keys").write_text(client_pub + "\n")
    host_pub = keygen(root / "host_key")
    lab = SshLab(root)
    user = getpass.getuser()
    known, client = [], []
    for alias in aliases:
        port = free_port()
        cfg = root / f"sshd_{alias}.conf"
        cfg.write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\nAuthorizedKeysFile {root / 'authorized_keys'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nUsePAM no\nStrictModes no\n"
            f"PidFile {root / ('sshd_' + alias + '.pid')}\nSetEnv PATH={remote_path}\nLogLevel ERROR\nSubsystem sftp {SFTP}\n"
        )
        with open(root / f"sshd_{alias}.log", "wb") as log:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=log)
        lab.servers.append(Server(alias, port, proc))
        known.append(f"[127.0.0.1]:{port} {host_pub}")
        client.append(f"Host {alias}\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n  IdentityFile {root / 'client_key'}\n")
    (root / "known_hosts").write_text("\n".join(known) + "\n")
    common = (
        "  IdentitiesOnly yes\n  IdentityAgent none\n  BatchMode yes\n"
        f"  UserKnownHostsFile {root / 'known_hosts'}\n  StrictHostKeyChecking yes\n  LogLevel ERROR\n"
    )
    lab.config = root / "ssh_config"
    lab.config.write_text("".join(client) + f"Host *\n  User {user}\n" + common)
    deadline = time.monotonic() + 15
    for s in lab.servers:
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", s.port)) == 0:
                    break
            if s.proc is not None and s.proc.poll() is not None or time.monotonic() > deadline:
                lab.stop()
                log = (root / f"sshd_{s.alias}.log").read_text(errors="replace")
                raise RuntimeError(f"sshd for {s.alias} did not start: {log[-500:]}")
            time.sleep(0.05)
    return lab
