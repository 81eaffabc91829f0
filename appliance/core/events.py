"""Server events that features observe. An Enum, so a typo is an AttributeError, not a silent no-op."""

from enum import Enum


class Event(Enum):
    SESSION_BOUND = "session-bound"            # session: a resource was bound
    SESSION_CLOSED = "session-closed"          # session: the stream ended, for whatever reason
    PRESENCE_INITIAL = "presence-initial"      # session: first available presence of a session
    MESSAGE_OFFLINE = "message-offline"        # stanza: no resource can take this message now
    USER_DELETED = "user-deleted"              # username: account removed
