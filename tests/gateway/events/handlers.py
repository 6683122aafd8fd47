"""Event handlers of the end-to-end suite: each event is appended to $GW_EVENTS_FILE."""

import json
import os

from tyk.decorators import Event


@Event
def gw_auth_failure(event, spec):
    record = {
        "type": event.message.get("Type") if isinstance(event.message, dict) else None,
        "message": event.message,
        "handler_name": event.handler_name,
        "spec": event.spec,
    }
    with open(os.environ["GW_EVENTS_FILE"], "a") as out:
        out.write(json.dumps(record) + "\n")
