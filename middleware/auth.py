"""Custom authentication sample (``auth_check``).

Accepts exactly one key, sent as ``Authorization: 47a0c79c427728b3df4af62b9ed4f2a5``;
anything else gets 403 {"error": "Access denied"}. The API needs
``"use_keyless": false``, ``"custom_plugin_auth_enabled": true`` and
``"custom_middleware": {"driver": "grpc", "auth_check": {"name": "MyAuthCheck"}}``.
"""

from tyk.decorators import *
from gateway import TykGateway as tyk

VALID_KEY = "47a0c79c427728b3df4af62b9ed4f2a5"


@Hook
def MyAuthCheck(request, session, metadata, spec):
    if request.get_header("Authorization") != VALID_KEY:
        tyk.log("MyAuthCheck: rejected a request to " + request.object.url, "warning")
        request.object.return_overrides.response_code = 403
        request.object.return_overrides.response_error = "Access denied"
        return request, session, metadata

    # The gateway authenticates the request with metadata["token"] as the key id.
    metadata["token"] = VALID_KEY
    session.rate = 1000.0  # requests...
    session.per = 1.0  # ...per second
    session.quota_max = 100000  # requests...
    session.quota_remaining = 100000
    session.quota_renewal_rate = 3600  # ...per hour
    return request, session, metadata
