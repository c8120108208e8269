"""TLS and SuperNode keys for the Deployment Engine: made per run, checked before anything starts.

Flower 1.42 lets a SuperLink accept only registered SuperNodes (`--enable-supernode-auth`), and
only over TLS. So a deployment run, unless the user says `--insecure`, gets:
- TLS: the site's own `--certificates DIR`, or a throwaway CA and server certificate made for
  this run. The CA's private key is never written: nothing can sign another certificate with it;
- one ECDSA P-384 key pair per SuperNode, in OpenSSH format (what `flower-supernode
  --auth-supernode-private-key` and `flwr supernode register` read; `ssh-keygen -t ecdsa -b 384`
  makes the same).
Every secret is written 0600 (folders 0700) in the run's own folder, created exclusively.
A certificate folder is checked first: readable, not expired, the key matching the certificate,
the CA signing it, and the address that is dialled among its names; one line if not.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import re
import socket
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from eurosat.fl.config import ConfigError

CERT_FILES = ("ca.crt", "server.pem", "server.key")
NIST_CURVES = ("secp256r1", "secp384r1", "secp521r1")
VALID_DAYS = 30  # a run, resumed or not, makes new ones at every start
WILDCARDS = ("0.0.0.0", "::", "")
REGISTERED = "registered"  # written into the run's deployment folder once the public keys are registered


def write_private(path: Path, data: bytes) -> None:
    """Create `path` 0600 from the start (never briefly readable), refusing to overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True)
    os.chmod(path, 0o700)  # whatever the umask
    return path


def fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """`SHA256:...`, as `ssh-keygen -lf KEY.pub` prints it: a site can match a refused node to its key."""
    blob = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).split()[1]
    return "SHA256:" + base64.b64encode(hashlib.sha256(base64.b64decode(blob)).digest()).decode().rstrip("=")


def read_public_key(path: Path, what: str = "--register-key") -> ec.EllipticCurvePublicKey:
    """A SuperNode's OpenSSH public key on a NIST curve (what `flwr supernode register` accepts)."""
    try:
        key = serialization.load_ssh_public_key(path.expanduser().read_bytes())
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read it ({exc.strerror})") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"{what} {path}: not an OpenSSH public key (make one with "
                          "ssh-keygen -t ecdsa -b 384 -N '' -f KEY; give KEY.pub)") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in NIST_CURVES:
        raise ConfigError(f"{what} {path}: not an ECDSA key on a NIST curve (ssh-keygen -t ecdsa -b 384)")
    return key


def _load(path: Path, loader, kind: str):
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--certificates: {path}: cannot read it ({exc.strerror})") from None
    try:
        return loader(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(f"--certificates: {path}: not a PEM {kind}") from None


def _names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName), *(str(a) for a in san.get_values_for_type(x509.IPAddress))]


