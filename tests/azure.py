"""The real Azure SDK for Python pointed at a running `overhaul serve`: a credential handing out its token."""

from __future__ import annotations

import time
from typing import Any

from azure.core.credentials import AccessToken
from azure.core.pipeline import PipelineRequest
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.mgmt.compute import ComputeManagementClient

from tests.serve import Served


class StaticToken:
    """A credential that hands out overhaul's bearer token."""

    def __init__(self, token: str) -> None:
        self.token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self.token, int(time.time()) + 3600)


class BearerOverLoopback(SansIOHTTPPolicy[Any, Any]):
    """The token on every request: overhaul listens on loopback HTTP, where the SDK's own policy insists on TLS."""

    def __init__(self, token: str) -> None:
        self.token = token

    def on_request(self, request: PipelineRequest[Any]) -> None:
        request.http_request.headers["Authorization"] = f"Bearer {self.token}"


def compute_client(served: Served, subscription: str) -> ComputeManagementClient:
    return ComputeManagementClient(
        credential=StaticToken(served.token),
        subscription_id=subscription,
        base_url=served.url,
        authentication_policy=BearerOverLoopback(served.token),
        polling_interval=0.2,
    )
