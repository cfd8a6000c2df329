"""SacNativeAuthenticator: NativeAuthenticator with the embedded stack's first admin."""

from __future__ import annotations

import os

import bcrypt
from nativeauthenticator import NativeAuthenticator
from traitlets import Unicode, default


class SacNativeAuthenticator(NativeAuthenticator):
    """Creates the first admin (``admin``) with the password ``sac up`` prepared."""

    first_admin = Unicode("admin", help="Name of the administrator created at first start.").tag(
        config=True
    )

    first_admin_password = Unicode(
        help="Password of the first admin (default: $SAC_ADMIN_PASSWORD)."
    ).tag(config=True)

    @default("first_admin_password")
    def _default_first_admin_password(self) -> str:
        return os.environ.get("SAC_ADMIN_PASSWORD", "")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ensure_first_admin()

    def ensure_first_admin(self) -> None:
        password = self.first_admin_password
        if not password:
            return
        info = self.get_user(self.first_admin)
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
