"""Response hook sample: adds a header to the upstream's response.

API definition: ``"custom_middleware": {"driver": "grpc",
"response": [{"name": "AppendHeader"}]}``. Edit ``response.headers`` (or
``response.raw_body`` for the body, not ``response.body``) and keep ``status_code``.
"""

from tyk.decorators import *


@Hook
def AppendHeader(request, response, session, metadata, spec):
    response.headers["Myresponseheader"] = "Myresponsevalue"
    return response
