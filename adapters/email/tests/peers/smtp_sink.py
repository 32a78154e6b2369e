"""The tests' SMTP server: aiosmtpd writing every accepted message into a Maildir.

It binds its own port (port 0, so two tests never race for one) and prints
`PORT <n>` on stdout once it listens. Options:

  --maildir DIR            where accepted messages go (required)
  --security plain|starttls|tls
                           plain: no TLS; starttls: STARTTLS offered and required before
                           AUTH and MAIL; tls: TLS from the first byte
  --cert PEM --key PEM     the server certificate (starttls, tls)
  --user U --password P    require AUTH (PLAIN/LOGIN with these credentials)
  --token T                also accept AUTH XOAUTH2 for --user with this bearer token
"""

import argparse
import asyncio
import base64
import mailbox
import socket
import ssl
import sys

from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Sink(Mailbox):
    def __init__(self, maildir, user, token):
        super().__init__(maildir)
        self.user = user
        self.token = token

    async def auth_XOAUTH2(self, server, args):
        """RFC-less but common (Google/Microsoft): base64 of
        `user=<u>\\x01auth=Bearer <token>\\x01\\x01`, as the AUTH argument or after a 334."""
        if len(args) > 1:
            blob = args[1]
        else:
            blob = await server.challenge_auth("", encode_to_b64=False)
            if blob is server.AuthCommandNotImplemented or blob is None:
                return AuthResult(success=False, handled=False)
            blob = blob.decode() if isinstance(blob, bytes) else blob
        try:
            text = base64.b64decode(blob).decode()
        except Exception:
            return AuthResult(success=False, handled=False)
        fields = dict(f.split("=", 1) for f in text.split("\x01") if "=" in f)
        ok = self.token is not None and fields.get("user") == self.user and fields.get("auth") == f"Bearer {self.token}"
        return AuthResult(success=ok, handled=False, auth_data=fields.get("user"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--maildir", required=True)
    ap.add_argument("--security", default="plain", choices=["plain", "starttls", "tls"])
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--token")
    a = ap.parse_args()
    mailbox.Maildir(a.maildir, create=True)

    ctx = None
    if a.security != "plain":
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.cert, a.key)

    def authenticator(server, session, envelope, mechanism, data):
        if isinstance(data, LoginPassword):
            ok = data.login.decode() == a.user and data.password.decode() == a.password
            return AuthResult(success=ok, handled=False)
        return AuthResult(success=False, handled=False)

    handler = Sink(a.maildir, a.user, a.token)
    auth = a.user is not None

    def factory():
        return SMTP(
            handler,
            hostname="sink.test",
            tls_context=ctx if a.security == "starttls" else None,
            require_starttls=a.security == "starttls",
            authenticator=authenticator if auth else None,
            auth_required=auth,
            # Over implicit TLS aiosmtpd does not know the channel is secure; the test server
            # still never offers AUTH on a plain connection when TLS is configured.
            auth_require_tls=a.security == "starttls",
        )

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(
        loop.create_server(factory, sock=sock, ssl=ctx if a.security == "tls" else None)
    )
    print(f"PORT {port}", flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(main())