def check_certificates(folder: Path, dialled: str, now: datetime.datetime | None = None) -> Path:
    """`folder` with a usable ca.crt, server.pem and server.key for a SuperLink that SuperNodes and
    `flwr run` reach as `dialled`; else one line: what is wrong and with which file."""
    missing = [name for name in CERT_FILES if not (folder / name).is_file()]
    if missing:
        raise ConfigError(f"--certificates {folder}: missing {', '.join(missing)} (expected {', '.join(CERT_FILES)})")
    now = now or datetime.datetime.now(datetime.timezone.utc)
    ca = _load(folder / "ca.crt", x509.load_pem_x509_certificate, "certificate")
    server = _load(folder / "server.pem", x509.load_pem_x509_certificate, "certificate")
    key = _load(folder / "server.key", lambda d: serialization.load_pem_private_key(d, None), "unencrypted private key")
    for name, cert in (("ca.crt", ca), ("server.pem", server)):
        if cert.not_valid_after_utc <= now:
            raise ConfigError(f"--certificates: {folder / name} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
        if cert.not_valid_before_utc > now:
            raise ConfigError(f"--certificates: {folder / name} is not valid before "
                              f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if key.public_key().public_numbers() != server.public_key().public_numbers():
        raise ConfigError(f"--certificates: {folder / 'server.key'} does not match {folder / 'server.pem'} "
                          "(a key of another certificate)")
    try:
        server.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise ConfigError(f"--certificates: {folder / 'server.pem'} is not signed by {folder / 'ca.crt'}") from None
    names = _names(server)
    if not _covers(names, dialled):
        raise ConfigError(f"--certificates: {folder / 'server.pem'} is for {', '.join(names) or 'no name (no SAN)'}, "
                          f"not {dialled}, the address the SuperNodes and flwr run dial")
    return folder.resolve()


def _covers(names: list[str], host: str) -> bool:
    if host in names:
        return True
    try:
        return any(ipaddress.ip_address(n) == ipaddress.ip_address(host) for n in names if _is_ip(n))
    except ValueError:
        return any(n.startswith("*.") and host.split(".", 1)[-1] == n[2:] for n in names)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def server_names(host: str) -> list[str]:
    """The names a throwaway server certificate carries: loopback, this machine's names and, for a
    wildcard `host`, every address it has (other nodes of a Slurm job dial one of them)."""
    names = {"localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn()}
    if host not in WILDCARDS:
        names.add(host)
    else:
        try:
            names |= {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
        except OSError:
            pass
        try:  # all interface addresses; best effort (not every system has `hostname -I`)
            out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout
            names |= set(out.split())
        except (OSError, subprocess.SubprocessError):
            pass
    return sorted(n for n in names if n and "%" not in n)


def make_throwaway_tls(folder: Path, host: str) -> Path:
    """A CA and a server certificate for `host`, valid for VALID_DAYS, in the new folder `folder`."""
    private_dir(folder)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=VALID_DAYS)  # other nodes' clocks
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"eurosat throwaway CA {now:%Y-%m-%d %H:%M:%S}")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA384()))
    key = ec.generate_private_key(ec.SECP384R1())
    names = server_names(host)
    san = [x509.IPAddress(ipaddress.ip_address(n)) if _is_ip(n) else x509.DNSName(n) for n in names]
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
              .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(start).not_valid_after(end)
              .add_extension(x509.SubjectAlternativeName(san), critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .sign(ca_key, hashes.SHA384()))
    write_private(folder / "ca.crt", ca.public_bytes(serialization.Encoding.PEM))
    write_private(folder / "server.pem", server.public_bytes(serialization.Encoding.PEM))
    write_private(folder / "server.key", key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    return folder


def key_paths(folder: Path, partition: int) -> tuple[Path, Path]:
    """(private key, public key) of the SuperNode serving `partition`."""
    return folder / f"supernode-{partition}.key", folder / f"supernode-{partition}.pub"


def make_node_keys(folder: Path, count: int) -> list[Path]:
    """One key pair per SuperNode (`supernode-<i>.key`, `.pub`) in the new folder; the public keys."""
    private_dir(folder)
    public = []
    for i in range(count):
        key = ec.generate_private_key(ec.SECP384R1())
        secret, pub = key_paths(folder, i)
        write_private(secret, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                serialization.NoEncryption()))
        write_private(pub, key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                         serialization.PublicFormat.OpenSSH) + b"\n")
        public.append(pub)
    return public


def make_run_secrets(folder: Path, host: str, certificates: Path | None, nodes: int) -> tuple[Path, Path | None]:
    """A run's secrets in the new 0700 `folder`: `tls/` (unless the site gives `certificates`) and,
    for `nodes` > 0, `keys/` with one key pair per SuperNode. (certificate folder, keys folder)."""
    private_dir(folder)
    tls = certificates or make_throwaway_tls(folder / "tls", host)
    keys = folder / "keys" if nodes else None
    if keys:
        make_node_keys(keys, nodes)
    return tls, keys


# Flower 1.42's SuperLink logs a refused SuperNode as
#   [/v1/fleet/activate-node][ApiError:2004] Attempted to register SuperNode with public key:
#   b'-----BEGIN PUBLIC KEY-----\n...', exception: No SuperNode found with the given public key.
# (2004: activation failed; 2001: a node without a key tried to register itself).
_REFUSAL = re.compile(r"\[ApiError:(200[14])\][^\n]*?public key: b'(-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----)"
                      r"(?:\\n)?'(?:, exception: ([^\n]*))?")


def refusals(log_text: str) -> list[str]:
    """One line for each SuperNode the SuperLink refused in `log_text`, naming its key's fingerprint."""
    lines = []
    for code, pem, why in _REFUSAL.findall(log_text):
        try:
            key = serialization.load_pem_public_key((pem.replace("\\n", "\n") + "\n").encode())
            name = f"key {fingerprint(key)}" if isinstance(key, ec.EllipticCurvePublicKey) else "a key"
        except (ValueError, UnsupportedAlgorithm):
            name = "a key"
        if code == "2001":
            reason = "it has no registered key (started without --auth-supernode-private-key?)"
        elif "No SuperNode found" in (why or ""):
            reason = "its key is not registered"
        else:
            reason = (why or "activation failed").rstrip(".") + " (a second process with the same key?)"
        lines.append(f"the SuperLink refused a SuperNode ({name}): {reason}")
    return lines
