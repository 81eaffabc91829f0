"""Read an invite's QR code from an image file (a screenshot, a photo, the PNG `appliance invite
create --png` writes), for `appliance pair --qr FILE`.

zxing-cpp decodes (a self-contained wheel: no system libraries, so it works inside the PyInstaller
binary, unlike zbar); Pillow opens the image formats. Both are imported only when a picture is
read: every `appliance` command imports this module, and the server would otherwise carry them
(about 4 MiB of resident memory) for nothing.
"""

from __future__ import annotations

from pathlib import Path


class NoQrCode(Exception):
    """The file is no image, or holds no readable QR code; the message says which."""


def read_qr(path: Path) -> str:
    """The text of the first QR code in the image at `path`."""
    import zxingcpp
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as image:
            image.load()
            found = zxingcpp.read_barcodes(image.convert("L"), formats=zxingcpp.BarcodeFormat.QRCode)
    except FileNotFoundError:
        raise NoQrCode(f"there is no file {path}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise NoQrCode(f"{path} is not an image this program can read ({exc})") from None
    texts = [code.text for code in found if code.valid and code.text]
    if not texts:
        raise NoQrCode(f"no QR code found in {path}; take a sharper, straighter picture of it")
    return texts[0]
