"""Request-header samples: a Pre hook and a Post hook.

API definition (classic):
    "custom_middleware": {"driver": "grpc",
                          "pre": [{"name": "MyPreMiddleware"}],
                          "post": [{"name": "MyPostMiddleware"}]}
"""

from tyk.decorators import *
from gateway import TykGateway as tyk


@Hook
def MyPreMiddleware(request, session, spec):
    tyk.log("MyPreMiddleware: " + request.object.method + " " + request.object.url, "info")
    request.add_header("Myheader", "Myvalue")
    return request, session


@Hook
def MyPostMiddleware(request, session, spec):
    tyk.log("MyPostMiddleware: API " + spec["APIID"], "info")
    request.add_header("Mypostheader", "Mypostvalue")
    return request, session
