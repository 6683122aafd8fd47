"""Event handler for the tracing tests."""

from tyk.decorators import *  # noqa: F403


@Event  # noqa: F405
def TracedEvent(event, spec):
    pass
