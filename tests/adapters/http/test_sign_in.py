"""TLS and signing in as Azure clients do (docs/azure-cli.md): the local CA serve makes, operation URLs on the
caller's scheme and host (a trusted proxy's headers only), the public cloud metadata, the managed identity endpoint
and the access tokens it hands out — verified on every call, refused in Azure's words when expired or tampered."""

from __future__ import annotations

import base64
import json
import os
import ssl
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overhaul.adapters.http.tokens import AUDIENCE, LIFETIME, TokenRefused, Tokens
from tests.builders import API_MODEL, GALLERY, RG, VMSS, publish
from tests.serve import API, Served, serve_in_process

SECRET_HEADER = "X-IDENTITY-HEADER"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with serve_in_process(tmp_path / "state", "--engine", "memory", "--tls", "auto") as running:
        yield running


def identity_token(served: Served, resource: str = AUDIENCE, secret: str | None = None) -> tuple[int, Any]:
    """GET /msi/token as MSAL does on App Service."""
    secret = (served.state_dir / "identity.secret").read_text().strip() if secret is None else secret
    query = urllib.parse.urlencode({"api-version": "2019-08-01", "resource": resource})
    request = urllib.request.Request(f"{served.url}/msi/token?{query}", headers={SECRET_HEADER: secret})
    try:
        with served.open(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# --- TLS ---------------------------------------------------------------------------------------------------------


def test_tls_auto_makes_a_local_ca_whose_keys_are_private_and_serves_https(served: Served) -> None:
    tls = served.state_dir / "tls"
    assert stat.S_IMODE(tls.stat().st_mode) == 0o700
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE((tls / key).stat().st_mode) == 0o600
    # Trusting the CA is enough: the certificate names the loopback address and localhost.
    for host in ("127.0.0.1", "localhost"):
        url = served.url.replace("127.0.0.1", host)
        with served.open(url + "/healthz", timeout=10) as resp:
            assert resp.status == 200
    # Without the CA a client refuses the certificate.
    with pytest.raises(urllib.error.URLError) as refused:
        urllib.request.urlopen(served.url + "/healthz", timeout=10, context=ssl.create_default_context())
    assert isinstance(refused.value.reason, ssl.SSLCertVerificationError)
    assert (served.state_dir / "endpoint").read_text().strip() == served.url


def test_the_local_ca_is_kept_across_restarts(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with serve_in_process(state, "--engine", "memory", "--tls", "auto"):
        first = (state / "tls" / "ca.pem").read_bytes()
    with serve_in_process(state, "--engine", "memory", "--tls", "auto") as again:
        assert (state / "tls" / "ca.pem").read_bytes() == first  # clients given ca.pem keep trusting it
        assert again.call("GET", f"{VMSS}?{API}")[0] == 404


def test_operation_urls_follow_the_scheme_and_host_the_client_used(served: Served) -> None:
    put_scale_set(served)
    status, _, headers = served.call("POST", f"{VMSS}/osRollingUpgrade?{API}")
    assert status == 202
    assert headers["Azure-AsyncOperation"].startswith(served.url + "/subscriptions/")


def put_scale_set(served: Served) -> None:
    identifier = {"publisher": "Canonical", "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts"}
    status, _, _ = served.call("PUT", f"{GALLERY}?{API}", {"properties": {"identifier": identifier}})
    assert status == 201
    publish(served, "1.0.0")
    status, body, _ = served.call("PUT", f"{VMSS}?{API}", API_MODEL)
    assert status in (200, 201), body


@pytest.mark.parametrize("trusted", [True, False])
def test_forwarding_headers_count_only_from_a_trusted_proxy(tmp_path: Path, trusted: bool) -> None:
    proxies = ["--trusted-proxies", "127.0.0.1"] if trusted else []
    with serve_in_process(tmp_path / "state", "--engine", "memory", *proxies) as served:
        put_scale_set(served)
        request = urllib.request.Request(
            f"{served.url}{VMSS}/osRollingUpgrade?{API}",
            method="POST",
            headers={
                "Authorization": f"Bearer {served.token}",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "overhaul.example:8443",
            },
        )
        with served.open(request, timeout=30) as resp:
            operation = resp.headers["Azure-AsyncOperation"]
    if trusted:
        assert operation.startswith("https://overhaul.example:8443/subscriptions/")
    else:
        assert operation.startswith(served.url + "/subscriptions/")


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"], "http.tls_cert"),
        (["--tls-cert", __file__], "http.tls_key"),
        (["--tls", "yes"], "http.tls"),
        (["--trusted-proxies", "proxy.example"], "http.trusted_proxies"),
    ],
)
def test_bad_tls_settings_exit_2_naming_the_setting(tmp_path: Path, flags: list[str], named: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "overhaul.cli", "serve", "--engine", "memory", "--state-dir", str(tmp_path), *flags],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert named in result.stderr and "Traceback" not in result.stderr


