"""Logging in through the hub's login form, as a person does in a browser."""

from __future__ import annotations

import re

import httpx
import pytest
from conftest import ADMIN_PASSWORD

pytestmark = pytest.mark.stack


def _login(url: str, username: str, password: str) -> tuple[httpx.Client, httpx.Response]:
    client = httpx.Client(base_url=url, timeout=30)
    page = client.get("hub/login")
    assert page.status_code == 200
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
    form = {"username": username, "password": password}
    if xsrf:
        form["_xsrf"] = xsrf.group(1)
    return client, client.post("hub/login", data=form, headers={"Sec-Fetch-Mode": "navigate"})


def test_admin_logs_in_and_reaches_the_home_page(stack: dict) -> None:
    client, resp = _login(stack["url"], "admin", ADMIN_PASSWORD)
    assert resp.status_code == 302, resp.text[:500]
    home = client.get("hub/home")
    assert home.status_code == 200
    assert "admin" in home.text


def test_wrong_password_shows_the_form_again(stack: dict) -> None:
    _, resp = _login(stack["url"], "admin", "not-the-password")
    assert resp.status_code == 200
    assert "Invalid username or password" in resp.text
