"""An API source whose service cannot be reached fails alone, quickly, with a line that says so;
the other sources of the run are synced."""
from __future__ import annotations

import json
import socket

from kb_chatbot.core.settings import SourceConfig
from tests.live.conftest import doc_acls, settings, sync_many
from tests.live.fakeapi import write_service_account_key


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_services_fail_their_source_only(tmp_path, monkeypatch):
    url = f"http://127.0.0.1:{_closed_port()}"
    key = write_service_account_key(tmp_path / "sa.json", url + "/token")
    monkeypatch.setenv("KB_SECRET_S", "xoxb-unreachable-0000")
    monkeypatch.setenv("KB_SECRET_C", "pat-unreachable-0000")
    monkeypatch.setenv("KB_SECRET_G", str(key))
    wiki = tmp_path / "wiki"
    wiki.mkdir()
    (wiki / "a.md").write_text("# A\n\nThe quokka lives on Rottnest.\n")
    srcs = [SourceConfig(name="s", type="slack-api", url=url + "/api/", api_retries=0),
            SourceConfig(name="c", type="confluence", url=url, cloud=False, api_retries=0),
            SourceConfig(name="g", type="gdrive", url=url, delegated_user="a@acme.example", api_retries=0),
            SourceConfig(name="w", type="wiki", path=wiki)]
    s = settings(tmp_path)
    rep = sync_many(s, srcs)
    by = {r.name: r for r in rep.sources}
    for name, word in (("s", "Slack"), ("c", "Confluence"), ("g", "Google")):
        assert by[name].status == "failed" and f"cannot reach {word}" in by[name].error, by[name].error
    assert by["w"].status == "ok" and doc_acls(s, "w")
    assert rep.exit_code != 0
    assert json.dumps(rep.to_dict())  # the report is still written
