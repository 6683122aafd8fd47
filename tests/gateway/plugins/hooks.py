"""Hooks of the end-to-end suite, one of each kind (the gateway calls them by name)."""

import json
import os
import time

from tyk.decorators import Hook


@Hook
def GwPre(request, session, spec):
    """Pre: header, parameter, URL, method and body rewrites driven by request headers."""
    request.add_header("X-Pre", "pre-ran")
    request.delete_header("X-Drop-Me")
    request.add_param("added", "by-pre")
    request.delete_param("drop")
    if request.get_header("X-Rewrite-Url"):
        request.object.url = request.get_header("X-Rewrite-Url")
    if request.get_header("X-Rewrite-Method"):
        request.object.method = request.get_header("X-Rewrite-Method")
    if request.get_header("X-Upper-Body"):
        request.object.raw_body = request.object.raw_body.upper()
    if request.get_header("X-Override"):
        overrides = request.object.return_overrides
        overrides.response_code = 418
        overrides.response_error = "short and stout"
        overrides.headers["X-Teapot"] = "yes"
    return request, session


@Hook
def GwAuth(request, session, metadata, spec):
    """Custom auth: keys ``good-*`` (generous limits), ``rate-*`` (2 per minute),
    ``quota-*`` (quota of 2); anything else is refused."""
    key = request.get_header("Authorization") or ""
    kind = key.split("-", 1)[0]
    if kind not in ("good", "rate", "quota"):
        request.object.return_overrides.response_code = 403
        request.object.return_overrides.response_error = "Access denied"
        return request, session, metadata
    session.rate, session.per = (2.0, 60.0) if kind == "rate" else (1000.0, 1.0)
    if kind == "quota":
        session.quota_max, session.quota_remaining, session.quota_renewal_rate = 2, 2, 3600
    else:
        session.quota_max = -1
    metadata["token"] = key
    metadata["tier"] = "gold"
    return request, session, metadata


@Hook
def GwPostKeyAuth(request, session, spec):
    request.add_header("X-Post-Key-Auth", session.metadata.get("tier", "none"))
    return request, session


@Hook
def GwPost(request, session, spec):
    config = json.loads(spec.get("config_data") or "{}")
    request.add_header("X-Post", "post-ran")
    request.add_header("X-Config", str(config.get("greeting", "")))
    request.add_header("X-Api-Id", spec.get("APIID", ""))
    return request, session


@Hook
def GwResponse(request, response, session, metadata, spec):
    response.headers["X-Response"] = "response-ran"
    if request.get_header("X-Teapot-Response"):
        response.status_code = 201
        response.raw_body = b"rewritten by the response hook"
        response.headers["Content-Type"] = "text/plain"
    return response


@Hook
def GwEcho(request, session, spec):
    """Leaves the request alone (bodies must cross both ways untouched)."""
    return request, session


@Hook
def GwSleep(request, session, spec):
    time.sleep(float(request.get_header("X-Sleep") or "30"))
    return request, session


@Hook
def GwGate(request, session, spec):
    """Holds its worker until the file named by ``X-Gate`` exists (the test opens it)."""
    while not os.path.exists(request.get_header("X-Gate")):
        time.sleep(0.005)
    return request, session


@Hook
def GwCrash(request, session, spec):
    os._exit(3)