def test_the_cli_trusts_the_local_ca_and_finds_the_endpoint_by_itself(served: Served) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OVERHAUL_ENDPOINT"}
    result = subprocess.run(
        [sys.executable, "-m", "overhaul.cli", "vmss", "list", "-g", "myResourceGroup", "--subscription", "s"],
        capture_output=True,
        text=True,
        env={**env, "OVERHAUL_STATE_DIR": str(served.state_dir)},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


# --- sign-in -------------------------------------------------------------------------------------------------------


def test_the_cloud_metadata_is_public_and_names_this_address(served: Served) -> None:
    with served.open(served.url + "/metadata/endpoints?api-version=2022-09-01", timeout=10) as resp:
        doc = json.loads(resp.read())
    assert doc["resourceManager"] == served.url + "/"
    assert doc["authentication"]["loginEndpoint"] == served.url + "/"
    assert AUDIENCE in doc["authentication"]["audiences"]


def test_the_identity_endpoint_hands_a_jwt_the_api_accepts(served: Served) -> None:
    status, doc = identity_token(served)
    assert status == 200, doc
    token = doc["access_token"]
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["aud"] == AUDIENCE and claims["tid"] and claims["oid"]
    assert int(doc["expires_on"]) - time.time() == pytest.approx(LIFETIME, abs=60)
    assert served.call("GET", f"{RG}/providers/Microsoft.Compute/virtualMachineScaleSets?{API}", token=token)[0] == 200
    status, subscriptions, _ = served.call("GET", "/subscriptions?api-version=2022-12-01", token=token)
    assert status == 200
    assert subscriptions["value"][0]["subscriptionId"] == "local"
    assert subscriptions["value"][0]["tenantId"] == claims["tid"]
    status, tenants, _ = served.call("GET", "/tenants?api-version=2022-12-01", token=token)
    assert [t["tenantId"] for t in tenants["value"]] == [claims["tid"]]


@pytest.mark.parametrize(
    ("secret", "resource", "status"),
    [("", AUDIENCE, 401), ("wrong" * 9, AUDIENCE, 401), (None, "https://management.azure.com/", 400)],
)
def test_the_identity_endpoint_refuses_without_the_secret_or_for_another_resource(
    served: Served, secret: str | None, resource: str, status: int
) -> None:
    got, doc = identity_token(served, resource, secret)
    assert got == status and "access_token" not in doc and doc["message"]


def test_the_identity_secret_is_private(served: Served) -> None:
    assert stat.S_IMODE((served.state_dir / "identity.secret").stat().st_mode) == 0o600


def test_an_expired_or_tampered_token_is_refused_in_azures_words(served: Served) -> None:
    tokens = Tokens(served.token)
    expired, _ = tokens.issue(time.time() - 2 * LIFETIME)
    status, doc, headers = served.call("GET", "/subscriptions?api-version=2022-12-01", token=expired)
    assert (status, doc["error"]["code"]) == (401, "ExpiredAuthenticationToken")
    assert headers["WWW-Authenticate"] == "Bearer"
    good, _ = tokens.issue(time.time())
    header, body, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    forged_body = base64.urlsafe_b64encode(json.dumps({**claims, "exp": claims["exp"] + 10**6}).encode())
    forged = f"{header}.{forged_body.decode().rstrip('=')}.{signature}"
    for bad in (forged, Tokens("another" * 8).issue(time.time())[0], f"{header}.{body}."):
        status, doc, _ = served.call("GET", "/subscriptions?api-version=2022-12-01", token=bad)
        assert (status, doc["error"]["code"]) == (401, "InvalidAuthenticationToken"), bad
    # The opaque API token keeps working beside the JWTs.
    assert served.call("GET", "/subscriptions?api-version=2022-12-01")[0] == 200


def test_tokens_verify_their_own_and_nothing_else() -> None:
    tokens = Tokens("t" * 43)
    now = 1_800_000_000.0
    token, expires = tokens.issue(now)
    assert tokens.verify(token, now + 10)["exp"] == expires
    none_alg = base64.urlsafe_b64encode(b'{"alg":"none"}').decode().rstrip("=")
    cases = {
        "expired": (token, now + LIFETIME + 3600, "ExpiredAuthenticationToken"),
        "not yet": (token, now - 3600, "InvalidAuthenticationToken"),
        "alg none": (none_alg + "." + token.split(".", 1)[1], now, "InvalidAuthenticationToken"),
        "other audience": (tokens.issue(now, "https://management.azure.com/")[0], now, "InvalidAuthenticationToken"),
        "garbage": ("a.b.c", now, "InvalidAuthenticationToken"),
    }
    for name, (candidate, at, code) in cases.items():
        with pytest.raises(TokenRefused) as refused:
            tokens.verify(candidate, at)
        assert refused.value.code == code, name


def test_az_login_prints_what_az_needs_and_refuses_plain_http(served: Served, tmp_path: Path) -> None:
    env = {**os.environ, "OVERHAUL_STATE_DIR": str(served.state_dir)}
    env.pop("OVERHAUL_ENDPOINT", None)
    lines = subprocess.run(
        [sys.executable, "-m", "overhaul.cli", "az-login"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    ).stdout
    assert f"export REQUESTS_CA_BUNDLE={served.state_dir / 'tls' / 'ca.pem'}" in lines
    assert f"export IDENTITY_ENDPOINT={served.url}/msi/token" in lines
    assert f"--endpoint-resource-manager {served.url}\n" in lines and "az login --identity" in lines
    plain = subprocess.run(
        [sys.executable, "-m", "overhaul.cli", "az-login", "--endpoint", "http://127.0.0.1:1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert plain.returncode == 1 and "--tls auto" in plain.stderr
