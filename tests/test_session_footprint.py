"""What every idle connection keeps must stay small: the objects held per session have no instance
dict (__slots__). Past 30 attributes a dict stops sharing its keys, and the recorded benchmark run
caught it as ~2.7 KB more per idle TLS session (docs/performance.md, third round)."""

from __future__ import annotations

import pytest

from appliance.core.session import Session
from appliance.net.c2s import Connection, _Outbox
from appliance.net.transport import Transport
from appliance.proto.c2s import C2SStream
from appliance.proto.sm import StreamManagement
from appliance.proto.xmlstream import StreamParser, _RestrictedScanner


@pytest.mark.parametrize("cls", [Connection, _Outbox, Transport, Session, StreamManagement, C2SStream,
                                 StreamParser, _RestrictedScanner],
                         ids=lambda cls: cls.__name__)
def test_per_session_objects_have_no_instance_dict(cls: type) -> None:
    assert cls.__dictoffset__ == 0, f"{cls.__name__} instances carry a __dict__: give it __slots__"
