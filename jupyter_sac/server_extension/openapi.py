"""The sandbox extension's contract: ``openapi.yaml`` beside this module (OpenAPI
3.1), served at ``sac/api/openapi.json``; SacHandler.json_body checks request bodies
against it (``jupyter_sac.contract``)."""

from __future__ import annotations

from pathlib import Path

from ..contract import Contract

CONTRACT = Contract.load(Path(__file__).with_name("openapi.yaml"))
