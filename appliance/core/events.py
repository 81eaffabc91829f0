"""Server events that features observe. An Enum, so a typo is an AttributeError, not a silent no-op."""

from enum import Enum


class Event(Enum):
    SESSION_BOUND = "session-bound"            # session: a resource was bound
    SESSION_CLOSED = "session-closed"          # session: the stream ended, for whatever reason
    PRESENCE_INITIAL = "presence-initial"      # session: first available presence of a session
    MESSAGE_OFFLINE = "message-offline"        # routed: no resource can take this message now
    MESSAGE_DELIVERED = "message-delivered"    # routed, sessions: a message to a local account was queued to these
    USER_DELETED = "user-deleted"              # username: account removed
    DELIVERY_CONFIRMED = "delivery-confirmed"  # username, receipts: the client has these stored stanzas
    RECEIPTS_RELEASED = "receipts-released"    # username: a session ended with stored stanzas unconfirmed
    OWNED_CONFIRMED = "owned-confirmed"        # username, [OwnedReceipt]: the client has these tracked stanzas
    OWNED_RELEASED = "owned-released"          # username, [OwnedReceipt]: a session ended without confirming these
    NOTIFICATION_SENT = "notification-sent"    # username, stanza: a notification went to (or waits for) this user
