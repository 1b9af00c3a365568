"""The chat page's needs (ChatServices) are met by the composition root's Services, member by
member, with the same kinds (property or method): the dependency the layout test cannot see."""
from __future__ import annotations

import inspect

from kb_chatbot.app.kb.services import Services
from kb_chatbot.app.web.services import ChatServices


def _members(cls) -> dict[str, str]:
    out = {}
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property):
            out[name] = "property"
        elif inspect.isfunction(value):
            out[name] = "method"
    return out


def test_services_provide_every_member_the_page_uses():
    need = _members(ChatServices)
    assert set(need) == {"has_index", "answer_service", "answer_log", "index_admin", "warm_up"}
    have = {name: kind for c in Services.__mro__ for name, kind in _members(c).items()}
    assert {name: have.get(name) for name in need} == need


def test_the_controller_is_typed_with_the_protocol():
    from kb_chatbot.app.web.app import ChatController, WarmUp

    assert inspect.signature(ChatController).parameters["services"].annotation in ("ChatServices", ChatServices)
    assert inspect.signature(WarmUp).parameters["services"].annotation in ("ChatServices", ChatServices)
