"""HTML for the appliance's few web pages: one page shell, one style sheet, escaping by default.

No template engine: the pages are small and fixed, so `string.Template` does, and every value put
into a template goes through `html.escape` (quotes included, so values are safe inside attribute
values too). Invite pages show data that people chose (usernames, a configured public host), and a
token comes from the URL: escaping in one place, always, is what keeps those from becoming markup
or script. The only values inserted unescaped are `Markup` fragments, and only `render` makes them,
from templates whose own values it escaped.

The style sheet is inline, allowed by its hash in the Content-Security-Policy: no scripts, no
external fonts or files (the box may be offline), and one request fewer for a phone on weak Wi-Fi.
"""

from __future__ import annotations

import base64
import hashlib
import html
from string import Template

from starlette.responses import HTMLResponse


class Markup(str):
    """HTML that `render` produced, inserted into another template as it is."""


def render(template: Template, **values: str | Markup) -> Markup:
    escaped = {name: value if isinstance(value, Markup) else html.escape(value, quote=True)
               for name, value in values.items()}
    return Markup(template.substitute(escaped))


def join(fragments: list[Markup]) -> Markup:
    return Markup("".join(fragments))


# Phone first: one column, the QR within the first screen, the fingerprint in four lines of four groups.
STYLE = """
body{margin:0;font:16px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1c1c1c;background:#f4f4f1}
main{max-width:34rem;margin:0 auto;padding:1rem 1.1rem 2rem;background:#fff;min-height:100vh;box-sizing:border-box}
h1{font-size:1.45rem;margin:.3rem 0 .5rem}h2{font-size:1.1rem;margin:1.6rem 0 .4rem}
p{margin:.5rem 0}a{color:#0b57a4}
.qr{display:block;width:100%;max-width:20rem;height:auto;margin:.6rem auto;image-rendering:pixelated}
.button{display:block;text-align:center;padding:.8rem;border-radius:.5rem;background:#0b57a4;color:#fff;
font-weight:600;text-decoration:none;margin:.8rem 0}
ul{padding-left:1.2rem}li{margin:.3rem 0}
dl{margin:.5rem 0}dt{font-weight:600;margin-top:.6rem}dd{margin:0;overflow-wrap:anywhere}
.fingerprint{font-family:ui-monospace,"DejaVu Sans Mono",monospace;max-width:21ch}
.note{font-size:.92rem;color:#4a4a4a}
"""

_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
# The pages need nothing but their own images and the inline style above.
CONTENT_SECURITY_POLICY = (f"default-src 'none'; img-src 'self'; style-src 'sha256-{_STYLE_HASH}'; "
                           "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

_SHELL = Template("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>$title</title>
$head<style>$style</style>
</head>
<body><main>
$body
</main></body>
</html>
""")

_MESSAGE = Template("<h1>$heading</h1>\n<p>$text</p>")


def page(title: str, body: Markup, head: Markup = Markup("")) -> str:
    return render(_SHELL, title=title, head=head, style=Markup(STYLE), body=body)


def message_page(status: int, heading: str, text: str, headers: dict[str, str] | None = None) -> HTMLResponse:
    """A small page that says one thing: errors, and invites that cannot be used."""
    return HTMLResponse(page(heading, render(_MESSAGE, heading=heading, text=text)), status_code=status,
                        headers=headers)
