"""TLS and SuperNode keys for the Deployment Engine (eurosat/launch/security.py): what is made, with
which modes, and every certificate folder that cannot work refused in one line before anything
starts. Fast: no Flower process (the real refusal and join are in test_deployment.py)."""

from __future__ import annotations

import datetime
import shutil
import stat
from pathlib import Path

import pytest
from conftest import in_process
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from eurosat.fl.config import ConfigError
from eurosat.launch import launcher, security


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def tls(tmp_path) -> Path:
    return security.make_throwaway_tls(tmp_path / "tls", "127.0.0.1")


def test_throwaway_tls_is_private_and_valid_for_loopback(tls):
    assert _mode(tls) == 0o700
    assert sorted(p.name for p in tls.iterdir()) == ["ca.crt", "server.key", "server.pem"]  # no CA key
    assert all(_mode(p) == 0o600 for p in tls.iterdir())
    for dialled in ("127.0.0.1", "localhost"):
        assert security.check_certificates(tls, dialled) == tls.resolve()


def test_node_keys_are_private_and_what_flower_reads(tmp_path):
    public = security.make_node_keys(tmp_path / "keys", 2)
    assert _mode(tmp_path / "keys") == 0o700
    assert [p.name for p in public] == ["supernode-0.pub", "supernode-1.pub"]
    for i, pub in enumerate(public):
        secret = security.key_paths(tmp_path / "keys", i)[0]
        assert _mode(secret) == 0o600 and _mode(pub) == 0o600
        key = serialization.load_ssh_private_key(secret.read_bytes(), None)  # as flower-supernode loads it
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
        assert security.read_public_key(pub).public_numbers() == key.public_key().public_numbers()


def test_run_secrets_of_a_resumed_run_are_made_anew(tmp_path):
    tls, keys = security.make_run_secrets(tmp_path / "secrets", "127.0.0.1", None, 3)
    assert _mode(tmp_path / "secrets") == 0o700 and len(list(keys.glob("*.key"))) == 3
    with pytest.raises(FileExistsError):  # never overwritten in place: the launcher removes the old folder first
        security.make_run_secrets(tmp_path / "secrets", "127.0.0.1", None, 3)


def test_an_expired_or_not_yet_valid_certificate_is_refused(tls):
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=security.VALID_DAYS + 1)
    with pytest.raises(ConfigError, match=r"ca.crt expired on \d{4}-\d\d-\d\d"):
        security.check_certificates(tls, "127.0.0.1", now=later)
    earlier = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
    with pytest.raises(ConfigError, match="is not valid before"):
        security.check_certificates(tls, "127.0.0.1", now=earlier)


@pytest.mark.parametrize("swapped, message", [("server.key", "server.key does not match .*server.pem"),
                                              ("ca.crt", "server.pem is not signed by .*ca.crt")])
def test_a_file_of_another_certificate_set_is_refused(tls, tmp_path, swapped, message):
    """The server key of another certificate, or another CA: each named, before anything starts."""
    other = security.make_throwaway_tls(tmp_path / "other", "127.0.0.1")
    (tls / swapped).unlink()
    shutil.copy(other / swapped, tls / swapped)
    with pytest.raises(ConfigError, match=message):
        security.check_certificates(tls, "127.0.0.1")


def test_an_address_outside_the_certificate_is_refused(tmp_path):
    tls = security.make_throwaway_tls(tmp_path / "tls", "192.0.2.7")
    assert security.check_certificates(tls, "192.0.2.7")
    with pytest.raises(ConfigError, match="is for .*, not 198.51.100.1, the address the SuperNodes"):
        security.check_certificates(tls, "198.51.100.1")


