"""An XMPP chat appliance in one Trio process."""

__version__ = "0.1.0"
