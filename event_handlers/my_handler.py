"""Event handler sample.

API definition: ``"event_handlers": {"events": {"AuthFailure": [{"handler_name":
"cp_dynamic_handler", "handler_meta": {"name": "my_handler"}}]}}``. ``event.message`` is
a dict with ``Type``, ``Meta`` and ``TimeStamp``; ``spec`` has ``APIID`` and ``OrgID``.
"""

from tyk.decorators import *
from gateway import TykGateway as tyk


@Event
def my_handler(event, spec):
    meta = event.message.get("Meta") or {}
    # Meta may carry the rejected key ("Key"): log the event, not the credentials.
    tyk.log(
        "my_handler: {} on API {} ({})".format(
            event.message.get("Type"), spec.get("APIID"), meta.get("Message", "")
        ),
        "info",
    )
