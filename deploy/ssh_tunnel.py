"""An RPC server on a board reached over SSH: started bound to the board's loopback, reached through
a port forwarded over the SSH connection, stopped at the end. Nothing listens on a public interface.

Key authentication only; the board's host key must be in known_hosts (unknown hosts are refused).
"""

from __future__ import annotations

import base64
import re
import select
import socket
import threading
import time
from pathlib import Path

from mnv2_edge.targets.errors import UserError

REMOTE_PORT = 9090
REMOTE_PORT_SPAN = 100
BIND_PATTERN = re.compile(rb"bind to 127\.0\.0\.1:(\d+)")


def parse_destination(text: str) -> tuple[str, str, int]:
    user, at, rest = text.rpartition("@")
    host, _, port = rest.partition(":")
    if not at or not user or not host or (port and not port.isdigit()):
        raise UserError(f"--ssh takes user@host or user@host:port, not {text!r}.")
    return user, host, int(port or 22)


class SSHRPCServer:
    def __init__(self, destination: str, key_file: Path | None = None, known_hosts: Path | None = None,
                 python: str = "python3", connect_timeout: float = 15, start_timeout: float = 120):
        self.user, self.host, self.port = parse_destination(destination)
        self.destination = destination
        self.key_file, self.python = key_file, python
        self.known_hosts = Path(known_hosts) if known_hosts else Path.home() / ".ssh" / "known_hosts"
        self.connect_timeout, self.start_timeout = connect_timeout, start_timeout
        self.client = self.channel = self.listener = None
        self.remote_pid = self.remote_port = self.local_port = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> "SSHRPCServer":
        try:
            self._connect()
            self._start_server()
            self._forward()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _connect(self) -> None:
        import paramiko

        client = paramiko.SSHClient()
        if self.known_hosts.exists():
            client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(self.host, self.port, username=self.user,
                           key_filename=str(self.key_file) if self.key_file else None,
                           look_for_keys=self.key_file is None, allow_agent=self.key_file is None,
                           timeout=self.connect_timeout, banner_timeout=self.connect_timeout,
                           auth_timeout=self.connect_timeout)
        except paramiko.BadHostKeyException:
            raise UserError(f"The host key of {self.host} does not match {self.known_hosts}: refusing to connect "
                            f"(the board was reinstalled, or someone is in the middle). Check it, then fix known_hosts.") from None
        except paramiko.SSHException as err:
            if "not found in known_hosts" in str(err):
                raise UserError(f"{self.host}:{self.port} is not in {self.known_hosts}: its host key cannot be "
                                f"checked. Connect once with ssh to add it, or pass --ssh-known-hosts.") from None
            if isinstance(err, paramiko.AuthenticationException):
                raise UserError(f"SSH key authentication to {self.destination} failed: give --ssh-key with a key "
                                f"the board accepts (authorized_keys).") from None
            raise UserError(f"SSH to {self.destination} failed: {err}.") from None
        except OSError as err:
            raise UserError(f"Cannot reach {self.host}:{self.port} over SSH ({err.strerror or err}): check the "
                            f"address and that sshd runs on the board.") from None
        self.client = client

    def _start_server(self) -> None:
        import paramiko

        from mnv2_edge.deploy.loopback import BOARD_SERVER

        # Our board server (TVM's, plus LiteRT timing), passed on the command line and run by the
        # board's python as __main__: no file left on the board (nor one another user could swap),
        # no SFTP subsystem needed. The comment names the process for ps/pgrep.
        payload = base64.b64encode(BOARD_SERVER.read_bytes()).decode()
        command = (f"echo MNV2_PID=$$; exec {self.python} -c 'import base64, sys; "
                   f"exec(base64.b64decode(sys.argv.pop(1)))  # mnv2-edge board_server' {payload} "
                   f"--host 127.0.0.1 --port {REMOTE_PORT} --port-end {REMOTE_PORT + REMOTE_PORT_SPAN}")
        try:
            channel = self.client.get_transport().open_session(timeout=self.connect_timeout)
            channel.get_pty()  # the server gets SIGHUP if the connection drops
            channel.exec_command(command)
        except (paramiko.SSHException, OSError, AttributeError) as err:  # AttributeError: no transport left
            raise UserError(f"The SSH session to {self.destination} failed while starting the RPC server "
                            f"({err or type(err).__name__}): check that the board accepts a command session "
                            f"(sshd's ForceCommand, MaxSessions) and that it is still up.") from None
        self.channel = channel
        output = b""
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if channel.recv_ready():
                output += channel.recv(4096)
                pid = re.search(rb"MNV2_PID=(\d+)", output)
                if pid:
                    self.remote_pid = int(pid.group(1))
                bound = BIND_PATTERN.search(output)
                if bound:
                    self.remote_port = int(bound.group(1))
                    return
            elif channel.exit_status_ready():
                break
            else:
                time.sleep(0.1)
        tail = output.decode(errors="replace").strip().splitlines()[-3:]
        raise UserError(f"The TVM RPC server did not start on {self.host} with `{self.python}` "
                        f"({' / '.join(tail) or 'no output'}). Install TVM's runtime there "
                        f"(pip install apache-tvm) or point --ssh-python at a python that has it.")

    def _forward(self) -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.settimeout(0.5)
        self.listener, self.local_port = listener, listener.getsockname()[1]
        thread = threading.Thread(target=self._accept_loop, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept_loop(self) -> None:
        transport = self.client.get_transport()
        while not self._stop.is_set():
            try:
                conn, peer = self.listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            try:
                channel = transport.open_channel("direct-tcpip", ("127.0.0.1", self.remote_port), peer)
            except Exception:  # noqa: BLE001 - the server or the link is gone: refuse this connection
                conn.close()
                continue
            pump = threading.Thread(target=self._pump, args=(conn, channel), daemon=True)
            pump.start()
            self._threads.append(pump)

    def _pump(self, conn: socket.socket, channel) -> None:
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([conn, channel], [], [], 0.5)
                for source, sink in ((conn, channel), (channel, conn)):
                    if source in ready:
                        data = source.recv(65536)
                        if not data:
                            return
                        sink.sendall(data)
        except OSError:
            pass
        finally:
            conn.close()
            channel.close()

    def close(self) -> None:
        self._stop.set()
        if self.listener is not None:
            self.listener.close()
        if self.client is not None:
            if self.remote_pid:
                try:  # stop the server (and its workers) explicitly: don't rely on SIGHUP alone
                    _, stdout, _ = self.client.exec_command(f"kill {self.remote_pid}", timeout=10)
                    stdout.channel.recv_exit_status()
                except Exception:  # noqa: BLE001 - the link may be gone already; the pty hangup remains
                    pass
            if self.channel is not None:
                self.channel.close()
            self.client.close()
        for thread in self._threads:
            thread.join(timeout=2)
        self.client = None
