"""SacNativeAuthenticator: NativeAuthenticator with the embedded stack's first admin."""

from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Any

import bcrypt
from nativeauthenticator import NativeAuthenticator
from nativeauthenticator.handlers import LoginHandler as NativeLoginHandler
from traitlets import Unicode, default


class _NoStatsd:
    """JupyterHub 6 removed ``handler.statsd``; NativeAuthenticator 1.3 still times logins."""

    def timer(self, name: str) -> Any:
        return _NoTimer()


class _NoTimer(nullcontext):
    def start(self) -> _NoTimer:
        return self

    def stop(self, send: bool = True) -> None:
        return None


class LoginHandler(NativeLoginHandler):
    """NativeAuthenticator's login page, made to work on JupyterHub 6."""

    statsd = _NoStatsd()

    def _render(self, login_error: str | None = None, username: str | None = None,
                **_error_page: Any):  # fmt: skip
        # JupyterHub 6 renders failed form posts through _render(**error namespace).
        return super()._render(login_error=login_error, username=username)


class SacNativeAuthenticator(NativeAuthenticator):
    """Creates the first admin (``admin``) with the password ``sac up`` prepared.

    The first admin's name is reserved: its account comes only from the configured
    password, never from a sign-up. NativeAuthenticator authorises a sign-up at once
    when its name is in ``admin_users`` (and under ``open_signup``), so without this
    the first visitor of a hub started without a password could claim ``admin``; and
    whatever grants that name its rights (``admin_users``, a role) would follow.
    """

    first_admin = Unicode("admin", help="Name of the administrator created at first start.").tag(
        config=True
    )

    first_admin_password = Unicode(
        help="Password of the first admin (default: $SAC_ADMIN_PASSWORD)."
    ).tag(config=True)

    @default("first_admin_password")
    def _default_first_admin_password(self) -> str:
        return os.environ.get("SAC_ADMIN_PASSWORD", "")

    def get_handlers(self, app: Any) -> list[tuple[str, Any]]:
        return [
            (url, LoginHandler if handler is NativeLoginHandler else handler)
            for url, handler in super().get_handlers(app)
        ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ensure_first_admin()

    def is_first_admin(self, username: str) -> bool:
        """``username`` is the first admin's, as the hub will see it (after the same
        normalisation: case, username_map), so ``Admin`` is ``admin`` too."""
        return self.normalize_username(username) == self.normalize_username(self.first_admin)

    def user_exists(self, username: str) -> bool:
        # The sign-up page asks this first: the reserved name is always taken, so a
        # sign-up under it is refused with "this username is already in use".
        return self.is_first_admin(username) or super().user_exists(username)

    def create_user(self, username: str, password: str, **kwargs: Any) -> Any:
        if self.is_first_admin(username):
            self.log.warning(
                "Refused a sign-up as %r: that name is reserved for the first SAC"
                " administrator, created only from first_admin_password"
                " ($SAC_ADMIN_PASSWORD)",
                username,
            )
            return None
        return super().create_user(username, password, **kwargs)

    def ensure_first_admin(self) -> None:
        password = self.first_admin_password
        info = self.get_user(self.first_admin)
        if not password:
            if info is None:
                self.log.warning(
                    "The first SAC administrator %r was NOT created: no password is"
                    " configured (c.SacNativeAuthenticator.first_admin_password or"
                    " $SAC_ADMIN_PASSWORD). Nobody can sign up under that name. To"
                    " create it, start the hub with SAC_ADMIN_PASSWORD set (`sac up`"
                    " sets one and prints it).",
                    self.first_admin,
                )
            return
        if info is None:
            # create_user honours enable_signup; the first admin must exist regardless.
            from nativeauthenticator.orm import UserInfo

            info = UserInfo(
                username=self.normalize_username(self.first_admin),
                password=bcrypt.hashpw(password.encode(), bcrypt.gensalt()),
                is_authorized=True,
            )
            self.db.add(info)
            self.db.commit()
            self.log.info("Created the first SAC administrator %r", self.first_admin)
        elif os.environ.get("SAC_ADMIN_PASSWORD_EXPLICIT") == "1" and not bcrypt.checkpw(
            password.encode(), info.password
        ):
            # The operator set SAC_ADMIN_PASSWORD: it wins over a changed password.
            self.change_password(self.first_admin, password)
            self.log.info("Reset the password of %r from SAC_ADMIN_PASSWORD", self.first_admin)
