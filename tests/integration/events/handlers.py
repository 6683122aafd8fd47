"""Event handler used by the integration tests: records each event in the store."""

import json

from gateway import TykGateway as tyk
from tyk.decorators import *  # noqa: F403


@Event  # noqa: F405
def RecordEvent(event, spec):
    tyk.store_data("event:" + event.message["Type"], json.dumps(spec), 60)
