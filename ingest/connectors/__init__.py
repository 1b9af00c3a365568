"""Connectors: one module per source type, chosen by the source's ``type`` in settings."""
from __future__ import annotations

from kb_chatbot.core.protocols import Connector
from kb_chatbot.core.settings import SourceConfig


def _isolated(src: SourceConfig):
    from kb_chatbot.ingest.parsers.isolated import IsolatedParser

    return IsolatedParser(timeout_s=src.parse_timeout_s, memory_mb=src.parse_memory_mb)


def make_connector(src: SourceConfig) -> Connector:
    """Build the connector for one configured source (imports only the one needed)."""
    if src.type == "wiki":
        from kb_chatbot.ingest.connectors.wiki import WikiConnector

        return WikiConnector(
            src.path, source=src.name, base_url=src.base_url,
            permissions_file=src.permissions_file, default_acl=src.default_acl, exclude=src.exclude,
            parser=_isolated(src),
        )
    if src.type == "slack":
        from kb_chatbot.ingest.connectors.slack import SlackConnector

        return SlackConnector(
            src.path, source=src.name, base_url=src.base_url, window_hours=src.slack_window_hours
        )
    if src.type == "drive":
        from kb_chatbot.ingest.connectors.drive import DriveConnector

        return DriveConnector(
            src.path, source=src.name, base_url=src.base_url,
            permissions_file=src.permissions_file, default_acl=src.default_acl, exclude=src.exclude,
            parser=_isolated(src),
        )
    if src.type == "slack-api":
        from kb_chatbot.ingest.connectors.slack_api import SlackApiConnector

        return SlackApiConnector(src)
    if src.type == "confluence":
        from kb_chatbot.ingest.connectors.confluence import ConfluenceConnector

        return ConfluenceConnector(src, parser=_isolated(src))
    if src.type == "gdrive":
        from kb_chatbot.ingest.connectors.gdrive import GoogleDriveConnector

        return GoogleDriveConnector(src, parser=_isolated(src))
    raise ValueError(f"unknown source type {src.type!r}")
