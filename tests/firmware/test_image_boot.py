"""The arm64 disk image boots in qemu (-M virt, Cortex-A53, 512 MB) into a working appliance, and a
power cut loses nothing the server acknowledged.

From the host, through user-mode networking restricted to one host forward: the first-boot
administrator invite is read off the serial console, a client pairs with it (the appliance's own
client library), the administrator makes an account invite for a second user (XEP-0050 ad-hoc
command, XEP-0401), the two exchange messages, and the first sends one more while the second is
offline (the answer to a ping sent after it means the server has stored it, as in
tests/test_durability.py). Then qemu is killed and the same disk booted again: both accounts log
in and the second gets the offline message. The disk copy is 1 GiB larger than the image, so the
first boot must grow the root file system, and carries a wifi.txt on its boot partition. What the
boots left on the disk is read back at the end, with the VM stopped."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import trio

from appliance.client.pairing import login, pair
from appliance.client.state import ClientState
from appliance.client.stream import Account, ClientStream
from appliance.pairing.invites import parse_uri
from appliance.proto import forms, ns
from appliance.proto.stanza import Element, make, sub
from tests.firmware.vm import BOOT_PARTITION, VM, XMPP_HELLO, debugfs, disk_copy, partitions, root_filesystem
from tests.harness import free_port

MAC = "52:54:00:12:ab:cd"               # the first boot names the box after its last 4 hex digits
HOSTNAME = "appliance-abcd"
INVITE = re.compile(r"xmpp:[^\s?]+\?register;\S+")
CREATE_ACCOUNT_NODE = "urn:xmpp:invite#create-account"
FIRST_BOOT_BUDGET = 600                  # seconds; about 2 minutes on an idle 2-core box


def command(node: str, domain: str, **attributes: str) -> Element:
    request = make("iq", to=domain, type_="set")
    sub(request, f"{{{ns.COMMANDS}}}command", node=node, **attributes)
    return request


async def account_invite(admin: ClientStream, username: str) -> str:
    """An account invite for `username` (and the admin as its contact), made over XEP-0050."""
    first = await admin.iq(command(CREATE_ACCOUNT_NODE, admin.domain, action="execute"))
    session = first.find(f"{{{ns.COMMANDS}}}command").get("sessionid")
    done = command(CREATE_ACCOUNT_NODE, admin.domain, action="complete", sessionid=session)
    done[0].append(forms.build("submit", [forms.Field("username", values=(username,)),
                                          forms.Field("roster-subscription", "boolean", values=("1",))]))
    answer = await admin.iq(done)
    return answer.findtext(f".//{{{ns.DATA_FORMS}}}field[@var='uri']/{{{ns.DATA_FORMS}}}value")


async def send_chat(stream: ClientStream, to: str, body: str) -> None:
    message = make("message", to=to, type_="chat")
    sub(message, "body").text = body
    await stream.send(message)


async def stored(stream: ClientStream) -> None:
    """Stanzas of one session are handled in order: the ping's answer means what was sent before
    it is done (an offline message committed to the database)."""
    ping = make("iq", to=stream.domain, type_="get")
    sub(ping, f"{{{ns.PING}}}ping")
    await stream.iq(ping)


async def next_body(stream: ClientStream) -> tuple[str, str]:
    """(sender's bare JID, body) of the next message with a body."""
    with trio.fail_after(60):
        while True:
            stanza = await stream.receive()
            body = stanza.findtext(f"{{{ns.CLIENT}}}body")
            if stanza.tag == f"{{{ns.CLIENT}}}message" and body is not None:
                return stanza.get("from", "").partition("/")[0], body


async def first_boot_session(uri: str, port: int, clients: Path, vm: VM) -> tuple[Account, Account, float]:
    """Pair the admin through `uri`, invite and pair bob, chat both ways, then leave bob a message
    while he is offline. Returns the two accounts as stored by the client library, and the
    seconds from qemu start to the first login."""
    anna = await pair(uri, ClientState(clients / "anna"), host="127.0.0.1", port=port, username="anna", timeout=60)
    admin = await login(anna, timeout=60)
    first_login = vm.since_start()
    bob_uri = await account_invite(admin, "bob")
    bob = await pair(bob_uri, ClientState(clients / "bob"), host="127.0.0.1", port=port, timeout=60)
    bob_stream = await login(bob, timeout=60)
    await send_chat(admin, bob.jid, "hello bob, from the appliance")
    assert await next_body(bob_stream) == (anna.jid, "hello bob, from the appliance")
    await send_chat(bob_stream, anna.jid, "hello anna")
    assert await next_body(admin) == (bob.jid, "hello anna")
    await bob_stream.aclose()
    await send_chat(admin, bob.jid, "this one waits for you across a power cut")
    await stored(admin)
    await admin.aclose()
    return anna, bob, first_login


async def after_power_cut(anna: Account, bob: Account) -> None:
    bob_stream = await login(bob, timeout=60)
    assert await next_body(bob_stream) == (anna.jid, "this one waits for you across a power cut")
    await bob_stream.aclose()
    admin = await login(anna, timeout=60)
    await stored(admin)
    await admin.aclose()


WIFI_TXT = "ssid=Test Net\r\npsk=not a real passphrase\r\ncountry=de\r\n"


def put_wifi_txt(disk: Path, scratch: Path) -> None:
    """wifi.txt on the boot partition, as a user would drop it there from a Windows PC."""
    source = scratch / "wifi.txt"
    source.write_bytes(WIFI_TXT.encode())
    subprocess.run(["mcopy", "-i", f"{disk}{BOOT_PARTITION}", str(source), "::/wifi.txt"], check=True)


def boot_partition_file(disk: Path, name: str) -> str | None:
    result = subprocess.run(["mtype", "-i", f"{disk}{BOOT_PARTITION}", f"::/{name}"], capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else None


def assert_wifi_applied(disk: Path, root: Path) -> None:
    """appliance-wifi.service turned wifi.txt into wpa_supplicant's configuration (root only) and
    left wifi.txt.applied without the passphrase."""
    assert boot_partition_file(disk, "wifi.txt") is None
    applied = boot_partition_file(disk, "wifi.txt.applied")
    assert applied is not None and "ssid=Test Net" in applied and "not a real passphrase" not in applied
    assert owners_and_modes(root, "/etc/wpa_supplicant")["wpa_supplicant-wlan0.conf"] == ("100600", "0")
    conf = debugfs(root, "cat /etc/wpa_supplicant/wpa_supplicant-wlan0.conf")
    assert 'psk="not a real passphrase"' in conf and "country=DE" in conf


def owners_and_modes(root: Path, directory: str) -> dict[str, tuple[str, str]]:
    """{name: (octal mode, owner uid)} of a directory on a root file system copy."""
    entries = {}
    for line in debugfs(root, f"ls -l {directory}").splitlines():
        fields = line.split()
        if len(fields) >= 9:
            entries[fields[-1]] = (fields[1], fields[3])
    return entries


def assert_left_by_first_boot_and_the_unit(disk: Path, image: Path, scratch: Path) -> None:
    """Read back from the stopped disk what the first boot and appliance.service left: hostname,
    a machine-id of its own (the image's is empty) naming the persistent journal, the root
    partition grown, the data written by the `appliance` user with UMask=0077, and Wi-Fi."""
    assert debugfs(image, "cat /etc/machine-id", offset=partitions(image)[1]["start"] * 512) == ""
    assert partitions(disk)[1]["size"] > partitions(image)[1]["size"]
    root = root_filesystem(disk, scratch)
    assert debugfs(root, "cat /etc/hostname").strip() == HOSTNAME
    machine_id = debugfs(root, "cat /etc/machine-id").strip()
    assert re.fullmatch(r"[0-9a-f]{32}", machine_id)
    assert machine_id in debugfs(root, "ls /var/log/journal")
    uid = next(line.split(":")[2] for line in debugfs(root, "cat /etc/passwd").splitlines()
               if line.startswith("appliance:"))
    assert int(uid) < 1000
    data = owners_and_modes(root, "/var/lib/appliance")
    assert data["."] == ("40750", uid)
    assert data["appliance.sqlite3"] == ("100600", uid)
    assert data["tls"] == ("40700", uid)
    assert_wifi_applied(disk, root)


def boot_until_ready(vm: VM) -> float:
    """Start the VM and wait for the XMPP port; seconds from qemu start to it answering."""
    vm.start()
    vm.wait_port(5222, timeout=FIRST_BOOT_BUDGET, hello=XMPP_HELLO)
    return vm.since_start()


def test_image_boots_pairs_and_keeps_an_offline_message_across_a_power_cut(image_arm64: Path, tmp_path: Path) -> None:
    disk = disk_copy(image_arm64, tmp_path)
    subprocess.run(["truncate", "-s", "+1G", str(disk)], check=True)
    put_wifi_txt(disk, tmp_path)
    port = free_port()
    vm = VM(disk, tmp_path, forwards={5222: port}, mac=MAC)
    try:
        ready = boot_until_ready(vm)
        uri = vm.wait_console(INVITE, timeout=120).group(0)
        assert parse_uri(uri).jid == f"{HOSTNAME}.local"
        assert f"appliance-firstboot: hostname {HOSTNAME}" in vm.console()
        assert re.search(r"appliance-firstboot: root file system grown to \d+ MiB", vm.console())
        assert "Wi-Fi network 'Test Net' configured" in vm.console()
        assert "net-devices-wlan0" not in vm.console()     # no boot job waits for a Wi-Fi device
        anna, bob, first_login = trio.run(first_boot_session, uri, port, tmp_path, vm)
        assert anna.jid == f"anna@{HOSTNAME}.local" and bob.jid == f"bob@{HOSTNAME}.local"
        vm.stop()                                          # the power cut

        again = boot_until_ready(vm)
        trio.run(after_power_cut, anna, bob)
        console = vm.console()
        assert "appliance-firstboot" not in console        # ran once, on the first boot
        assert not INVITE.search(console)                  # accounts exist: no first-start invite
        vm.stop()
        assert_left_by_first_boot_and_the_unit(disk, image_arm64, tmp_path)
        print(f"\nqemu start -> XMPP port: {ready:.0f} s; -> first login: "
              f"{first_login:.0f} s; second boot -> XMPP port: {again:.0f} s")
    finally:
        vm.stop()
