"""Real servers for the RPC tests, on 127.0.0.1 only, on checked-free ports, stopped by PID."""

import contextlib
import subprocess
import sys
from pathlib import Path

from mnv2_edge.deploy import loopback


@contextlib.contextmanager
def tracker_with_servers(log_dir: Path, keys=("host",)):
    services = loopback.Services()
    try:
        tracker = loopback.start_tracker(log_dir)
        services.items.append(tracker)
        for index, key in enumerate(keys):
            name = f"server-{key}" + (f"-{index}" if keys.count(key) > 1 else "")
            services.items.append(loopback.start_server(key, log_dir, tracker.port, name=name))
        yield services
    finally:
        services.stop()


@contextlib.contextmanager
def sshd(folder: Path):
    """Debian's openssh-server on loopback with throwaway host and user keys; yields (port, key, known_hosts)."""
    folder.mkdir(parents=True, exist_ok=True)
    host_key, user_key = folder / "host_ed25519", folder / "user_ed25519"
    for key in (host_key, user_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    authorized = folder / "authorized_keys"
    authorized.write_text(Path(f"{user_key}.pub").read_text())
    port = loopback.free_port_span(1)
    config = folder / "sshd_config"
    config.write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {host_key}\nPidFile {folder / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {authorized}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        f"PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n"
        f"AllowTcpForwarding yes\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                            stderr=open(folder / "sshd.log", "wb"), start_new_session=True)
    try:
        loopback.wait_for_port(port, 20, proc)
        known_hosts = folder / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{port} {Path(f'{host_key}.pub').read_text().split(' ', 2)[0]} "
                               f"{Path(f'{host_key}.pub').read_text().split(' ', 2)[1]}\n")
        yield port, user_key, known_hosts
    finally:
        loopback.stop_pid(proc.pid)


def python_for_board() -> str:
    """The 'board' reached over SSH is this machine; its python with TVM is ours."""
    return sys.executable
