"""Gateway store sample: counts the requests of each API in the shared store.

``tyk.store_data``/``tyk.get_data`` keep data under ``coprocess-data:<key>``, shared by
every worker (and with Redis, by every tykworker host). ``get_data`` returns bytes,
``b""`` when the key is missing. The read-then-write below is not atomic: under
concurrency a few increments can be lost, which is fine for a sample.
"""

from tyk.decorators import *
from gateway import TykGateway as tyk

TTL_SECONDS = 3600


@Hook
def SetKeyOnRequest(request, session, spec):
    key = "request-count-" + spec["APIID"]
    count = int(tyk.get_data(key) or b"0") + 1
    tyk.store_data(key, str(count), TTL_SECONDS)
    request.add_header("X-Request-Count", str(count))
    return request, session