def test_unreadable_or_missing_files_are_refused(tls, tmp_path):
    (tls / "server.pem").write_bytes(b"not a certificate")
    with pytest.raises(ConfigError, match="server.pem: not a PEM certificate"):
        security.check_certificates(tls, "127.0.0.1")
    with pytest.raises(ConfigError, match="missing ca.crt, server.pem, server.key"):
        security.check_certificates(tmp_path / "nothing", "127.0.0.1")
    (tmp_path / "bad.pub").write_text("ssh-ed25519 AAAA")
    with pytest.raises(ConfigError, match="not an OpenSSH public key"):
        security.read_public_key(tmp_path / "bad.pub")
    with pytest.raises(ConfigError, match="cannot read it"):
        security.read_public_key(tmp_path / "absent.pub")


# Two lines of a real flwr 1.42 SuperLink log (TLS, --enable-supernode-auth): a SuperNode with an
# unregistered key, then one started without --auth-supernode-private-key.
REFUSED_LOG = (
    "\x1b[91mERROR \x1b[0m:     [/v1/fleet/activate-node][ApiError:2004] Attempted to register SuperNode with "
    "public key: b'-----BEGIN PUBLIC KEY-----\\nMHYwEAYHKoZIzj0CAQYFK4EEACIDYgAElcETgIGrwOMwaHN8LRXmzEH2vXJMdUh4\\n"
    "2T4kvo6AEMaTvCHf+zRLq0VvgrPHsrrPNgS6yoboEXCZlZovoeMxIrXTQVvwyPuu\\n7vYrpTVqIIqoyi1GZgL5xeeRkD6vrZRv\\n"
    "-----END PUBLIC KEY-----\\n', exception: No SuperNode found with the given public key.\n"
    "2026-12-05T06:52:08.662Z INFO [uvicorn.access] 127.0.0.1:57920 - \"POST /v1/fleet/activate-node HTTP/1.1\" 412\n"
    "\x1b[91mERROR \x1b[0m:     [/v1/fleet/register-node][ApiError:2001] Attempted to register SuperNode with "
    "public key: b'-----BEGIN PUBLIC KEY-----\\nMHYwEAYHKoZIzj0CAQYFK4EEACIDYgAENbQ/CkY5XhrMvYYrVtjq49n+62FdvyNI\\n"
    "45gFunZRa6kcS9DE5JGwjvDFpaXuFkNJMJeP8pxMhcriHAFSIEOycgPXbdZNV120\\nNbmzAVGwqljhXhZs4R5MC1q43cueTt29\\n"
    "-----END PUBLIC KEY-----\\n'\n"
)


def test_refusals_name_each_refused_key_in_one_line():
    assert security.refusals(REFUSED_LOG) == [
        "the SuperLink refused a SuperNode (key SHA256:pe9IKCkBprqomR4oknmZs4CpcXfepDH7CDecpAs3PDA): "
        "its key is not registered",
        "the SuperLink refused a SuperNode (key SHA256:BR10DrXo8ZYAU790E+/nBA56TGRZLf1YEsYtjQ+kfsc): "
        "it has no registered key (started without --auth-supernode-private-key?)",
    ]
    assert security.refusals("INFO [Fleet.ActivateNode] Activated node_id=1\n") == []


def test_the_launcher_refuses_bad_security_options_before_anything_starts(tls, tmp_path):
    """One line and exit 2, no run folder: nothing has started."""
    out = tmp_path / "out"
    (tls / "server.pem").unlink()
    shutil.copy(security.make_throwaway_tls(tmp_path / "other", "127.0.0.1") / "server.pem", tls / "server.pem")
    cases = {
        ("--certificates", tls): "server.key does not match",
        ("--insecure", "--certificates", tls): "--insecure: not with --certificates or --register-key",
        ("--register-key", tmp_path / "absent.pub"): "--register-key",
    }
    for extra, message in cases.items():
        proc = in_process(launcher.main, "--engine", "deployment", *extra, "-c", f"output-dir='{out}'")
        assert proc.returncode == 2 and message in proc.stderr, (extra, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()
    proc = in_process(launcher.main, "--insecure", "-c", f"output-dir='{out}'")
    assert proc.returncode == 2 and "are for --engine deployment" in proc.stderr
