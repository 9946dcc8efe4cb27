"""The one exception type the session raises for problems the user (or the client) caused."""


class SessionError(ValueError):
    """A request the session cannot serve because of its input (bad clicks, unreadable file, ...).

    The message is meant to be shown to the user unchanged (the infer task turns it into a 4xx),
    so it always says what was wrong and with which value.
    """
